"""KL balancing: the fused op (torch.ops.dreamer_fast.kl_balance) with its checks, fake kernel and autograd."""

from __future__ import annotations

import math

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.kl_balance import kl_balance_ref

_OP = "kl_balance"


def kl_balance(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    balance: float = 0.8,
    free: float = 0.0,
    free_avg: bool = True,
    unimix: float = 0.0,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2's KL-balancing loss between posterior and prior categoricals, fused.

    ``q = (1 - unimix) * softmax(post_logits) + unimix / K`` and likewise ``p`` from ``prior_logits``;
    ``kl = Σ_{S,K} q * (log q - log p)``. With ``mix = 1 - balance`` and ``F`` the free-nats clamp
    (``clamp(mean(kl), min=free)`` if ``free_avg`` else ``mean(clamp(kl, min=free))``)::

        loss = mix * F(KL(post || sg(prior))) + (1 - mix) * F(KL(sg(post) || prior))

    so ``loss == F(kl)`` in value, while its gradient reaches the posterior with weight ``mix`` and the prior with
    weight ``balance``; no gradient flows where the clamp is active (``x < free``).

    Args:
        post_logits, prior_logits: ``[..., S, K]`` logits (same shape, dtype and device; K >= 1).
        balance: in [0, 1]; the share of the gradient that trains the prior (DreamerV2: 0.8).
        free: free nats, finite and >= 0.
        free_avg: clamp the mean KL (True, DreamerV2's default) or each position's KL (False).
        unimix: in [0, 1], the uniform mixture weight of both distributions (0: plain softmax).
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``(loss, kl)``: ``loss`` 0-dim, ``kl`` of shape ``[...]`` (``post_logits.shape[:-2]``), differentiable in
        both logits with no stop-gradient. With no positions (an empty ``...``), ``kl`` is empty and ``loss`` NaN
        (the mean of nothing), as in the reference.

        Non-finite input: NaN where the reference is NaN (the loss is the reference's sum of its two terms, so an
        infinite KL with balance 0 or 1 is NaN); a row whose gradient sum is infinite has a NaN gradient throughout
        (the reference's is NaN or ±inf there).
    """
    args = check(post_logits, prior_logits, balance, free, free_avg, unimix)
    if _backend.use_fused(_OP, args[0].device, backend):
        return call(*args)
    return kl_balance_ref(*args)


def check(
    post_logits: object,
    prior_logits: object,
    balance: object,
    free: object,
    free_avg: object,
    unimix: object,
    op: str = _OP,
    names: tuple[str, str] = ("post_logits", "prior_logits"),
) -> tuple[torch.Tensor, torch.Tensor, float, float, bool, float]:
    """:func:`kl_balance`'s argument checks; returns its arguments, the numbers as floats. ``op`` and ``names`` (of
    the two logits) are what the messages call them (e.g. ``RSSM.kl_loss``'s ``post.logits``)."""
    post_name, prior_name = names
    post = _checks.tensor(op, post_name, post_logits)
    prior = _checks.tensor(op, prior_name, prior_logits)
    _checks.floating(op, post_name, post)
    _checks.ndim_at_least(op, post_name, post, 2, "[..., S, K]")
    _checks.like(op, prior_name, prior, post, post_name)
    _checks.shape(op, prior_name, prior, post.shape, f"{post_name}.shape")
    if post.shape[-1] == 0:
        raise ValueError(f"{op}: `{post_name}` must have at least one class (K >= 1), got shape {list(post.shape)}")
    balance = _checks.number_in(op, "balance", balance, 0.0, 1.0)
    free = _checks.number_in(op, "free", free, 0.0, math.inf)
    if math.isinf(free):
        raise ValueError(f"{op}: `free` must be finite and >= 0, got {free}")
    if not isinstance(free_avg, bool):
        raise TypeError(f"{op}: `free_avg` must be a bool, got {type(free_avg).__name__}")
    unimix = _checks.number_in(op, "unimix", unimix, 0.0, 1.0)
    return post, prior, balance, free, free_avg, unimix


def call(
    post_logits: torch.Tensor, prior_logits: torch.Tensor, balance: float, free: float, free_avg: bool, unimix: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused op without the checks or the backend choice (for callers that have made both, as the RSSM)."""
    return torch.ops.dreamer_fast.kl_balance.default(
        post_logits.contiguous(), prior_logits.contiguous(), balance, free, free_avg, unimix
    )


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::kl_balance")
    def _(post_logits, prior_logits, balance, free, free_avg, unimix):
        return post_logits.new_empty(()), post_logits.new_empty(post_logits.shape[:-2])

    @torch.library.register_fake("dreamer_fast::kl_balance_backward")
    def _(grad_loss, grad_kl, post_logits, prior_logits, kl, balance, free, free_avg, unimix):
        return torch.empty_like(post_logits), torch.empty_like(prior_logits)

    def setup_context(ctx, inputs, output):
        post, prior, *ctx.scalars = inputs  # balance, free, free_avg, unimix
        ctx.save_for_backward(post, prior, output[1])

    def backward(ctx, grad_loss, grad_kl):
        post, prior, kl = ctx.saved_tensors
        # Autograd materialises an unused output's gradient as zeros (N + 1 elements: cheap).
        d_post, d_prior = torch.ops.dreamer_fast.kl_balance_backward.default(
            grad_loss.contiguous(), grad_kl.contiguous(), post, prior, kl, *ctx.scalars
        )
        return d_post, d_prior, None, None, None, None

    torch.library.register_autograd("dreamer_fast::kl_balance", backward, setup_context=setup_context)


if _backend.extension_loaded():
    _register()
