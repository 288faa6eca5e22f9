"""The linear op forward+backward (x, weight and bias gradients): fused vs eager reference (F.linear) vs
torch.compile(reference), float32.

Shapes from an Atari training update: a head's first layer over imagination's states (12,800 x 1624 -> 400), the
RSSM's GRU layer at one imagination step (800 x 1200 -> 1800), an MLP hidden layer (12,000 x 400 -> 400) and an
actor's last layer (12,000 x 400 -> 18, below oneDNN's sizes: ATen's GEMM on both sides). The ratio is the GEMM
library's: on CPUs that are not Intel the fused op runs oneDNN, torch's own GEMMs MKL (docs/PERFORMANCE.md).

Run:  pytest benchmarks/bench_linear.py --benchmark-only --benchmark-columns=min,median,mean,rounds
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df


def fused(x, w, b):
    return df.linear(x, w, b, backend="fused")


def reference(x, w, b):
    return F.linear(x, w, b)


IMPLS = {"fused": fused, "reference": reference, "compiled": None}
SHAPES = {"head-12800x1624-400": (12800, 1624, 400), "gru-800x1200-1800": (800, 1200, 1800),
          "mlp-12000x400-400": (12000, 400, 400), "last-12000x400-18": (12000, 400, 18)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_linear(benchmark, impl, shape):
    benchmark.group = f"linear fwd+bwd {shape} f32"
    M, K, N = SHAPES[shape]
    if benchmark.disabled:  # smoke run (CI): a few rows
        M = 70
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g).requires_grad_()
    w = (torch.randn(N, K, generator=g) / K**0.5).requires_grad_()
    b = torch.randn(N, generator=g).requires_grad_()
    run = fwd_bwd(IMPLS[impl] or compiled(reference), [x, w, b], [torch.randn(M, N, generator=g)])
    if not benchmark.disabled:
        warm(run)
    dx, dw, db = benchmark.pedantic(run, rounds=5, iterations=1)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    benchmark.extra_info["gflop"] = 3 * 2 * M * K * N / 1e9
