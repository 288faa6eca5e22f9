"""The RSSM's reference backend: the specification, one step at a time, each layer one module call.

Each step is :mod:`dreamer_fast.reference.rssm_step` with the reference ops, its layers the RSSM's ``nn.Linear``s on
concatenated inputs. Every sample goes through ``RSSM._sample`` (``fused=False``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dreamer_fast.reference import rssm_step
from dreamer_fast.reference.ln_gru import ln_gru_ref
from dreamer_fast.rssm.state import RSSMState

if TYPE_CHECKING:
    from dreamer_fast.rssm.module import RSSM


def _ln_gru(m: RSSM) -> rssm_step.LnGru:
    norm = m.gru_norm
    return lambda gates, deter: ln_gru_ref(gates, deter, norm.weight, norm.bias, norm.eps)


def _sampler(m: RSSM, noise: torch.Tensor | None) -> rssm_step.Sampler:
    return lambda logits: m._sample(logits, noise, fused=False)[0]


def observe(m: RSSM, embed, action, keep, state: RSSMState, noise) -> tuple[RSSMState, RSSMState]:
    posts, priors = [], []
    for t in range(embed.shape[0]):
        post, prior = obs_step(m, state, action[t], embed[t], keep[t], None if noise is None else noise[t])
        posts.append(post)
        priors.append(prior)
        state = post
    if not posts:
        empty = m._empty_sequence(embed.shape[1], embed)
        return empty, empty
    return RSSMState.stack(posts), RSSMState.stack(priors)


def obs_step(m: RSSM, prev_state: RSSMState, prev_action, embed, keep, noise) -> tuple[RSSMState, RSSMState]:
    """The posterior and the prior (its probabilities as ``stoch``) of one observe step."""
    action = prev_action * keep[:, None]  # is_first: a zero action, as the state is reset to zeros
    deter, stoch, logits, prior_logits = rssm_step.obs_step(
        prev_state.deter, prev_state.stoch, keep,
        img_in=lambda z: m.img_in(torch.cat([z, action], -1)),
        gru=m.gru,
        ln_gru=_ln_gru(m),
        img_out=m.img_out,
        prior_logits=m.prior_logits,
        obs_out=lambda h: m.obs_out(torch.cat([h, embed], -1)),
        post_logits=m.post_logits,
        sample=_sampler(m, noise),
    )
    prior = RSSMState(deter, rssm_step.probs(prior_logits, m.unimix), prior_logits)
    return RSSMState(deter, stoch, logits), prior


def img_step(m: RSSM, prev_state: RSSMState, prev_action, noise) -> RSSMState:
    deter, stoch, logits = rssm_step.img_step(
        prev_state.deter, prev_state.stoch,
        img_in=lambda z: m.img_in(torch.cat([z, prev_action], -1)),
        gru=m.gru,
        ln_gru=_ln_gru(m),
        img_out=m.img_out,
        prior_logits=m.prior_logits,
        sample=_sampler(m, noise),
    )
    return RSSMState(deter, stoch, logits)


def imagine_with_action(m: RSSM, action: torch.Tensor, start: RSSMState, noise) -> RSSMState:
    states, state = [], start
    for t in range(action.shape[0]):
        state = img_step(m, state, action[t], None if noise is None else noise[t])
        states.append(state)
    return RSSMState.stack(states)
