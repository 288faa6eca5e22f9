"""A Linear layer's product (torch.ops.dreamer_fast.linear) with its checks, fake kernel and autograd.

Why an op for a GEMM: on the CPU, torch's float32 ``addmm``/``mm`` run MKL, which on CPUs whose vendor is not Intel
takes its AVX2 paths. Measured on an AMD EPYC Zen 5 (2 threads), that was ~210 GFLOP/s at every GEMM shape of an
Atari training update, against ~480 for oneDNN's matmul (docs/PERFORMANCE.md), and the Linear layers' GEMMs were
over half of the update's time. The op runs a float32 product from 64 x 256 x 256 in the library
:func:`dreamer_fast.cpu_gemm` names (oneDNN on CPUs that are not Intel, MKL on Intel), one of at most 6 rows (acting)
in the library's own GEMV, and anything else in ATen's ``addmm`` (oneDNN lost to it below those sizes). The
backward is the same op on transposed views: ``dx = linear(dy, W^T)``, ``dW = linear(dy^T, x^T)``; oneDNN reads them
as they lie.
"""

from __future__ import annotations

import math

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.linear import linear_ref

_OP = "linear"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """``x @ weight^T + bias``, as ``F.linear``.

    Args:
        x: ``[..., K]`` (at least 1 dim; any strides), float32, float64, bfloat16 or float16.
        weight: ``[N, K]`` with ``x``'s dtype and device; any strides (e.g. a transposed or reshaped view of a conv
            weight).
        bias: ``[N]`` or None.
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``[..., N]`` in ``x``'s dtype, differentiable in all three arguments. Under autocast this is ``F.linear``
        (autocast then picks the GEMM's dtype, as for any Linear layer).

        Non-finite input: NaN and ±inf propagate as in ``F.linear`` (BLAS products, no zero skipping).
    """
    x = _checks.tensor(_OP, "x", x)
    weight = _checks.tensor(_OP, "weight", weight)
    if torch.is_autocast_enabled(x.device.type):  # autocast's dtype rules, as for any Linear layer
        return call(x, weight, bias)
    if x.dtype not in _DTYPES:
        raise TypeError(f"{_OP}: `x` must be float32, float64, float16 or bfloat16, got {x.dtype}")
    _checks.like(_OP, "weight", weight, x, "x")
    _checks.ndim_at_least(_OP, "x", x, 1, "[..., K]")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{_OP}: `weight` must be [N, K] with K = x.shape[-1] = {x.shape[-1]}, got shape "
                         f"{list(weight.shape)}")
    if bias is not None:
        bias = _checks.tensor(_OP, "bias", bias)
        _checks.like(_OP, "bias", bias, x, "x")
        _checks.shape(_OP, "bias", bias, (weight.shape[0],), "[N]")
    if not _backend.use_fused(_OP, x.device, backend):
        return linear_ref(x, weight, bias)
    return call(x, weight, bias)


def call(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The fused op without the checks or the backend choice (for callers that have made both, as the RSSM);
    under autocast ``F.linear``, as :func:`linear`."""
    if torch.is_autocast_enabled(x.device.type):
        return linear_ref(x, weight, bias)
    op, bias = torch.ops.dreamer_fast.linear.default, None if bias is None else bias.contiguous()
    if x.dim() == 2:
        return op(x, weight, bias)
    y = op(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::linear")
    def _(x, weight, bias):
        return x.new_empty(x.shape[0], weight.shape[0])

    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.column_major = not weight.is_contiguous() and weight.t().is_contiguous()

    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        op = torch.ops.dreamer_fast.linear.default
        dx = op(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:
            # In the weight's own layout: a column-major weight (a transposed view of a parameter, as the decoder's
            # first layer) gets a column-major gradient, so the views back to the parameter need no copy.
            dw = op(x.t(), grad.t(), None).t() if ctx.column_major else op(grad.t(), x.t(), None)
        db = grad.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db

    torch.library.register_autograd("dreamer_fast::linear", backward, setup_context=setup_context)


if _backend.extension_loaded():
    _register()
