"""RSSM at DreamerV2's Atari sizes (deter 600, hidden 600, 32x32 latents, 18 actions, 1536 embed), float32.

- observe T=50 B=16 forward+backward (a world-model batch): fused vs reference vs a torch.compile'd reference step
  (the reference's obs_step compiled once and called in the Python loop; compiling the 50-step unrolled sequence
  takes minutes, so it is not timed: see `test_observe` below);
- imagine H=15 B=800 with a 4x400 ELU actor (straight-through one-hot actions) forward+backward (from given gradients
  of the imagined deter and stoch states): fused vs reference vs its GEMMs alone (~360 GFLOP a round);
- one policy step, B=1, under torch.no_grad (acting in the environment): fused vs reference, and the fused step
  without the prior head and with bfloat16 weight copies (how an agent acts).

"fused-mkl" / "fused-onednn" (observe): the fused op with its small CPU GEMMs forced to one library
(`df.set_cpu_gemm`); "fused" is the default rule (oneDNN unless the CPU is Intel's).

Run:  pytest benchmarks/bench_rssm.py --benchmark-only --benchmark-columns=mean,stddev,rounds
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dreamer_fast as df
from dreamer_fast import RSSM, RSSMState
from dreamer_fast.agent import nets
from dreamer_fast.rssm.reference import Reference

ACTIONS, EMBED = 18, 1536
COMPILE_BUDGET_S = 120.0


def rssm(backend: str) -> RSSM:
    torch.manual_seed(0)
    return RSSM(ACTIONS, EMBED, backend=backend)


def observe_batch(T=50, B=16):
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(T, B, EMBED, generator=g).requires_grad_()
    action = F.one_hot(torch.randint(ACTIONS, (T, B), generator=g), ACTIONS).float()
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    noise = torch.rand(T, B, 32, generator=g)
    return embed, action, is_first, noise


def world_model_loss(m: RSSM, post: RSSMState, prior: RSSMState) -> torch.Tensor:
    loss, _ = m.kl_loss(post, prior)
    return loss + m.get_feat(post).square().mean()  # stands in for the decoder/reward heads


_compiled_step: dict[int, object] = {}


def compiled_observe(m: RSSM, embed, action, is_first, noise):
    """The reference observe loop with its obs_step compiled (inductor); the compile happens in the warm-up."""
    reference = Reference(m._impl.layers, m.unimix, m.gru_norm.weight.device)
    step = _compiled_step.setdefault(id(m), torch.compile(reference.obs_step, dynamic=False))
    keep = (is_first == 0).float()
    state = m.initial(embed.shape[1])
    posts, priors = [], []
    for t in range(embed.shape[0]):
        state, prior = step(state, action[t], embed[t], keep[t], noise[t])
        posts.append(state)
        priors.append(prior)
    return RSSMState.stack(posts), RSSMState.stack(priors)


@pytest.fixture
def cpu_gemm_of(request):
    """For "fused-mkl" / "fused-onednn": that CPU GEMM library (df.set_cpu_gemm) for the test, then "auto" again. The
    plain "fused" case is the default rule (oneDNN unless the CPU is Intel's), so both libraries are timed on every
    CPU and the rule can be re-decided from one run."""
    library = {"fused-mkl": "mkl", "fused-onednn": "onednn"}.get(request.node.callspec.params["impl"])
    if library == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    previous = df.set_cpu_gemm(library) if library else None
    yield
    if previous is not None:
        df.set_cpu_gemm(previous)


@pytest.mark.parametrize("impl", ["fused", "fused-mkl", "fused-onednn", "reference", "compiled"])
def test_observe(benchmark, impl, cpu_gemm_of):
    benchmark.group = "rssm observe fwd+bwd T=50 B=16 (f32)"
    m = rssm("fused" if impl.startswith("fused") else "reference")
    embed, action, is_first, noise = observe_batch()
    params = [embed, *m.parameters()]

    def run():
        if impl == "compiled":
            post, prior = compiled_observe(m, embed, action, is_first, noise)
        else:
            post, prior = m.observe(embed, action, is_first, noise=noise)
        return torch.autograd.grad(world_model_loss(m, post, prior), params)

    start = time.perf_counter()
    run()
    if impl == "compiled" and time.perf_counter() - start > COMPILE_BUDGET_S:
        pytest.skip(f"torch.compile of the reference step took {time.perf_counter() - start:.0f} s (> "
                    f"{COMPILE_BUDGET_S:.0f} s budget)")
    run()
    grads = benchmark.pedantic(run, rounds=5, iterations=1)
    assert len(grads) == len(params)


class Actor(nn.Module):
    """DreamerV2's Atari actor: 4x400 ELU MLP -> one-hot categorical, straight-through sample. ``agent_layers``: its
    layers are the agent's own (``dreamer_fast.nets.Linear`` and ``nets.ELU`` on the fused backend: the fused linear
    and ELU ops) instead of a user's ``nn.Linear`` and ``nn.ELU``; same initialisation either way."""

    def __init__(self, feat: int, actions: int, agent_layers: bool = False):
        super().__init__()
        linear = partial(nets.Linear, backend="fused") if agent_layers else nn.Linear
        layers, width = [], feat
        for _ in range(4):
            layers += [linear(width, 400), nets.ELU("fused") if agent_layers else nn.ELU()]
            width = 400
        self.net = nn.Sequential(*layers, linear(width, actions))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        probs = self.net(feat).softmax(-1)
        index = torch.multinomial(probs.detach(), 1).squeeze(-1)
        return F.one_hot(index, probs.shape[-1]).to(probs.dtype) + probs - probs.detach()


