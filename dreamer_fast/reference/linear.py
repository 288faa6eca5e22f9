"""A Linear layer's product in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight^T + bias``: ``x [..., K]``, ``weight [N, K]``, ``bias [N]`` or None -> ``[..., N]``."""
    return F.linear(x, weight, bias)
