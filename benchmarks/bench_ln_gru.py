"""LayerNorm-GRU forward+backward: fused vs eager reference vs torch.compile(reference).

Shapes (DreamerV2's Atari RSSM, deter 600, so gates [B, 1800]): one observe step of a world-model batch (B = 16, the
op the observe loop calls 50 times per update) and one imagination step from every replayed state (B = 800, 15
steps per update), in float32; and the imagination step with bfloat16 gates under bf16 autocast (float32 state).
"""

from __future__ import annotations

import pytest
import torch
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df
from dreamer_fast.reference import ln_gru_ref

DETER = 600


def fused(gates, deter, weight, bias):
    return df.ln_gru(gates, deter, weight, bias, 1e-3, backend="fused")


def reference(gates, deter, weight, bias):
    return ln_gru_ref(gates, deter, weight, bias, 1e-3)


IMPLS = {"fused": fused, "reference": reference, "compiled": None}
CASES = {"observe-B16": (16, torch.float32), "imagine-B800": (800, torch.float32),
         "imagine-B800-bf16gates": (800, torch.bfloat16)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_ln_gru(benchmark, impl, case):
    B, gate_dtype = CASES[case]
    benchmark.group = f"ln_gru fwd+bwd {case}"
    g = torch.Generator().manual_seed(0)
    gates = torch.randn(B, 3 * DETER, generator=g).to(gate_dtype).requires_grad_()
    deter = torch.randn(B, DETER, generator=g).requires_grad_()
    weight = (1 + 0.1 * torch.randn(3 * DETER, generator=g)).requires_grad_()
    bias = (0.1 * torch.randn(3 * DETER, generator=g)).requires_grad_()
    fn = IMPLS[impl] or compiled(reference)
    run = fwd_bwd(fn, [gates, deter, weight, bias])
    if not benchmark.disabled:
        warm(run)
    grads = benchmark(run)
    assert grads[0].dtype == gate_dtype and grads[1].shape == deter.shape
