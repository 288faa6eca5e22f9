"""One RSSM observe step for acting (torch.ops.dreamer_fast.obs_step_inference): argument checks and fake kernel.

The op has no autograd formula: it is the B = 1, ``torch.no_grad`` step that an agent runs at every environment step,
done in C++ in one dispatch (csrc/composite/obs_step_inference.cpp). ``RSSM.obs_step`` calls it when gradients are
off and the backend is fused; its specification is ``dreamer_fast.rssm.reference.Reference.obs_step``.
"""

from __future__ import annotations

import math

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.philox import draw_seed

_OP = "obs_step_inference"
# The layers the op reads, as RSSM names them (their weights are the six that may be bfloat16 copies).
LAYERS = ("img_in", "gru", "img_out", "prior_logits", "obs_out", "post_logits")


def obs_step_inference(
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
    """One posterior and prior step of DreamerV2's RSSM without autograd, in one op.

    Args:
        deter ``[B, D]``, stoch ``[B, S, K]``: the previous state; action ``[B, A]`` the previous action;
        embed ``[B, E]``; keep ``[B]``: 1 - is_first (0 zeroes the previous state and action).
        layers: ``(weight [out, in], bias [out])`` of ``img_in`` (``[H, S*K + A]``), ``gru`` (``[3D, H + D]``),
            ``img_out`` (``[H, D]``), ``prior_logits`` (``[S*K, H]``), ``obs_out`` (``[H, D + E]``) and
            ``post_logits`` (``[S*K, H]``), as RSSM names them.
        ln_w, ln_b: ``[3D]`` the GRU's LayerNorm.
        noise: ``[B, S]`` uniforms of the posterior sample; None: a Philox seed drawn from ``generator`` (None:
            torch's default CPU generator), the same draw as the sampler's own.
        unimix, eps: the categoricals' uniform mixture, the LayerNorm epsilon.
        with_prior: False skips the prior head (``img_out``, ``prior_logits``), whose outputs are then empty ``[0]``.

    The six weights are in ``deter``'s dtype, or all bfloat16 with a float32 state (copies made once for acting: at
    B = 1 the step's time is the weights' bytes); the biases and the LayerNorm are always in ``deter``'s dtype.

    Returns:
        ``(deter [B, D], post sample [B, S, K], post logits, prior probs, prior logits)``.

        Non-finite input: NaN in the state, the action, the embedding or a weight reaches the outputs (the
        sample of a NaN row is NaN); ``keep`` multiplies the state and action for any value.
    """
    deter = _checks.tensor(_OP, "deter", deter)
    _checks.floating(_OP, "deter", deter)
    if deter.dim() != 2:
        raise ValueError(f"{_OP}: `deter` must be [B, D], got shape {list(deter.shape)}")
    B, D = deter.shape
    stoch = _checks.tensor(_OP, "stoch", stoch)
    if stoch.dim() != 3:
        raise ValueError(f"{_OP}: `stoch` must be [B, S, K], got shape {list(stoch.shape)}")
    S, K = stoch.shape[1:]
    action, embed = _checks.tensor(_OP, "action", action), _checks.tensor(_OP, "embed", embed)
    if action.dim() != 2 or embed.dim() != 2:
        raise ValueError(f"{_OP}: `action` and `embed` must be [B, A] and [B, E], got shapes {list(action.shape)} "
                         f"and {list(embed.shape)}")
    A, E = action.shape[1], embed.shape[1]
    if not isinstance(layers, dict) or set(layers) != set(LAYERS):
        got = sorted(layers) if isinstance(layers, dict) else type(layers).__name__
        raise ValueError(f"{_OP}: `layers` must map {list(LAYERS)} to (weight, bias), got {got}")
    H = _checks.tensor(_OP, "layers['img_in'] weight", layers["img_in"][0]).shape[0]
    shapes = {"img_in": (H, S * K + A), "gru": (3 * D, H + D), "img_out": (H, D), "prior_logits": (S * K, H),
              "obs_out": (H, D + E), "post_logits": (S * K, H)}
    expected = {"stoch": (stoch, (B, S, K), "[B, S, K]"), "action": (action, (B, A), "[B, A]"),
                "embed": (embed, (B, E), "[B, E]"), "keep": (keep, (B,), "[B]"),
                "ln_w": (ln_w, (3 * D,), "[3*D]"), "ln_b": (ln_b, (3 * D,), "[3*D]")}
    for name, (out, inp) in shapes.items():
        weight, bias = layers[name]
        expected[f"layers['{name}'] weight"] = (weight, (out, inp), f"[{out}, {inp}]")
        expected[f"layers['{name}'] bias"] = (bias, (out,), f"[{out}]")
    if noise is not None:
        expected["noise"] = (noise, (B, S), "[B, S]")
    first_weight = _checks.tensor(_OP, "layers['img_in'] weight", layers["img_in"][0])
    bf16_weights = deter.dtype == torch.float32 and first_weight.dtype == torch.bfloat16
    if bf16_weights and first_weight.device != deter.device:
        _checks.like(_OP, "layers['img_in'] weight", first_weight, deter, "deter")  # raises, naming the devices
    for name, (t, shape, what) in expected.items():
        _checks.tensor(_OP, name, t)
        if bf16_weights and name.endswith(" weight"):  # all six bfloat16, on deter's device
            _checks.like(_OP, name, t, first_weight, "layers['img_in'] weight")
        else:
            _checks.like(_OP, name, t, deter, "deter")
        _checks.shape(_OP, name, t, shape, what)
    unimix = _checks.number_in(_OP, "unimix", unimix, 0.0, 1.0)
    if unimix >= 1:
        raise ValueError(f"{_OP}: `unimix` must be in [0, 1), got {unimix}")
    eps = _checks.number_in(_OP, "eps", eps, 0.0, math.inf)
    _backend.use_fused(_OP, deter.device, "fused")  # raises, naming the device, where the op has no kernel
    return call(deter, stoch, action, embed, keep, layers, ln_w, ln_b, noise, unimix, eps, generator, bool(with_prior))


def call(deter, stoch, action, embed, keep, layers, ln_w, ln_b, noise, unimix, eps, generator=None, with_prior=True):
    """The op without the checks (RSSM.obs_step has made its own): ``layers`` as in :func:`obs_step_inference`."""
    # With noise the seed is unused: pass zero rather than advance the generator (as the sampler's wrapper does).
    seed = draw_seed(generator) if noise is None else torch.zeros((), dtype=torch.int64)
    return torch.ops.dreamer_fast.obs_step_inference.default(
        deter, stoch, action, embed, keep, *layers["img_in"], *layers["gru"], ln_w, ln_b, *layers["img_out"],
        *layers["prior_logits"], *layers["obs_out"], *layers["post_logits"], noise, seed, unimix, eps, with_prior
    )


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::obs_step_inference")
    def _(deter, stoch, action, embed, keep, w_img_in, b_img_in, w_gru, b_gru, ln_w, ln_b, w_img_out, b_img_out,
          w_prior, b_prior, w_obs_out, b_obs_out, w_post, b_post, noise, seed, unimix, eps, with_prior=True):
        logits = deter.new_empty(stoch.shape)
        prior = ((torch.empty_like(logits), torch.empty_like(logits)) if with_prior
                 else (deter.new_empty(0), deter.new_empty(0)))
        return (deter.new_empty(deter.shape), torch.empty_like(logits), logits, *prior)


if _backend.extension_loaded():
    _register()
