"""λ-return: the fused op (torch.ops.dreamer_fast.lambda_return) with its checks, fake kernel and autograd."""

from __future__ import annotations

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.lambda_return import lambda_return_ref

_OP = "lambda_return"


def lambda_return(
    reward: torch.Tensor,
    value: torch.Tensor,
    discount: torch.Tensor,
    bootstrap: torch.Tensor,
    lam: float = 0.95,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """DreamerV2's TD(λ) return, computed backwards in time in one fused pass.

    ``R[t] = reward[t] + discount[t] * ((1 - lam) * value[t+1] + lam * R[t+1])``, with
    ``value[T] := R[T] := bootstrap``, so ``R[T-1] = reward[T-1] + discount[T-1] * bootstrap``.

    Args:
        reward, value, discount: ``[T, B]``, time-major; ``discount`` is the per-step discount (γ·continue).
        bootstrap: ``[B]``, the value after the last step.
        lam: λ in [0, 1].
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``[T, B]`` returns, differentiable in reward, value, discount and bootstrap (fused backward: one pass).

        Non-finite input: the reference's products (``(r + d v (1 - lam)) + (d lam) R``), so NaN and ±inf
        come out where the reference's do, gradients included (e.g. ``d = inf`` with ``v = 0`` gives NaN).
    """
    reward = _checks.tensor(_OP, "reward", reward)
    _checks.floating(_OP, "reward", reward)
    if reward.dim() != 2:
        raise ValueError(f"{_OP}: `reward` must be [T, B], got shape {list(reward.shape)}")
    T, B = reward.shape
    for name, t in (("value", value), ("discount", discount), ("bootstrap", bootstrap)):
        _checks.tensor(_OP, name, t)
        _checks.like(_OP, name, t, reward, "reward")
    _checks.shape(_OP, "value", value, (T, B), "[T, B]")
    _checks.shape(_OP, "discount", discount, (T, B), "[T, B]")
    _checks.shape(_OP, "bootstrap", bootstrap, (B,), "[B]")
    lam = _checks.number_in(_OP, "lam", lam, 0.0, 1.0)
    if _backend.use_fused(_OP, reward.device, backend):
        return torch.ops.dreamer_fast.lambda_return.default(
            reward.contiguous(), value.contiguous(), discount.contiguous(), bootstrap.contiguous(), lam
        )
    return lambda_return_ref(reward, value, discount, bootstrap, lam)


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::lambda_return")
    def _(reward, value, discount, bootstrap, lam):
        return torch.empty_like(reward)

    @torch.library.register_fake("dreamer_fast::lambda_return_backward")
    def _(grad, ret, value, discount, bootstrap, lam):
        return (torch.empty_like(grad), torch.empty_like(grad), torch.empty_like(grad), torch.empty_like(bootstrap))

    # The autograd formula is in C++ (csrc/autograd/lambda_return.cpp): a Python one cost ~100 us per call.


if _backend.extension_loaded():
    _register()