def imagine_round(impl: str) -> Callable[[], tuple[torch.Tensor, ...]]:
    """One imagine round H=15 B=800 with the 4x400 actor, forward and backward, as a closure returning the parameter
    gradients. ``impl``: "<backend>[-variant]"; variant "bf16" runs under torch.autocast("cpu", bfloat16), "agent-actor"
    gives the actor the agent's own layers (see test_imagine)."""
    backend, _, variant = impl.partition("-")
    bf16 = variant == "bf16"
    m = rssm(backend)
    actor = Actor(m.feat_size, ACTIONS, agent_layers=variant == "agent-actor")
    g = torch.Generator().manual_seed(2)
    start = RSSMState(
        torch.randn(800, 600, generator=g).tanh(),
        F.one_hot(torch.randint(32, (800, 32), generator=g), 32).float(),
        torch.randn(800, 32, 32, generator=g),
    )
    used = [p for name, p in m.named_parameters() if not name.startswith(("obs_out", "post_logits"))]
    params = [*used, *actor.parameters()]
    # Backward from given gradients of the imagined states' features (what the actor and critic losses would send),
    # so that the round is imagine's forward and backward alone, as its GEMM floor below. (A stand-in loss such as
    # get_feat(states).square().mean() would add a cat of all states into an 83 MB feature tensor and its elementwise
    # passes: memory traffic that is not imagine's.)
    d_deter = torch.randn(16, 800, 600, generator=g) * 1e-3
    d_stoch = torch.randn(16, 800, 32, 32, generator=g) * 1e-3

    def run():
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            states = m.imagine(actor, start, 15)
        return torch.autograd.grad([states.deter, states.stoch], params, [d_deter, d_stoch])

    run()
    return run


@pytest.mark.parametrize("impl", ["fused", "fused-agent-actor", "reference", "fused-bf16"])
def test_imagine(benchmark, impl):
    """`fused-bf16`: the fused backend under torch.autocast("cpu", bfloat16), the mixed-precision case (its target
    is a ratio to the float32 eager reference). `fused-agent-actor`: the actor's layers are the agent's own,
    the library's fused linear and ELU ops (the other cases use `nn.Linear` and `nn.ELU`, a user's actor: on CPUs
    that are not Intel torch's float32 GEMMs run MKL's AVX2 paths, and ATen's float32 ELU is several times slower
    than ours on some CPUs: docs/PERFORMANCE.md, "CPU paths")."""
    benchmark.group = "rssm imagine fwd+bwd H=15 B=800 + 4x400 actor (f32)"
    grads = benchmark.pedantic(imagine_round(impl), rounds=3, iterations=1)  # ~360 GFLOP per round
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def imagine_gemm_shapes(N=800, horizon=15, feat=600 + 32 * 32, hidden=600, deter=600, flat=32 * 32, width=400):
    """(M, K, N) of every GEMM that one imagine round above must do (forward, input gradients, weight gradients),
    for `C[M, N] = A[M, K] @ B[K, N]`: the floor that test_imagine's fused time is compared with."""
    rssm_layers = [(ACTIONS, hidden), (flat, hidden), (hidden + deter, 3 * deter), (deter, hidden), (hidden, flat)]
    actor_layers = [(feat, width), (width, width), (width, width), (width, width), (width, ACTIONS)]
    step = []
    for i, (inp, out) in enumerate(rssm_layers + actor_layers):
        step.append((N, inp, out))  # forward
        if i != len(rssm_layers):  # the actor's first layer reads detached features: no input gradient
            step.append((N, out, inp))  # input gradient
        step.append((out, N, inp))  # weight gradient
    return step * horizon


