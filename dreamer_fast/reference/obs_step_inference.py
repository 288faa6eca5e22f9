"""One RSSM observe step for acting in plain PyTorch: the executable specification of the fused op.

The step is :func:`dreamer_fast.reference.rssm_step.obs_step` with the reference ops (``linear_ref``, ``ln_gru_ref``,
``straight_through_categorical_ref``) and the layers given as the op takes them; it returns what the op returns.
"""

from __future__ import annotations

import torch

from dreamer_fast.reference import rssm_step
from dreamer_fast.reference.linear import linear_ref
from dreamer_fast.reference.ln_gru import ln_gru_ref
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref


def obs_step_inference_ref(
    deter: torch.Tensor,
    stoch: torch.Tensor,
    action: torch.Tensor,
    embed: torch.Tensor,
    keep: torch.Tensor,
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    unimix: float = 0.0,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    with_prior: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arguments and outputs of :func:`dreamer_fast.ops.obs_step_inference` (shapes there).

    Bfloat16 weight copies with a float32 state are widened to float32: the rounded weights, float32 products.
    Without ``noise`` the sample's seed is drawn from ``generator`` as the fused op draws it. Returns
    ``(deter [B, D], post sample [B, S, K], post logits, prior probs, prior logits)``; without ``with_prior`` the
    last two are empty ``[0]``.
    """

    def layer(name: str, suffix: torch.Tensor | None = None):
        """The layer `name` of ``x`` (concatenated with ``suffix``, the part its caller binds)."""
        weight, bias = layers[name]

        def apply(x: torch.Tensor) -> torch.Tensor:
            inp = x if suffix is None else torch.cat([x, suffix], -1)
            return linear_ref(inp, weight.to(inp.dtype), bias)

        return apply

    def ln_gru(gates: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return ln_gru_ref(gates, h, ln_w, ln_b, eps)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return straight_through_categorical_ref(logits, unimix, noise=noise, generator=generator)[0]

    with torch.no_grad():
        deter2, post, post_logits, prior_logits = rssm_step.obs_step(
            deter, stoch, keep,
            img_in=layer("img_in", suffix=action * keep[:, None]), gru=layer("gru"), ln_gru=ln_gru,
            obs_out=layer("obs_out", suffix=embed), post_logits=layer("post_logits"), sample=sample,
            img_out=layer("img_out") if with_prior else None,
            prior_logits=layer("prior_logits") if with_prior else None,
        )
    if prior_logits is None:
        return deter2, post, post_logits, deter.new_empty(0), deter.new_empty(0)
    return deter2, post, post_logits, rssm_step.probs(prior_logits, unimix), prior_logits
