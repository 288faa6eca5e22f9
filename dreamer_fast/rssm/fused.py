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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dreamer_fast import _backend
from dreamer_fast.rssm.sequence_linear import SequenceLinear
from dreamer_fast.ops import obs_step_inference as _obs_step_inference
from dreamer_fast.ops.elu import elu
from dreamer_fast.ops.linear import linear
from dreamer_fast.ops.ln_gru import is_mixed as _ln_gru_is_mixed
from dreamer_fast.ops.observe_sequence import observe_sequence
from dreamer_fast.reference import rssm_step
from dreamer_fast.rssm.state import RSSMState

if TYPE_CHECKING:
    from dreamer_fast.rssm.module import RSSM


def elu_fused(x: torch.Tensor) -> torch.Tensor:
    """The fused ELU op: saves its output, as ``F.elu(inplace=True)`` does; in bfloat16 ~11x faster than ATen's on an
    AMD EPYC Zen 4 (docs/PERFORMANCE.md, "CPU paths")."""
    return elu(x, backend="fused")


def ln_gru(m: RSSM, gates: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
    """The fused op, without the public wrapper's checks (the shapes are the RSSM's). Low-precision gates under
    autocast go in as they are (the op's mixed-precision form widens them as it reads them: no cast pass)."""
    if not _ln_gru_is_mixed(gates, deter):
        gates = gates.to(deter.dtype)
    return torch.ops.dreamer_fast.ln_gru.default(
        gates, deter.contiguous(), m.gru_norm.weight, m.gru_norm.bias, m.gru_norm.eps
    )[0]


def _sampler(m: RSSM, noise: torch.Tensor | None) -> rssm_step.Sampler:
    return lambda logits: m._sample(logits, noise, fused=True)[0]


def observe(m: RSSM, embed, action, keep, state: RSSMState, noise) -> tuple[RSSMState, RSSMState]:
    D, flat = m.deter_size, m.stoch_size * m.classes
    dtype = m._dtype()
    # Time-independent GEMMs over all T·B rows at once: the action part of img_in (with the reset applied to the
    # action) and the embed part of obs_out.
    w_stoch_in, w_act_in = split_columns(m.img_in.weight, flat)
    w_deter_out, w_emb_out = split_columns(m.obs_out.weight, D)
    act_proj = F.linear(action * keep[..., None], w_act_in, m.img_in.bias)
    emb_proj = linear(embed, w_emb_out, m.obs_out.bias)  # [T·B, E] -> H: the fused linear op's GEMM library
    # The recurrence, forward and backward, is one C++ op; under autocast its GEMMs run in autocast's dtype.
    device_type = embed.device.type
    gemm_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    deters, samples, logits = observe_sequence(
        act_proj.to(dtype), emb_proj.to(dtype), keep, state.deter, state.stoch, w_stoch_in,
        m.gru.weight, m.gru.bias, m.gru_norm.weight, m.gru_norm.bias, w_deter_out,
        m.post_logits.weight, m.post_logits.bias, noise=noise, unimix=m.unimix, eps=m.gru_norm.eps,
        gemm_dtype=gemm_dtype, backend="fused",
    )
    post = RSSMState(deters, samples, logits)
    # The prior head feeds nothing back into the recurrence: one pass over all T·B rows after the loop.
    prior_logits = rssm_step.head(deters, m.img_out, m.prior_logits, samples.shape[-2:], elu_fused)
    return post, RSSMState(deters, rssm_step.probs(prior_logits, m.unimix), prior_logits)


def obs_step(m: RSSM, prev_state: RSSMState, prev_action, embed, keep, noise, prior: bool = True):
    p = m._params()
    device_type = embed.device.type
    if (not torch.is_grad_enabled() and not torch.is_autocast_enabled(device_type)
            and _backend.has_kernel("obs_step_inference", device_type)):
        # The acting path (B = 1 under torch.no_grad, every environment step): the whole step is one C++ op, as ~20
        # ATen calls from Python cost about as much as its GEMVs (docs/PERFORMANCE.md). The op has no autograd, and
        # under autocast the step below casts the GEMMs as autocast does.
        if m.inference_dtype is not None and m._dtype() == torch.float32:
            p = m._inference_layers(p)
        deter, stoch, logits, prior_probs, prior_logits = _obs_step_inference.call(
            prev_state.deter, prev_state.stoch, prev_action, embed, keep, p, p["gru_norm"][0], p["gru_norm"][1],
            noise, m.unimix, m.gru_norm.eps, None, prior,
        )
        post = RSSMState(deter, stoch, logits)
        return post, (RSSMState(deter, prior_probs, prior_logits) if prior else None)
    # Training through a single step (or autocast): functional calls on the parameters, no module calls, the fused ops
    # without their wrappers' checks.
    action = prev_action * keep[:, None]
    deter, stoch, logits, _ = rssm_step.obs_step(
        prev_state.deter, prev_state.stoch, keep,
        img_in=lambda z: F.linear(torch.cat([z, action], -1), *p["img_in"]),
        gru=lambda xh: F.linear(xh, *p["gru"]),
        ln_gru=lambda gates, deter: ln_gru(m, gates, deter),
        obs_out=lambda h: F.linear(torch.cat([h, embed], -1), *p["obs_out"]),
        post_logits=lambda y: F.linear(y, *p["post_logits"]),
        sample=_sampler(m, noise),
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
    return RSSMState(deter, stoch, logits), RSSMState(deter, rssm_step.probs(prior_logits, m.unimix), prior_logits)


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

    def __init__(self, m: RSSM) -> None:
        flat = m.stoch_size * m.classes
        self.m = m
        self.stoch_in = SequenceLinear(m.img_in.weight[:, :flat])
        self.action_in = SequenceLinear(m.img_in.weight[:, flat:])
        self.gru = SequenceLinear(m.gru.weight)
        self.out = SequenceLinear(m.img_out.weight)
        self.logits = SequenceLinear(m.prior_logits.weight)

    def step(self, state: RSSMState, noise: torch.Tensor | None, action: torch.Tensor | None = None,
             act_proj: torch.Tensor | None = None) -> RSSMState:
        """One prior step from ``action`` or from its img_in projection ``act_proj`` (bias included)."""
        m = self.m
        if act_proj is None:
            act_proj = self.action_in(m.img_in.bias, action)
        deter, stoch, logits = rssm_step.img_step(
            state.deter, state.stoch,
            img_in=lambda z: self.stoch_in(act_proj, z),
            gru=lambda xh: self.gru(m.gru.bias, xh),
            ln_gru=lambda gates, deter: ln_gru(m, gates, deter),
            img_out=lambda h: self.out(m.img_out.bias, h),
            prior_logits=lambda y: self.logits(m.prior_logits.bias, y),
            sample=_sampler(m, noise),
            elu=elu_fused,
        )
        return RSSMState(deter, stoch, logits)


def imagine_with_action(m: RSSM, action: torch.Tensor, start: RSSMState, noise) -> RSSMState:
    """The open-loop rollout; the action part of img_in does not depend on the state: one GEMM for all steps."""
    flat = m.stoch_size * m.classes
    act_proj = F.linear(action, m.img_in.weight[:, flat:], m.img_in.bias)
    loop = Imagination(m)
    states, state = [], start
    for t in range(action.shape[0]):
        state = loop.step(state, None if noise is None else noise[t], act_proj=act_proj[t])
        states.append(state)
    return RSSMState.stack(states)
