"""LayerNorm-GRU: the fused op (torch.ops.dreamer_fast.ln_gru) with its checks, fake kernel and autograd."""

from __future__ import annotations

import math

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.ln_gru import ln_gru_ref

_OP = "ln_gru"


def ln_gru(
    gates: torch.Tensor,
    deter: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-3,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """DreamerV2's GRU update after its Dense layer, with LayerNorm, in one pass over each row.

    ``y = LayerNorm(gates) * weight + bias`` over the ``3*D`` values of a row (biased variance, ``eps``), split
    into ``(reset, cand, update)``; ``reset = σ(reset)``, ``cand = tanh(reset * cand)``, ``update = σ(update - 1)``,
    ``deter' = update * cand + (1 - update) * deter``. The backward is one pass too; the weight and bias gradients
    are summed over the batch in a fixed order (deterministic).

    Mixed precision: ``gates`` may be float16/bfloat16 (a low-precision GEMM's output, e.g. under autocast) beside a
    float32 ``deter``, ``weight`` and ``bias``; the gates are then widened as they are read (the result is that of
    ``gates.float()``, bit for bit), the state and statistics are float32, and the gates' gradient comes back in the
    gates' dtype (rounded once, as ``gates.float()``'s backward would round it). No cast pass over ``[B, 3*D]`` either way.

    Args:
        gates: ``[B, 3*D]``, the GRU Dense layer's output on ``cat([x, deter])``.
        deter: ``[B, D]``, the previous deterministic state.
        weight, bias: ``[3*D]``, the LayerNorm's affine parameters.
        eps: LayerNorm epsilon (DreamerV2: 1e-3, the Keras default).
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``[B, D]``, the next deterministic state (``deter``'s dtype); differentiable in all four tensors.
        float32/float64 everywhere, float16/bfloat16 on CUDA (computed in float32), float16/bfloat16 gates with a
        float32 state everywhere.

        Non-finite input: ``deter'`` as the reference; a row whose LayerNorm-gradient means are not finite has NaN
        gate gradients (the reference's are NaN or ±inf there), and the weight and bias gradients sum them.
    """
    gates = _checks.tensor(_OP, "gates", gates)
    deter = _checks.tensor(_OP, "deter", deter)
    mixed = is_mixed(gates, deter)
    if not mixed:
        _checks.floating(_OP, "gates", gates)
    if gates.dim() != 2 or gates.shape[1] % 3 != 0:
        raise ValueError(f"{_OP}: `gates` must be [B, 3*D], got shape {list(gates.shape)}")
    B, D = gates.shape[0], gates.shape[1] // 3
    if mixed:
        _checks.same_device(_OP, "deter", deter, gates, "gates")
    else:
        _checks.like(_OP, "deter", deter, gates, "gates")
    for name, t in (("weight", weight), ("bias", bias)):
        _checks.tensor(_OP, name, t)
        _checks.like(_OP, name, t, deter, "deter")
    _checks.shape(_OP, "deter", deter, (B, D), "[B, D]")
    _checks.shape(_OP, "weight", weight, (3 * D,), "[3*D]")
    _checks.shape(_OP, "bias", bias, (3 * D,), "[3*D]")
    eps = _checks.number_in(_OP, "eps", eps, 0.0, math.inf)
    if _backend.use_fused(_OP, gates.device, backend):
        return torch.ops.dreamer_fast.ln_gru.default(
            gates.contiguous(), deter.contiguous(), weight.contiguous(), bias.contiguous(), eps
        )[0]
    return ln_gru_ref(gates, deter, weight, bias, eps)


def is_mixed(gates: torch.Tensor, deter: torch.Tensor) -> bool:
    """float16/bfloat16 gates beside a float32 state: the op's mixed-precision form (any device)."""
    return gates.dtype in (torch.float16, torch.bfloat16) and deter.dtype == torch.float32


def _stats_dtype(gates: torch.Tensor) -> torch.dtype:
    return torch.float32 if gates.dtype in (torch.float16, torch.bfloat16) else gates.dtype


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::ln_gru")
    def _(gates, deter, weight, bias, eps):
        stats = gates.new_empty(gates.shape[:1], dtype=_stats_dtype(gates))
        return torch.empty_like(deter), stats, torch.empty_like(stats)

    @torch.library.register_fake("dreamer_fast::ln_gru_backward")
    def _(grad, gates, deter, weight, bias, mean, rstd):
        return (torch.empty_like(gates), torch.empty_like(deter), torch.empty_like(weight), torch.empty_like(bias))

    def setup_context(ctx, inputs, output):
        gates, deter, weight, bias, _ = inputs
        _, mean, rstd = output
        ctx.save_for_backward(gates, deter, weight, bias, mean, rstd)
        ctx.mark_non_differentiable(mean, rstd)

    def backward(ctx, grad, _grad_mean, _grad_rstd):
        gates, deter, weight, bias, mean, rstd = ctx.saved_tensors
        d_gates, d_deter, d_weight, d_bias = torch.ops.dreamer_fast.ln_gru_backward(
            grad.contiguous(), gates, deter, weight, bias, mean, rstd
        )
        return d_gates, d_deter, d_weight, d_bias, None

    torch.library.register_autograd("dreamer_fast::ln_gru", backward, setup_context=setup_context)


if _backend.extension_loaded():
    _register()
