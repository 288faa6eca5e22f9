"""The RSSM's fused backend: the same function as the reference backend, arranged for speed.

- ``observe``: the time-independent GEMMs batched over all ``T·B`` rows (the action part of ``img_in``, the embed
  part of ``obs_out``, the whole prior head after the loop) around one C++ op for the recurrence, forward and
  backward (:func:`dreamer_fast.ops.observe_sequence.observe_sequence`).
- imagination (``img_step``, ``imagine``, ``imagine_with_action``): a Python loop of
  :mod:`dreamer_fast.reference.rssm_step` steps over the fused ``elu``, ``ln_gru`` and sampling ops, with GEMMs through
  ATen, each weight's gradient computed once for the whole rollout (:class:`Imagination`).
- ``obs_step`` without gradients (acting, B = 1 under ``torch.no_grad``): one C++ op
  (``dreamer_fast.ops.obs_step_inference``); with gradients or under autocast the same step as the reference's, its
  GEMMs plain ``F.linear`` calls around the fused ``ln_gru`` op.

Every fused op is called through its unchecked entry point (``call`` of its ``dreamer_fast/ops`` module, or
``torch.ops.dreamer_fast.*``): the RSSM has checked the arguments and chosen this backend for the device once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast import _backend
from dreamer_fast.ops import elu as _elu
from dreamer_fast.ops import kl_balance as _kl_balance
from dreamer_fast.ops import linear as _linear
from dreamer_fast.ops import obs_step_inference as _obs_step_inference
from dreamer_fast.ops import observe_sequence as _observe_sequence
from dreamer_fast.ops import straight_through_categorical as _straight_through_categorical
from dreamer_fast.ops.ln_gru import is_mixed as _ln_gru_is_mixed
from dreamer_fast.reference import rssm_step
from dreamer_fast.rssm.backend import Layers, Policy, at, dtype, rollout
from dreamer_fast.rssm.sequence_linear import SequenceLinear
from dreamer_fast.rssm.state import RSSMState

# The fused ELU op saves its output, as ``F.elu(inplace=True)`` does; in bfloat16 it is ~11x faster than ATen's on an
# AMD EPYC Zen 4 (docs/PERFORMANCE.md, "CPU paths").
elu_fused = _elu.call


class Fused:
    """The fused backend (:class:`dreamer_fast.rssm.backend.Backend`) over ``layers``.

    ``inference_dtype`` (None or torch.bfloat16): the weights of ``obs_step`` without gradients
    (``RSSM.inference_dtype``); the bfloat16 copies are cached here and remade whenever a weight has changed.
    """

    def __init__(self, layers: Layers, unimix: float, device: torch.device,
                 inference_dtype: torch.dtype | None = None) -> None:
        self.layers, self.unimix, self.device, self.inference_dtype = layers, unimix, device, inference_dtype
        self.acting_op = _backend.has_kernel("obs_step_inference", device.type)
        self._inference_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    def params(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of every layer, read without nn.Module's attribute lookup."""
        return {name: (m._parameters["weight"], m._parameters["bias"]) for name, m in zip(Layers._fields, self.layers)}

    def inference_layers(self, p: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        """``p`` with the weights replaced by their ``inference_dtype`` copies (remade when a weight changed)."""
        names = _obs_step_inference.LAYERS
        key = tuple((id(p[n][0]), p[n][0].data_ptr(), p[n][0]._version) for n in names)
        if self._inference_cache is None or self._inference_cache[0] != key:
            with torch.no_grad():
                copies = {n: p[n][0].to(self.inference_dtype).contiguous() for n in names}
            self._inference_cache = (key, copies)
        copies = self._inference_cache[1]
        return {**p, **{n: (copies[n], p[n][1]) for n in names}}

    def ln_gru(self, gates: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        """The fused op (the shapes are the RSSM's). Low-precision gates under autocast go in as they are (the op's
        mixed-precision form widens them as it reads them: no cast pass)."""
        if not _ln_gru_is_mixed(gates, deter):
            gates = gates.to(deter.dtype)
        norm = self.layers.gru_norm
        return torch.ops.dreamer_fast.ln_gru.default(gates, deter.contiguous(), norm.weight, norm.bias, norm.eps)[0]

    def sample(self, logits: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return _straight_through_categorical.call(logits, self.unimix, noise)

    def sampler(self, noise: torch.Tensor | None) -> rssm_step.Sampler:
        return lambda logits: self.sample(logits, noise)[0]

    def kl(self, post_logits, prior_logits, balance, free, free_avg) -> tuple[torch.Tensor, torch.Tensor]:
        return _kl_balance.call(post_logits, prior_logits, balance, free, free_avg, self.unimix)

    def observe(self, embed, action, keep, state: RSSMState, noise) -> tuple[RSSMState, RSSMState]:
        L = self.layers
        D, flat = L.img_out.in_features, L.prior_logits.out_features
        # Time-independent GEMMs over all T·B rows at once: the action part of img_in (with the reset applied to the
        # action) and the embed part of obs_out.
        w_stoch_in, w_act_in = split_columns(L.img_in.weight, flat)
        w_deter_out, w_emb_out = split_columns(L.obs_out.weight, D)
        act_proj = F.linear(action * keep[..., None], w_act_in, L.img_in.bias)
        emb_proj = _linear.call(embed, w_emb_out, L.obs_out.bias)  # [T·B, E] -> H: the fused linear op's library
        # The recurrence, forward and backward, is one C++ op; under autocast its GEMMs run in autocast's dtype.
        device_type = embed.device.type
        gemm_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        state_dtype, norm = dtype(L), L.gru_norm
        deters, samples, logits = _observe_sequence.call(
            act_proj.to(state_dtype), emb_proj.to(state_dtype), keep, state.deter, state.stoch, w_stoch_in,
            L.gru.weight, L.gru.bias, norm.weight, norm.bias, w_deter_out, L.post_logits.weight, L.post_logits.bias,
            noise, self.unimix, norm.eps, gemm_dtype=gemm_dtype,
        )
        post = RSSMState(deters, samples, logits)
        # The prior head feeds nothing back into the recurrence: one pass over all T·B rows after the loop.
        prior_logits = rssm_step.head(deters, L.img_out, L.prior_logits, samples.shape[-2:], elu_fused)
        return post, RSSMState(deters, rssm_step.probs(prior_logits, self.unimix), prior_logits)

    def obs_step(self, prev_state: RSSMState, prev_action, embed, keep, noise, prior: bool = True):
        p = self.params()
        if not torch.is_grad_enabled() and not torch.is_autocast_enabled(embed.device.type) and self.acting_op:
            # The acting path (B = 1 under torch.no_grad, every environment step): the whole step is one C++ op, as
            # ~20 ATen calls from Python cost about as much as its GEMVs (docs/PERFORMANCE.md). The op has no
            # autograd, and under autocast the step below casts the GEMMs as autocast does.
            if self.inference_dtype is not None and dtype(self.layers) == torch.float32:
                p = self.inference_layers(p)
            norm = self.layers.gru_norm
            deter, stoch, logits, prior_probs, prior_logits = _obs_step_inference.call(
                prev_state.deter, prev_state.stoch, prev_action, embed, keep, p, p["gru_norm"][0], p["gru_norm"][1],
                noise, self.unimix, norm.eps, None, prior,
            )
            post = RSSMState(deter, stoch, logits)
            return post, (RSSMState(deter, prior_probs, prior_logits) if prior else None)
        # Training through a single step (or autocast): functional calls on the parameters, no module calls, the fused
        # ops without their wrappers' checks.
        action = prev_action * keep[:, None]
        deter, stoch, logits, _ = rssm_step.obs_step(
            prev_state.deter, prev_state.stoch, keep,
            img_in=lambda z: F.linear(torch.cat([z, action], -1), *p["img_in"]),
            gru=lambda xh: F.linear(xh, *p["gru"]),
            ln_gru=self.ln_gru,
            obs_out=lambda h: F.linear(torch.cat([h, embed], -1), *p["obs_out"]),
            post_logits=lambda y: F.linear(y, *p["post_logits"]),
            sample=self.sampler(noise),
            elu=F.elu,
        )
        if not prior:
            return RSSMState(deter, stoch, logits), None
        # The prior head runs after the posterior's (the reference's runs before): the same values; only the order in
        # which deter's gradient sums the two heads' contributions differs.
        prior_logits = rssm_step.head(
            deter, lambda h: F.linear(h, *p["img_out"]), lambda y: F.linear(y, *p["prior_logits"]), logits.shape[-2:],
            F.elu,
        )
        return RSSMState(deter, stoch, logits), RSSMState(deter, rssm_step.probs(prior_logits, self.unimix),
                                                          prior_logits)

    def img_step(self, prev_state: RSSMState, prev_action, noise) -> RSSMState:
        return Imagination(self).step(prev_state, noise, action=prev_action)

    def imagine_with_action(self, action: torch.Tensor, start: RSSMState, noise) -> RSSMState:
        """The open-loop rollout; the action part of img_in does not depend on the state: one GEMM for all steps."""
        img_in = self.layers.img_in
        act_proj = F.linear(action, img_in.weight[:, self.layers.prior_logits.out_features:], img_in.bias)
        loop = Imagination(self)
        states, state = [], start
        for t in range(action.shape[0]):
            state = loop.step(state, at(noise, t), act_proj=act_proj[t])
            states.append(state)
        return RSSMState.stack(states)

    def imagine(self, policy: Policy, start: RSSMState, horizon: int, noise):
        loop = Imagination(self)
        return rollout(lambda state, action, noise_t: loop.step(state, noise_t, action=action), policy, start,
                       horizon, noise)


class _SplitColumns(torch.autograd.Function):
    """``(w[:, :at], w[:, at:])`` whose backward writes the weight's gradient once (``cat`` of the two parts).

    Autograd's own slicing would give each part's gradient a zero-filled full-size tensor and add the two: five
    full passes over the weight instead of one (measurable at the RSSM's 600 x 2136 ``obs_out`` in observe).
    """

    @staticmethod
    def forward(ctx, weight, at):
        ctx.at, ctx.width = at, weight.shape[1]
        return weight[:, :at], weight[:, at:]

    @staticmethod
    def backward(ctx, d_left, d_right):
        if d_left is None and d_right is None:
            return None, None
        if d_left is None or d_right is None:
            like = d_right if d_left is None else d_left
            shape = (like.shape[0], ctx.at) if d_left is None else (like.shape[0], ctx.width - ctx.at)
            zeros = like.new_zeros(shape)
            d_left, d_right = (zeros, d_right) if d_left is None else (d_left, zeros)
        return torch.cat([d_left, d_right], 1), None


def split_columns(weight: torch.Tensor, at: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight[:, :at], weight[:, at:])``, with :class:`_SplitColumns`' backward when the weight needs a gradient."""
    if not (weight.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return weight[:, :at], weight[:, at:]
    return _SplitColumns.apply(weight, at)


class Imagination:
    """img_step of the fused backend for a whole rollout: its GEMMs are SequenceLinears, so each weight's gradient
    is one GEMM over all the steps taken with this object."""

    def __init__(self, backend: Fused) -> None:
        L = backend.layers
        flat = L.prior_logits.out_features
        self.backend, self.layers = backend, L
        self.stoch_in = SequenceLinear(L.img_in.weight[:, :flat])
        self.action_in = SequenceLinear(L.img_in.weight[:, flat:])
        self.gru = SequenceLinear(L.gru.weight)
        self.out = SequenceLinear(L.img_out.weight)
        self.logits = SequenceLinear(L.prior_logits.weight)

    def step(self, state: RSSMState, noise: torch.Tensor | None, action: torch.Tensor | None = None,
             act_proj: torch.Tensor | None = None) -> RSSMState:
        """One prior step from ``action`` or from its img_in projection ``act_proj`` (bias included)."""
        L = self.layers
        if act_proj is None:
            act_proj = self.action_in(L.img_in.bias, action)
        deter, stoch, logits = rssm_step.img_step(
            state.deter, state.stoch,
            img_in=lambda z: self.stoch_in(act_proj, z),
            gru=lambda xh: self.gru(L.gru.bias, xh),
            ln_gru=self.backend.ln_gru,
            img_out=lambda h: self.out(L.img_out.bias, h),
            prior_logits=lambda y: self.logits(L.prior_logits.bias, y),
            sample=self.backend.sampler(noise),
            elu=elu_fused,
        )
        return RSSMState(deter, stoch, logits)

