"""DreamerV2's LayerNorm-GRU update in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ln_gru_ref(
    gates: torch.Tensor, deter: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-3
) -> torch.Tensor:
    """The GRU update after its Dense layer (shapes as :func:`dreamer_fast.ln_gru`).

    ``y = LayerNorm(gates)`` over the ``3*D`` values, split into ``(reset, cand, update)``;
    ``reset = σ(reset)``, ``cand = tanh(reset * cand)``, ``update = σ(update - 1)``,
    ``deter' = update * cand + (1 - update) * deter``.
    """
    if gates.dtype != deter.dtype:  # mixed precision (float16/bfloat16 gates, float32 state): computed in float32
        gates = gates.to(deter.dtype)
    y = F.layer_norm(gates, gates.shape[-1:], weight, bias, eps)
    reset, cand, update = y.chunk(3, dim=-1)
    reset = torch.sigmoid(reset)
    cand = torch.tanh(reset * cand)
    update = torch.sigmoid(update - 1)
    return update * cand + (1 - update) * deter
