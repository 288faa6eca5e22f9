"""The capture-ready update (Agent.update): no host reads, the same parameters as the plain update bit for bit, the
non-finite skip on the device, the update's Philox stream (reproducible, checkpointed), and cuda_graphs."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CUDA
from test_agent_models import CASES, make_agent, random_batch
from torch.overrides import TorchFunctionMode

import dreamer_fast as df
from dreamer_fast.agent.agent import Agent
from dreamer_fast.agent.masked_step import masked_step
from dreamer_fast.agent.update_graph import resolve_cuda_graphs
from dreamer_fast.config import load_config

PACKAGE = str(Path(df.__file__).resolve().parent)
T = torch.Tensor
# Reads of a tensor's value into Python, and ops whose output shape depends on the values.
HOST_READS = {T.item, T.tolist, T.cpu, T.numpy, T.__bool__, T.__float__, T.__int__, T.__index__, T.__format__,
              T.__array__}
DATA_DEPENDENT = {torch.nonzero, T.nonzero, torch.argwhere, T.argwhere, torch.masked_select, T.masked_select,
                  torch.unique, T.unique, torch.unique_consecutive, torch.bincount, T.bincount}


OPTIM = str(Path(torch.optim.__file__).resolve().parent)


class HostReads(TorchFunctionMode):
    """Records every host read and data-dependent shape that code of the dreamer_fast package asks for, directly or
    through torch, as ``name file:line`` of the package's innermost frame (boolean-mask indexing counts as a
    data-dependent shape). Not counted: torch.optim's reads of a CPU optimiser's step counter (a CPU tensor on the
    CPU; on CUDA the optimisers are capturable and keep it on the device, and the sync debug mode checks that)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flagged = func in HOST_READS or func in DATA_DEPENDENT
        if func is T.__getitem__ and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            flagged = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if flagged and sys._getframe(1).f_code.co_filename.startswith(OPTIM):
            flagged = not all(a.device.type == "cpu" for a in args if isinstance(a, torch.Tensor))
        if flagged:
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
                frame = frame.f_back
            if frame is not None:
                self.found.append(f"{func.__name__} {frame.f_code.co_filename}:{frame.f_lineno}")
        return func(*args, **kwargs)


def debug_agent(device, **overrides):
    config = load_config("debug", {"device": str(device), **overrides})
    obs_space, act_space = {"vector": ((4,), np.float32)}, SimpleNamespace(discrete=True, dim=2)
    torch.manual_seed(0)
    agent = Agent(obs_space, act_space, config)
    return agent, agent.wm.preprocess(random_batch(obs_space, act_space, config.batch_length, config.batch_size))


def test_the_detector_sees_each_kind_of_read():
    """Each read in the package's code is reported; a read outside the package is not."""
    from dreamer_fast.agent import masked_step as module  # any package file: the detector looks at the file name

    x = torch.tensor([0.5, 2.0])
    code = compile("bool(x[0]); x.tolist(); float(x[1]); x[x > 1]; x.nonzero(); x.cpu()", module.__file__, "exec")
    with HostReads() as reads:
        exec(code, {"x": x})
        x.item() if x.numel() == 1 else x.sum().item()  # this test file is outside the package
    assert [r.split()[0] for r in reads.found] == ["__bool__", "tolist", "__float__", "__getitem__", "nonzero", "cpu"]


@pytest.mark.parametrize("terminal", [True, False])
def test_update_reads_nothing_on_the_host(device, terminal):
    """On the `debug` preset the update (world model, actor and critic steps with their non-finite skips) reads no
    tensor on the host and has no data-dependent shape; on CUDA, torch's sync debug mode also finds no sync."""
    agent, data = debug_agent(device)
    if not terminal:
        data["is_terminal"] = torch.zeros_like(data["is_terminal"])
    agent.train_step(data)  # first-call set-up (optimiser state) is not an update's cost
    with HostReads() as reads:
        agent.train_step(data)
    assert reads.found == []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            agent.update(data)
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ---- the same parameters as the plain update -------------------------------------------------------------------------


