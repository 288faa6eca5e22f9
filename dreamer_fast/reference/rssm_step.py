"""One RSSM step in plain PyTorch: the executable specification of the step that every Python RSSM loop runs.

The step's affine layers are functions the caller passes in, because callers arrange the GEMMs differently: one
Linear on a concatenation (the RSSM's reference backend), a precomputed projection of the time-independent part plus
a product (``observe_sequence_ref``), or a ``SequenceLinear`` (the fused imagination). Everything between the GEMMs is
written here once: the reset, the activations, the order of the GRU layer's input, the LayerNorm-GRU, the logits'
shape and dtype, the sample. The elementwise ops default to the reference ops; the fused backend passes its fused
ops, which compute the same functions. The C++ form of the step is ``csrc/composite/observe_sequence.h``.

Shapes: ``deter [B, D]``, ``stoch [B, S, K]``, ``keep [B]`` (0 where the step starts from the initial state).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dreamer_fast.reference.elu import elu_ref

Layer = Callable[[torch.Tensor], torch.Tensor]
"""An affine layer as a function of its varying input (other inputs, e.g. the action, bound by the caller)."""

LnGru = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(gates [B, 3D], deter [B, D]) -> deter'``: :func:`dreamer_fast.reference.ln_gru_ref` with the norm's parameters."""

Sampler = Callable[[torch.Tensor], torch.Tensor]
"""``logits [B, S, K] -> [B, S, K]``: the straight-through one-hot sample (noise or seed bound by the caller)."""


def reset(keep: torch.Tensor, deter: torch.Tensor, stoch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(deter, stoch)`` where ``keep`` is 1, the initial state (zeros) where it is 0 (``is_first``)."""
    k = keep[:, None]
    return deter * k, stoch * k[..., None]


def recurrent(
    deter: torch.Tensor, stoch: torch.Tensor, img_in: Layer, gru: Layer, ln_gru: LnGru, elu: Layer = elu_ref
) -> torch.Tensor:
    """The deterministic state after one step: ``x = elu(img_in(stoch.flatten(-2)))``,
    ``deter' = ln_gru(gru(cat([x, deter])), deter)``.

    ``img_in`` holds the action's part of the layer. Under autocast ``x`` is in the GEMMs' dtype and ``deter`` joins
    it there (a concatenation in the state's dtype would be narrowed again by the GRU layer: the same values).
    """
    x = elu(img_in(stoch.flatten(-2)))
    return ln_gru(gru(torch.cat([x, deter.to(x.dtype)], -1)), deter)


def head(deter: torch.Tensor, out: Layer, logits: Layer, stoch_shape: torch.Size, elu: Layer = elu_ref) -> torch.Tensor:
    """A distribution's logits ``logits(elu(out(deter)))``, ``[B, S, K]`` (``stoch_shape``) in the state's dtype
    (under autocast the distributions stay in it). For the posterior ``out`` holds the embedding's part."""
    return logits(elu(out(deter))).to(deter.dtype).unflatten(-1, tuple(stoch_shape))


def probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """The categorical's probabilities (the prior's mean in observe): ``(1 - unimix) softmax(logits) + unimix / K``."""
    p = logits.softmax(-1)
    if unimix > 0:
        p = (1 - unimix) * p + unimix / logits.shape[-1]
    return p


def obs_step(
    deter: torch.Tensor,
    stoch: torch.Tensor,
    keep: torch.Tensor,
    *,
    img_in: Layer,
    gru: Layer,
    ln_gru: LnGru,
    obs_out: Layer,
    post_logits: Layer,
    sample: Sampler,
    img_out: Layer | None = None,
    prior_logits: Layer | None = None,
    elu: Layer = elu_ref,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One posterior step: reset, :func:`recurrent`, the prior's :func:`head` (when ``img_out`` and ``prior_logits``
    are given; its sample is never drawn), the posterior's head and its sample.

    ``img_in`` must apply the reset to its action part itself. Returns ``(deter', sample, logits, prior_logits)``
    (``prior_logits`` None without the prior's layers).
    """
    deter, stoch = reset(keep, deter, stoch)
    deter = recurrent(deter, stoch, img_in, gru, ln_gru, elu)
    prior = None if img_out is None else head(deter, img_out, prior_logits, stoch.shape[-2:], elu)
    logits = head(deter, obs_out, post_logits, stoch.shape[-2:], elu)
    return deter, sample(logits), logits, prior


def img_step(
    deter: torch.Tensor,
    stoch: torch.Tensor,
    *,
    img_in: Layer,
    gru: Layer,
    ln_gru: LnGru,
    img_out: Layer,
    prior_logits: Layer,
    sample: Sampler,
    elu: Layer = elu_ref,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prior step (imagination): :func:`recurrent`, the prior's :func:`head`, its sample.
    Returns ``(deter', sample, logits)``."""
    deter = recurrent(deter, stoch, img_in, gru, ln_gru, elu)
    logits = head(deter, img_out, prior_logits, stoch.shape[-2:], elu)
    return deter, sample(logits), logits
