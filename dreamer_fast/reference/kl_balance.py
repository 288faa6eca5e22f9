"""KL balancing in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch


def _probs_and_log(logits: torch.Tensor, unimix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities ``(1 - unimix) * softmax(logits) + unimix / K`` and their log, over the last dim."""
    if unimix == 0:
        log_probs = logits.log_softmax(-1)
        return log_probs.exp(), log_probs
    probs = (1 - unimix) * logits.softmax(-1) + unimix / logits.shape[-1]
    return probs, probs.log()


def categorical_kl(post_logits: torch.Tensor, prior_logits: torch.Tensor, unimix: float = 0.0) -> torch.Tensor:
    """``KL(q || p)`` of ``[..., S, K]`` categoricals, summed over the S variables: shape ``[...]``."""
    q, log_q = _probs_and_log(post_logits, unimix)
    _, log_p = _probs_and_log(prior_logits, unimix)
    return (q * (log_q - log_p)).sum((-2, -1))


def _free_nats(kl: torch.Tensor, free: float, free_avg: bool) -> torch.Tensor:
    """DreamerV2's free nats: clamp the mean KL (free_avg) or each KL (not free_avg) from below at ``free``."""
    if free_avg:
        return kl.mean().clamp(min=free)
    return kl.clamp(min=free).mean()


def kl_balance_ref(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    balance: float = 0.8,
    free: float = 0.0,
    free_avg: bool = True,
    unimix: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2's balanced KL loss (shapes and arguments as :func:`dreamer_fast.kl_balance`).

    ``loss = mix * F(KL(post || sg(prior))) + (1 - mix) * F(KL(sg(post) || prior))`` with ``mix = 1 - balance``
    and ``F`` the free-nats clamp; ``kl`` is ``KL(post || prior)`` per position, differentiable in both.
    With no positions (empty leading dims) the mean is NaN, so the loss is NaN.
    """
    mix = 1 - balance
    kl = categorical_kl(post_logits, prior_logits, unimix)
    lhs = _free_nats(categorical_kl(post_logits, prior_logits.detach(), unimix), free, free_avg)
    rhs = _free_nats(categorical_kl(post_logits.detach(), prior_logits, unimix), free, free_avg)
    return mix * lhs + (1 - mix) * rhs, kl
