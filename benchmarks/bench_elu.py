"""ELU forward+backward: fused vs eager reference (F.elu) vs torch.compile(reference).

Shapes: the Atari encoder's first activation over a batch (800 frames x 48 x 31 x 31 = 37M values), in float32 and
bfloat16 (what the layers produce under bf16 autocast), and an MLP head's hidden layer over imagination's starts
(12,000 x 400). ELU follows every conv/Linear layer of DreamerV2's networks: ~200M values per Atari update.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compiled, fwd_bwd, warm

import dreamer_fast as df


def fused(x):
    return df.elu(x, backend="fused")


def reference(x):
    return F.elu(x)


IMPLS = {"fused": fused, "reference": reference, "compiled": None}
SHAPES = {"conv-800x48x31x31": (800, 48, 31, 31), "mlp-12000x400": (12000, 400)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_elu(benchmark, impl, dtype, shape):
    benchmark.group = f"elu fwd+bwd {shape} {str(dtype).split('.')[1]}"
    g = torch.Generator().manual_seed(0)
    dims = SHAPES[shape]
    if benchmark.disabled:  # smoke run (CI): a small slice of the shape
        dims = (2, *dims[1:])
    x = (torch.randn(dims, generator=g) * 2).to(dtype).requires_grad_()
    grad = torch.randn(dims, generator=g).to(dtype)
    fn = IMPLS[impl] or compiled(reference)
    run = fwd_bwd(fn, [x], [grad])
    if not benchmark.disabled:
        warm(run)
    (dx,) = benchmark.pedantic(run, rounds=5, iterations=1)
    assert dx.shape == x.shape
