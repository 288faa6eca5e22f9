"""Straight-through categorical sampling forward+backward: fused vs eager reference vs torch.compile(reference) vs the
common idiom (torch.distributions.OneHotCategorical + straight-through).

Shape: logits (800, 32, 32) = imagination starts x 32 variables x 32 classes (DreamerV2's stochastic state);
loss = (sample * w).sum() with a fixed random w. Target (docs/PERFORMANCE.md): fused >= 20x faster than the idiom and
<= 1 ms. The reference draws its uniforms from the same Philox stream as the fused op (in int64 tensor arithmetic),
which is part of its cost.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df
from dreamer_fast.reference import straight_through_categorical_ref

UNIMIX = 0.01


def fused(logits, w):
    sample, _ = df.straight_through_categorical(logits, UNIMIX, backend="fused")
    return (sample * w).sum()


def reference(logits, w):
    sample, _ = straight_through_categorical_ref(logits, UNIMIX)
    return (sample * w).sum()


def idiom(logits, w):
    dist = torch.distributions.OneHotCategorical(logits=logits)
    sample = dist.sample()
    sample = sample + dist.probs - dist.probs.detach()
    return (sample * w).sum()


IMPLS = {"fused": fused, "reference": reference, "compiled": None, "idiom": idiom}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_straight_through_categorical(benchmark, impl):
    benchmark.group = "straight_through_categorical fwd+bwd 800x32x32"
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(800, 32, 32, generator=g).requires_grad_()
    w = torch.randn(800, 32, 32, generator=g)
    fn = IMPLS[impl] or compiled(reference)
    run = fwd_bwd(fn, [logits, w])
    warm(run)
    (grad,) = benchmark(run)
    assert grad.shape == logits.shape
