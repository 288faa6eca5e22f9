"""λ-return forward+backward: fused vs eager reference vs torch.compile(reference).

Shapes: 15×800 (imagination horizon × starts, DreamerV2's actor-critic) and 50×16 (a replay batch).
Targets (docs/PERFORMANCE.md): fused at least as fast as torch.compile(reference) and >= 5x eager.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df
from dreamer_fast.reference import lambda_return_ref


def fused(r, v, d, b):
    return df.lambda_return(r, v, d, b, 0.95, backend="fused")


def reference(r, v, d, b):
    return lambda_return_ref(r, v, d, b, 0.95)


IMPLS = {"fused": fused, "reference": reference, "compiled": None}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("T,B", [(15, 800), (50, 16)], ids=["15x800", "50x16"])
def test_lambda_return(benchmark, impl, T, B):
    benchmark.group = f"lambda_return fwd+bwd {T}x{B}"
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(T, B, generator=g).requires_grad_() for _ in range(3)]
    inputs[2].data.uniform_(0.9, 1.0, generator=g)
    inputs.append(torch.randn(B, generator=g).requires_grad_())
    fn = IMPLS[impl] or compiled(reference)
    run = fwd_bwd(fn, inputs, [torch.randn(T, B, generator=g)])
    warm(run)
    grads = benchmark(run)
    assert len(grads) == 4