def imagine_gemm_round() -> Callable[[], None]:
    """The GEMMs of one imagine round alone (float32, same shapes, contiguous operands) in the library the fused
    backend uses for each (dreamer_fast::linear's routing: oneDNN from 64 x 256 x 256 on CPUs that are not Intel,
    else ATen's mm), so that the fused round is compared with GEMMs as fast as its own."""
    g = torch.Generator().manual_seed(5)
    shapes = imagine_gemm_shapes()
    operands = {s: (torch.randn(s[0], s[1], generator=g), torch.randn(s[2], s[1], generator=g)) for s in set(shapes)}
    linear = torch.ops.dreamer_fast.linear.default

    def run():
        for s in shapes:
            linear(*operands[s], None)

    run()
    return run


def test_imagine_gemms(benchmark):
    """The floor: imagine's GEMMs alone (imagine_gemm_round)."""
    benchmark.group = "rssm imagine fwd+bwd H=15 B=800 + 4x400 actor (f32)"
    benchmark.pedantic(imagine_gemm_round(), rounds=3, iterations=1)
    benchmark.extra_info["gflop"] = sum(2 * m * k * n for m, k, n in imagine_gemm_shapes()) / 1e9


# The two imagine targets are ratios; timed in separate cases, minutes apart, they move with the machine's drift
# (the GEMM floor by ±20% between runs on a shared AMD EPYC Zen 4 VM). Here each round times
# both sides back to back, in alternating order, and the ratio is the median of the per-round ratios.
IMAGINE_RATIOS = {  # name: the two sides' round builders, numerator first
    "fused-f32/gemms": (lambda: imagine_round("fused-agent-actor"), imagine_gemm_round),  # target <= 1.15
    "reference-f32/fused-bf16": (lambda: imagine_round("reference"), lambda: imagine_round("fused-bf16")),  # >= 3
}


@pytest.mark.parametrize("ratio", list(IMAGINE_RATIOS))
def test_imagine_ratio(benchmark, ratio, interleaved_ratio):
    """Interleaved A/B of an imagine target ratio (printed at the end of the run and kept in extra_info). The
    benchmark's own time is that of one A+B pair. The fused f32 side is `fused-agent-actor`, the agent's actor."""
    benchmark.group = "rssm imagine interleaved ratios (time = one A+B pair)"
    first, second = IMAGINE_RATIOS[ratio]
    interleaved_ratio(benchmark, ratio, first(), second(), rounds=7)


@pytest.mark.parametrize("impl", ["fused", "fused-posterior", "fused-posterior-bf16w", "reference"])
def test_policy_step(benchmark, impl):
    """obs_step as the target states it (posterior and prior, float32), and as an agent acts: ``prior=False``, and
    with ``inference_dtype = torch.bfloat16`` (weights rounded to bfloat16, products in float32). No "-mkl" /
    "-onednn" cases: at B = 1 the fused step's layers are our GEMV kernel whatever set_cpu_gemm says."""
    benchmark.group = "rssm obs_step B=1 no_grad (f32)"
    m = rssm(impl.split("-")[0])
    prior = "posterior" not in impl
    if impl.endswith("bf16w"):
        m.inference_dtype = torch.bfloat16
    g = torch.Generator().manual_seed(4)
    embed = torch.randn(1, EMBED, generator=g)
    action = torch.zeros(1, ACTIONS)
    is_first = torch.zeros(1, dtype=torch.bool)
    state = m.initial(1)

    def run():
        with torch.no_grad():
            return m.obs_step(state, action, embed, is_first, prior=prior)

    for _ in range(10):
        run()
    post, prior_state = benchmark(run)
    assert post.deter.shape == (1, 600) and df.RSSMState is RSSMState and (prior_state is None) != prior
