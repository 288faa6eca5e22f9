"""The RSSM's reference backend: the specification, one step at a time, each layer one module call.

Each step is :mod:`dreamer_fast.reference.rssm_step` with the reference ops, its layers the RSSM's ``nn.Linear``s on
concatenated inputs. Every sample goes through :meth:`Reference.sample`.
"""

from __future__ import annotations

import torch

from dreamer_fast.reference import rssm_step
from dreamer_fast.reference.kl_balance import kl_balance_ref
from dreamer_fast.reference.ln_gru import ln_gru_ref
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref
from dreamer_fast.rssm.backend import Layers, Policy, at, empty_sequence, rollout
from dreamer_fast.rssm.state import RSSMState


class Reference:
    """The reference backend (:class:`dreamer_fast.rssm.backend.Backend`) over ``layers``."""

    def __init__(self, layers: Layers, unimix: float, device: torch.device) -> None:
        self.layers, self.unimix, self.device = layers, unimix, device

    def _ln_gru(self, gates: torch.Tensor, deter: torch.Tensor) -> torch.Tensor:
        norm = self.layers.gru_norm
        return ln_gru_ref(gates, deter, norm.weight, norm.bias, norm.eps)

    def _sampler(self, noise: torch.Tensor | None) -> rssm_step.Sampler:
        return lambda logits: self.sample(logits, noise)[0]

    def sample(self, logits: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return straight_through_categorical_ref(logits, self.unimix, noise=noise)

    def kl(self, post_logits, prior_logits, balance, free, free_avg) -> tuple[torch.Tensor, torch.Tensor]:
        return kl_balance_ref(post_logits, prior_logits, balance, free, free_avg, self.unimix)

    def observe(self, embed, action, keep, state: RSSMState, noise) -> tuple[RSSMState, RSSMState]:
        posts, priors = [], []
        for t in range(embed.shape[0]):
            post, prior = self.obs_step(state, action[t], embed[t], keep[t], at(noise, t))
            posts.append(post)
            priors.append(prior)
            state = post
        if not posts:
            empty = empty_sequence(state)
            return empty, empty
        return RSSMState.stack(posts), RSSMState.stack(priors)

    def obs_step(self, prev_state: RSSMState, prev_action, embed, keep, noise,
                 prior: bool = True) -> tuple[RSSMState, RSSMState | None]:
        """The posterior and the prior (its probabilities as ``stoch``; computed, then dropped for ``prior=False``)
        of one observe step."""
        L = self.layers
        action = prev_action * keep[:, None]  # is_first: a zero action, as the state is reset to zeros
        deter, stoch, logits, prior_logits = rssm_step.obs_step(
            prev_state.deter, prev_state.stoch, keep,
            img_in=lambda z: L.img_in(torch.cat([z, action], -1)),
            gru=L.gru,
            ln_gru=self._ln_gru,
            img_out=L.img_out,
            prior_logits=L.prior_logits,
            obs_out=lambda h: L.obs_out(torch.cat([h, embed], -1)),
            post_logits=L.post_logits,
            sample=self._sampler(noise),
        )
        post = RSSMState(deter, stoch, logits)
        return post, (RSSMState(deter, rssm_step.probs(prior_logits, self.unimix), prior_logits) if prior else None)

    def img_step(self, prev_state: RSSMState, prev_action, noise) -> RSSMState:
        L = self.layers
        deter, stoch, logits = rssm_step.img_step(
            prev_state.deter, prev_state.stoch,
            img_in=lambda z: L.img_in(torch.cat([z, prev_action], -1)),
            gru=L.gru,
            ln_gru=self._ln_gru,
            img_out=L.img_out,
            prior_logits=L.prior_logits,
            sample=self._sampler(noise),
        )
        return RSSMState(deter, stoch, logits)

    def imagine_with_action(self, action: torch.Tensor, start: RSSMState, noise) -> RSSMState:
        states, state = [], start
        for t in range(action.shape[0]):
            state = self.img_step(state, action[t], at(noise, t))
            states.append(state)
        return RSSMState.stack(states)

    def imagine(self, policy: Policy, start: RSSMState, horizon: int, noise):
        return rollout(self.img_step, policy, start, horizon, noise)
