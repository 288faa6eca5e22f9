"""ELU (alpha 1): the fused op (torch.ops.dreamer_fast.elu) with its checks, fake kernels and autograd.

Why an op for an activation: ATen's CPU ELU goes through a slow expm1 (3-4x the time of an ``exp`` over the same
tensor, measured on an Intel Xeon with AMX) and its out-of-place backward recomputes an exponential from the input.
DreamerV2 applies ELU after every conv and Linear layer, ~200M values per Atari training update, so this is a
visible share of the update (docs/PERFORMANCE.md). The fused op computes the forward with a vectorised
polynomial/exp and the backward from its output alone (``grad·(out + 1)`` where ``out <= 0``), so the layer's input
need not be kept.
"""

from __future__ import annotations

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.elu import elu_ref

_OP = "elu"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def elu(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """ELU with alpha 1: ``x`` where ``x > 0``, ``e^x - 1`` elsewhere.

    Args:
        x: any shape (empty included); float32, float64, bfloat16 or float16, on the CPU or CUDA (the half types
            compute in float32 and round once). A dense input in another dim order (e.g. a channels-last conv
            output) keeps its layout; other non-contiguous inputs are copied to a contiguous layout first.
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        a new tensor like ``x`` (its strides too if dense, else contiguous), differentiable; its gradient is computed
        from the output.

        Non-finite input: NaN gives NaN, value and gradient (torch's gradient at NaN is NaN or the incoming one,
        by its vectorisation); ±inf as torch.
    """
    x = _checks.tensor(_OP, "x", x)
    if x.dtype not in _DTYPES:
        raise TypeError(f"{_OP}: `x` must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if _backend.use_fused(_OP, x.device, backend):
        return call(x)
    return elu_ref(x)


def call(x: torch.Tensor) -> torch.Tensor:
    """The fused op without the checks or the backend choice (for callers that have made both, as the RSSM)."""
    order = _dense_order(x)
    if order is None:
        return torch.ops.dreamer_fast.elu.default(x.contiguous())
    # Computed on the contiguous permutation and permuted back: a channels-last network stays channels-last
    # (a copy to NCHW and back would cost two passes over the activation).
    out = torch.ops.dreamer_fast.elu.default(x.permute(order))
    return out.permute(sorted(range(x.dim()), key=order.__getitem__))


def _dense_order(x: torch.Tensor) -> list[int] | None:
    """A dim order other than the identity in which ``x`` is contiguous (``[0, 2, 3, 1]`` for channels-last), or
    None when ``x`` is contiguous already or has none (overlapping or gapped strides)."""
    if x.is_contiguous():
        return None
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    return order if x.permute(order).is_contiguous() else None


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::elu")
    def _(x):
        return torch.empty_like(x)

    @torch.library.register_fake("dreamer_fast::elu_backward")
    def _(grad, out):
        return torch.empty_like(out)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.dreamer_fast.elu_backward.default(grad.contiguous(), out)

    torch.library.register_autograd("dreamer_fast::elu", backward, setup_context=setup_context)


if _backend.extension_loaded():
    _register()
