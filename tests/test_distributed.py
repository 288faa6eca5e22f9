"""Training on 2 ranks (gloo, CPU): DDP's averaged gradients through the fused ops and SequenceLinear, bit-identical
parameters across ranks, equivalence with one process on the concatenated batch, and `torchrun` runs of the
command: a debug run that writes one logdir and resumes, and a killed rank that stops the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_agent_models import random_batch
from torch import nn

from dreamer_fast.agent.agent import Agent
from dreamer_fast.training.checkpoint import load_checkpoint
from dreamer_fast.config import load_config
from dreamer_fast.training.distributed import Dist, wrap_agent

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
WORLD = 2


def _init(rank: int, store: str) -> Dist:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    return Dist(rank, WORLD)


# ---- the agent: bit-identical parameters after K updates -----------------------------------------------------------


def _agent_setup(case: str):
    from types import SimpleNamespace

    if case == "image-reinforce":
        obs_space, act_space, grad = {"image": ((1, 64, 64), np.uint8)}, SimpleNamespace(discrete=True, dim=3), "reinforce"
    else:
        obs_space, act_space, grad = {"vector": ((3,), np.float32)}, SimpleNamespace(discrete=False, dim=1), "dynamics"
    config = load_config("debug", dict(batch_size=2, batch_length=4, horizon=3, actor_grad=grad,
                                       slow_target_update=2))
    return obs_space, act_space, config


def _batch(obs_space, act_space, seed: int, T: int = 4, B: int = 2):
    return random_batch(obs_space, act_space, T=T, B=B, seed=seed)


def _agent_worker(rank: int, store: str, out: str, case: str, updates: int) -> None:
    d = _init(rank, store)
    obs_space, act_space, config = _agent_setup(case)
    torch.manual_seed(1234 + rank)  # different initial weights: DDP starts every rank from rank 0's
    agent = Agent(obs_space, act_space, config)
    initial = {k: v.detach().clone() for k, v in agent.state_dict().items()}
    wrap_agent(agent, d)
    assert agent.ddp is not None
    for i in range(updates):
        metrics = agent.train_step(_batch(obs_space, act_space, seed=100 * i + rank))
        assert metrics["train/nonfinite"] == 0.0
    torch.save({"initial": initial, "final": agent.state_dict(), "updates": agent.updates,
                "adam": agent.model_opt.state_dict()["state"]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("case", ["image-reinforce", "vector-dynamics"])
def test_two_ranks_keep_bit_identical_parameters(tmp_path, case):
    updates = 3  # slow_target_update=2: the slow critic is copied once
    mp.spawn(_agent_worker, args=(str(tmp_path / "store"), str(tmp_path), case, updates), nprocs=WORLD)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert r0["updates"] == r1["updates"] == updates
    assert any(not torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])  # ranks began apart
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
        if key.startswith(("wm.", "ac.actor.", "ac.critic.")) and value.is_floating_point():
            assert not torch.equal(value, r0["initial"][key]), f"{key} did not train"
    assert any(k.startswith("ac.slow_critic.") for k in r0["final"])  # compared above, like every parameter
    for index, state in r0["adam"].items():
        assert torch.equal(state["exp_avg_sq"], r1["adam"][index]["exp_avg_sq"])


# ---- our ops under DDP vs one process on the concatenated batch ----------------------------------------------------


class _OpsNet(nn.Module):
    """The library's Linear (fused GEMM) + ELU, and a recurrence whose weight (a column slice of a parameter) gets
    its gradient from SequenceLinear's custom autograd; the loss is a mean over the batch."""

    def __init__(self) -> None:
        super().__init__()
        from dreamer_fast.agent.nets import MLP

        self.mlp = MLP(5, 6, layers=2, units=16)
        self.cell = nn.Parameter(torch.randn(6, 12) * 0.3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from dreamer_fast.rssm.sequence_linear import SequenceLinear

        lin = SequenceLinear(self.cell[:, :6])
        h = self.mlp(x[0])
        for t in range(1, x.shape[0]):
            h = torch.tanh(lin(self.mlp(x[t]), h))
        return (h - y).square().mean()


def _equivalence_data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(4, 2 * 6, 5, generator=g), torch.randn(2 * 6, 6, generator=g)


def _train_ops(net: nn.Module, batches, steps: int) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            net(x, y).backward()
            opt.step()


def _ops_worker(rank: int, store: str, out: str, steps: int) -> None:
    from torch.nn.parallel import DistributedDataParallel

    _init(rank, store)
    torch.manual_seed(99 + rank)
    ddp = DistributedDataParallel(_OpsNet())
    x, y = _equivalence_data()
    half = x.shape[1] // WORLD
    _train_ops(ddp, [(x[:, rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])], steps)
    torch.save(ddp.module.state_dict(), f"{out}/ops{rank}.pt")
    dist.destroy_process_group()


def test_ops_under_ddp_equal_one_process_on_the_concatenated_batch(tmp_path):
    """A mean-over-the-batch loss: the average of the two half-batch gradients is the full batch's gradient, so
    2 ranks and 1 process on both halves agree to float rounding (DDP sums in another order)."""
    steps = 5
    mp.spawn(_ops_worker, args=(str(tmp_path / "store"), str(tmp_path), steps), nprocs=WORLD)
    r0, r1 = (torch.load(tmp_path / f"ops{r}.pt") for r in range(WORLD))
    torch.manual_seed(99)  # rank 0's initial weights, which DDP gave every rank
    single = _OpsNet()
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    _train_ops(single, [_equivalence_data()], steps)
    for key, value in single.state_dict().items():
        assert torch.equal(r0[key], r1[key]), key
        assert not torch.equal(value, initial[key]), key
        torch.testing.assert_close(r0[key], value, rtol=1e-5, atol=1e-6, msg=key)


# ---- the command under torchrun ------------------------------------------------------------------------------------


def _torchrun(logdir: Path, *args: str, timeout_s: str = "60") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DREAMER_FAST_DIST_TIMEOUT": timeout_s}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(WORLD), "-m", "dreamer_fast", "train",
           "--logdir", str(logdir), "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def test_torchrun_debug_run_writes_one_logdir_and_resumes(tmp_path):
    logdir = tmp_path / "run"
    rc, out = _finish(_torchrun(logdir, "--config", "debug", "--steps", "400"), 240)
    assert rc == 0, out[-3000:]
    assert out.count("dreamer-fast: finished at step 400") == 1  # rank 0 reports
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["step"] == 400 and ckpt["world_size"] == WORLD
    # prefill 100, then every rank trains every 16 of its own steps = every 32 steps of the two: ~300 / 32 updates
    assert 9 <= ckpt["updates"] <= 11
    shards = [logdir / "replay", logdir / "replay" / "rank1"]
    for rank, shard in enumerate(shards):
        assert len(list(shard.glob("*.npz"))) == ckpt["ranks"][rank]["replay"]["next_seq"]
    assert ckpt["ranks"][0]["rng"] != ckpt["ranks"][1]["rng"]
    assert sorted(p.name for p in logdir.iterdir()) == ["checkpoint.pt", "config.yaml", "curve.png", "losses.png",
                                                        "metrics.csv", "replay", "tb"]
    rows = (logdir / "metrics.csv").read_text().splitlines()
    assert sum(",episode/return," in r for r in rows) == ckpt["episodes"]  # every rank's episodes
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(steps)  # every rank's episodes and the evaluations in step order
    assert "400,replay/steps," + str(float(sum(r["replay"]["steps"] for r in ckpt["ranks"]))) in rows

    rc, out = _finish(_torchrun(logdir, "--resume", "--steps", "500"), 240)
    assert rc == 0, out[-3000:]
    assert "resumed" in out and "finished at step 500" in out
    resumed = load_checkpoint(logdir / "checkpoint.pt")
    assert resumed["updates"] > ckpt["updates"]
    for rank in range(WORLD):
        assert resumed["ranks"][rank]["replay"]["steps"] > ckpt["ranks"][rank]["replay"]["steps"]

    rc, out = _finish(subprocess.Popen([sys.executable, "-m", "dreamer_fast", "train", "--resume", "--logdir",
                                        str(logdir), "--steps", "600", "--no-progress"], cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), 120)
    assert rc == 2 and "trained on 2 rank(s), this job has 1" in out


def test_a_killed_rank_stops_the_job_and_resume_continues(tmp_path):
    logdir = tmp_path / "run"
    proc = _torchrun(logdir, "--config", "debug", "--steps", "100000", "--checkpoint_every", "200",
                     timeout_s="20")
    deadline = time.monotonic() + 180
    while not (logdir / "checkpoint.pt").exists():  # the first checkpoint: something to resume
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "dreamer_fast"], capture_output=True, text=True)
    pids = [int(p) for p in workers.stdout.split()]
    assert len(pids) == WORLD, workers
    killed = time.monotonic()
    os.kill(max(pids), signal.SIGKILL)  # the rank started last
    rc, out = _finish(proc, 90)
    assert rc != 0
    assert time.monotonic() - killed < 60
    step = load_checkpoint(logdir / "checkpoint.pt")["step"]
    rc, out = _finish(_torchrun(logdir, "--resume", "--steps", str(step + 100)), 240)
    assert rc == 0, out[-3000:]
    assert f"resumed {logdir} at step {step:,}" in out
