"""KL balance forward+backward of the loss: fused vs eager reference vs torch.compile(reference).

Shape: [50, 16, 32, 32] = [T, B, S, K], DreamerV2's replay batch of 16 sequences of 50 steps, 32 categoricals of 32.
Target: fused >= 3x eager reference.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df
from dreamer_fast.reference import kl_balance_ref


def fused(post, prior):
    return df.kl_balance(post, prior, 0.8, 0.0, True, 0.0, backend="fused")[0]


def reference(post, prior):
    return kl_balance_ref(post, prior, 0.8, 0.0, True, 0.0)[0]


IMPLS = {"fused": fused, "reference": reference, "compiled": None}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_kl_balance(benchmark, impl):
    benchmark.group = "kl_balance fwd+bwd (loss) 50x16x32x32"
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(50, 16, 32, 32, generator=g).requires_grad_() for _ in range(2)]
    fn = IMPLS[impl] or compiled(reference)
    run = fwd_bwd(fn, inputs)
    warm(run)
    grads = benchmark(run)
    assert len(grads) == 2