def plain_step(opt, loss, params, clip):
    """An optimiser step as written without regard to capture: backward, clip, and a host-side non-finite skip."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if torch.isfinite(norm) and torch.isfinite(loss):
        opt.step()


def plain_update(agent, batch):
    """DreamerV2's update from the agent's losses, in the plainest form: the specification of Agent.update."""
    data = agent.wm.preprocess(batch)
    agent.train()
    model_loss, post, _ = agent.wm.loss(data)
    plain_step(agent.model_opt, model_loss, list(agent.wm.parameters()), agent.config.grad_clip)
    start = post.detach().flatten()
    actor_loss, critic_loss, _ = agent.ac.loss(agent.wm, start, data["is_terminal"].reshape(-1))
    plain_step(agent.actor_opt, actor_loss, list(agent.ac.actor.parameters()), agent.config.grad_clip)
    plain_step(agent.critic_opt, critic_loss, list(agent.ac.critic.parameters()), agent.config.grad_clip)
    agent.ac.update_slow_target()


def trained(case, step, updates=5, **overrides):
    agent, obs_space, act_space = make_agent(case, seed=0, slow_target_update=2, **overrides)
    for i in range(updates):
        torch.manual_seed(100 + i)
        step(agent, random_batch(obs_space, act_space, seed=i))
    return agent


def assert_bit_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for oa, ob in ((a.model_opt, b.model_opt), (a.actor_opt, b.actor_opt), (a.critic_opt, b.critic_opt)):
        for pa, pb in zip(oa.param_groups[0]["params"], ob.param_groups[0]["params"]):
            for k, v in oa.state[pa].items():
                assert torch.equal(v, ob.state[pb][k]), k


@pytest.mark.parametrize("case", list(CASES))
def test_update_equals_the_plain_update_bit_for_bit(case):
    """Five updates from the same seed: Agent.train_step (device-side skip, the update as one capture-ready
    function) leaves exactly the parameters and optimiser state of the plain update, on the CPU."""
    assert_bit_equal(trained(case, lambda a, b: a.train_step(b)), trained(case, plain_update))


# ---- the non-finite skip on the device -------------------------------------------------------------------------------


def test_a_nonfinite_step_leaves_parameters_and_state_as_they_were():
    """A NaN loss skips the step without a host read: parameters and AdamW state unchanged bit for bit, the skip
    counted; a skipped first step leaves a state from which the next step equals a fresh first step."""
    agent, obs_space, act_space = make_agent("vector-continuous")
    fresh = make_agent("vector-continuous")[0]
    critic = list(agent.ac.critic.parameters())
    feat = torch.randn(5, agent.wm.feat_size)
    nan_loss = agent.ac.critic(feat).sum() * float("nan")
    before = [p.detach().clone() for p in critic]
    norm = agent._step(agent.critic_opt, nan_loss, critic)
    assert torch.isnan(norm) and agent.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(critic, before))
    for a in (agent, fresh):  # the next, finite step: as if the skipped one had never been tried
        a._step(a.critic_opt, a.ac.critic(feat).square().mean(), list(a.ac.critic.parameters()))
    assert agent.skipped_steps == 1 and fresh.skipped_steps == 0
    assert all(torch.equal(p, q) for p, q in zip(critic, fresh.ac.critic.parameters()))
    state, fresh_state = agent.critic_opt.state[critic[0]], fresh.critic_opt.state[next(fresh.ac.critic.parameters())]
    assert all(torch.equal(state[k], fresh_state[k]) for k in fresh_state)
    # A skip after steps restores the moments and the step count too.
    saved = {k: v.clone() for k, v in state.items()}
    agent._step(agent.critic_opt, agent.ac.critic(feat).sum() * float("inf"), critic)
    assert agent.skipped_steps == 2 and all(torch.equal(state[k], saved[k]) for k in saved)


def test_masked_step_takes_a_finite_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.tensor([1.0, -1.0, 0.5])
    masked_step(opt, torch.tensor(True))
    assert opt.state[p]["step"] == 1 and not torch.equal(p.detach(), torch.ones(3))


def test_train_step_reports_a_skipped_update():
    agent, obs_space, act_space = make_agent("vector-continuous")
    with torch.no_grad():
        next(agent.wm.reward.parameters()).fill_(float("nan"))
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.train_step(random_batch(obs_space, act_space))
    assert metrics["train/nonfinite"].item() == 1.0 and agent.skipped_steps == 3  # world model, actor, critic
    after = agent.state_dict()
    assert {k for k, v in after.items() if v.isnan().any()} == {k for k, v in before.items() if v.isnan().any()}
    assert all(torch.equal(v, before[k]) for k, v in after.items() if not v.isnan().any())


# ---- the update's Philox stream --------------------------------------------------------------------------------------


def test_update_from_a_philox_stream_is_reproducible_and_resumes_exactly():
    """An update that samples from a PhiloxStream advances it, and a checkpoint carries it: the resumed agent makes
    exactly the next update of the original (and one with a fresh stream does not)."""
    agent, obs_space, act_space = make_agent("image-discrete")
    agent.set_philox(df.PhiloxStream(11))
    batch = random_batch(obs_space, act_space)
    agent.train_step(batch)
    offset = agent.philox.state_dict()["offset"]
    assert offset > 0  # the RSSM's latents, the imagined latents and the actor's actions drew from it
    assert agent.wm.rssm.stream is None and agent.ac.actor.stream is None  # acting keeps its own randomness
    buffer = io.BytesIO()
    torch.save(agent.checkpoint_state(), buffer)
    resumed, other = make_agent("image-discrete", seed=1)[0], make_agent("image-discrete", seed=1)[0]
    for a in (resumed, other):
        buffer.seek(0)
        a.load_checkpoint_state(torch.load(buffer, weights_only=False))
    other.philox.load_state_dict({"key": 12, "offset": offset})
    assert resumed.philox.state_dict() == {"key": 11, "offset": offset}
    for a in (agent, resumed, other):
        a.train_step(batch)
    assert agent.philox.state_dict()["offset"] == 2 * offset
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in agent.state_dict().items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in agent.state_dict().items())


def test_set_philox_checks_the_device():
    agent = make_agent("vector-continuous")[0]
    with pytest.raises(ValueError, match="`stream` must be on the agent's device cpu, got meta"):
        agent.set_philox(df.PhiloxStream(0, "meta"))


def test_rssm_backends_draw_the_same_samples_from_a_stream():
    """Fused and reference RSSM from equal streams: the same posterior and imagined samples, and the same offsets."""
    torch.manual_seed(0)
    rssm = df.RSSM(action_dim=3, embed_dim=8, deter=16, hidden=16, stoch=4, classes=5)
    embed, action = torch.randn(6, 2, 8), torch.randn(6, 2, 3)
    is_first = torch.zeros(6, 2, dtype=torch.bool)
    outs = []
    for backend in ("fused", "reference"):
        rssm.backend, rssm.stream = backend, df.PhiloxStream(21)
        post, _ = rssm.observe(embed, action, is_first)
        imagined = rssm.imagine(lambda f: torch.tanh(f[:, :3]), post.flatten(), horizon=3)
        outs.append((post.stoch, imagined.stoch, rssm.stream.state_dict()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2] == {"key": 21, "offset": (6 * 2 + 3 * 12) * 4}


# ---- cuda_graphs -----------------------------------------------------------------------------------------------------


def test_cuda_graphs_option():
    cpu = torch.device("cpu")
    assert not resolve_cuda_graphs("auto", cpu) and not resolve_cuda_graphs("off", cpu)
    assert not resolve_cuda_graphs("auto", torch.device("cuda"))  # off until a GPU run has verified capture
    with pytest.raises(ValueError, match="config `cuda_graphs` = 'on' needs a CUDA device, got device 'cpu'"):
        resolve_cuda_graphs("on", cpu)
    with pytest.raises(ValueError, match="config `cuda_graphs` must be one of"):
        resolve_cuda_graphs("yes", cpu)
    with pytest.raises(ValueError, match="the distributed update is not captured"):
        resolve_cuda_graphs("on", torch.device("cuda"), distributed=True)
    with pytest.raises(ValueError, match="config `cuda_graphs` = 'on' needs a CUDA device"):
        debug_agent("cpu", cuda_graphs="on")


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_captured_update_equals_the_eager_update_on_cuda():
    """Five updates: captured and replayed (after two eager warm-up updates) against eager, same seed."""
    agents = []
    for graphs in ("off", "on"):
        agent, data = debug_agent("cuda", cuda_graphs=graphs)
        for _ in range(5):
            metrics = agent.train_step(data)
        agents.append((agent, metrics))
    (eager, m_eager), (graphed, m_graphed) = agents
    assert graphed._graph.graph is not None
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(graphed.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert m_eager.keys() == m_graphed.keys()
