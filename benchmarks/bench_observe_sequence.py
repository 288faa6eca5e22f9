"""The observe_sequence op (the RSSM's posterior recurrence over a sequence) forward+backward: fused vs its reference
twin (dreamer_fast.reference.observe_sequence_ref, the same recurrence as a Python loop of reference ops).

Sizes: DreamerV2's Atari world-model batch, T = 50 steps of B = 16 sequences, deter 600, hidden 600, 32x32 latents,
float32, from given gradients of every output. No torch.compile column: compiling the 50-step unrolled reference
takes minutes (bench_rssm.py's test_observe times a compiled reference step called in the loop instead, and the whole
RSSM observe with its projections and the KL loss).
"""

from __future__ import annotations

import pytest
import torch
from conftest import fwd_bwd, warm

from dreamer_fast.ops.observe_sequence import observe_sequence
from dreamer_fast.reference import observe_sequence_ref

T, B, D, H, S, K = 50, 16, 600, 600, 32, 32


def inputs(T: int, B: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post)
    at Linear-like scales, every float tensor but keep requiring grad; and the sampler's noise [T, B, S]."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).requires_grad_()

    keep = torch.ones(T, B)
    keep[0] = 0
    tensors = [rand(T, B, H), rand(T, B, H), keep, rand(B, D, scale=0.0), rand(B, S, K, scale=0.0),
               rand(H, S * K, scale=(S * K) ** -0.5), rand(3 * D, H + D, scale=(H + D) ** -0.5), rand(3 * D, scale=0.1),
               (1 + rand(3 * D, scale=0.1)).detach().requires_grad_(), rand(3 * D, scale=0.1),
               rand(H, D, scale=D ** -0.5), rand(S * K, H, scale=H ** -0.5), rand(S * K, scale=0.1)]
    return tensors, torch.rand(T, B, S, generator=g)


def fused(*args, noise):
    return observe_sequence(*args, noise=noise, unimix=0.01, backend="fused")


def reference(*args, noise):
    return observe_sequence_ref(*args, noise=noise, unimix=0.01)


IMPLS = {"fused": fused, "reference": reference}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_observe_sequence(benchmark, impl):
    benchmark.group = f"observe_sequence fwd+bwd T={T} B={B} (f32)"
    steps = T if not benchmark.disabled else 3  # smoke run (CI): three steps
    args, noise = inputs(steps, B)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(steps, B, D, generator=g), torch.randn(steps, B, S, K, generator=g),
             torch.randn(steps, B, S, K, generator=g)]
    run = fwd_bwd(lambda *a: IMPLS[impl](*a, noise=noise), args, grads)
    if not benchmark.disabled:
        warm(run, times=2)
    out = benchmark.pedantic(run, rounds=5, iterations=1)
    assert len(out) == 12
