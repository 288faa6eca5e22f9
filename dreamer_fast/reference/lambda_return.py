"""λ-return in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch


def lambda_return_ref(
    reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, bootstrap: torch.Tensor, lam: float = 0.95
) -> torch.Tensor:
    """DreamerV2's TD(λ) target, computed backwards in time (shapes as :func:`dreamer_fast.lambda_return`).

    ``R[t] = r[t] + d[t] * ((1 - lam) * v[t+1] + lam * R[t+1])`` with ``v[T] = R[T] = bootstrap``.
    """
    next_value = torch.cat([value[1:], bootstrap[None]], dim=0)
    inputs = reward + discount * next_value * (1 - lam)
    returns = []
    last = bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lam * last
        returns.append(last)
    if not returns:
        return torch.empty_like(reward)
    return torch.stack(returns[::-1], dim=0)
