"""What an RSSM backend is: the interface both backends implement, the layers they are built from, and the parts they
share.

A backend is built by :class:`dreamer_fast.RSSM` from its :class:`Layers` once the backend and the parameters'
device are resolved (construction, ``.to()`` and the other moves, a ``backend``, ``unimix`` or ``inference_dtype``
assignment). It holds the layer modules, not their tensors: it reads each weight when it runs, so replaced parameters
(``load_state_dict(assign=True)``, ``.to()``) are never stale. It runs after the RSSM's argument checks
(``rssm/checks.py``) and checks nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import nn

from dreamer_fast.rssm.state import RSSMState


class Layers(NamedTuple):
    """The RSSM's layers, named as its ``state_dict`` names them."""

    img_in: nn.Linear
    gru: nn.Linear
    gru_norm: nn.LayerNorm
    img_out: nn.Linear
    prior_logits: nn.Linear
    obs_out: nn.Linear
    post_logits: nn.Linear


Step = Callable[[RSSMState, torch.Tensor, "torch.Tensor | None"], RSSMState]
"""``(state [N], action [N, A], noise [N, S] or None) -> state [N]``: one imagination step."""

Policy = Callable[[RSSMState], torch.Tensor]
"""``state [N] -> action [N, A]`` (the RSSM's wrapper of ``imagine``'s policy: features in, checked action out)."""


class Backend(Protocol):
    """The operations of an RSSM backend, on checked arguments (``keep`` is ``1 - is_first`` in the state's dtype;
    ``noise`` is None or in the state's dtype; states are in the parameters' dtype, on their device)."""

    device: torch.device
    """The device the backend was resolved for (the parameters' at the time)."""

    def observe(self, embed, action, keep, state: RSSMState, noise) -> tuple[RSSMState, RSSMState]:
        """``RSSM.observe``: ``(post, prior)`` over ``[T, B]``."""
        ...

    def obs_step(self, prev_state: RSSMState, prev_action, embed, keep, noise,
                 prior: bool = True) -> tuple[RSSMState, RSSMState | None]:
        """``RSSM.obs_step``: ``(post, prior or None)`` over ``[B]``."""
        ...

    def img_step(self, prev_state: RSSMState, prev_action, noise) -> RSSMState:
        """``RSSM.img_step``."""
        ...

    def imagine_with_action(self, action, start: RSSMState, noise) -> RSSMState:
        """``RSSM.imagine_with_action`` for H >= 1: the ``[H, B]`` successor states."""
        ...

    def imagine(self, policy: Policy, start: RSSMState, horizon: int,
                noise) -> tuple[list[RSSMState], list[torch.Tensor]]:
        """``RSSM.imagine``: the ``horizon + 1`` states (``start`` first) and the ``horizon`` actions."""
        ...

    def sample(self, logits: torch.Tensor, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """The straight-through sample and probabilities of ``[..., S, K]`` logits with ``noise [..., S]`` (None: the
        Philox stream, seeded from torch's default generator)."""
        ...

    def kl(self, post_logits, prior_logits, balance: float, free: float,
           free_avg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``RSSM.kl_loss`` on the two states' logits."""
        ...


def rollout(step: Step, policy: Policy, start: RSSMState, horizon: int,
            noise) -> tuple[list[RSSMState], list[torch.Tensor]]:
    """``horizon`` steps under ``policy`` from ``start``: the states (``start`` first) and the actions."""
    states, actions, state = [start], [], start
    for t in range(horizon):
        action = policy(state)
        state = step(state, action, at(noise, t))
        states.append(state)
        actions.append(action)
    return states, actions


def at(noise: torch.Tensor | None, t: int) -> torch.Tensor | None:
    """Step ``t``'s noise (None: the Philox stream)."""
    return None if noise is None else noise[t]


def empty_sequence(state: RSSMState) -> RSSMState:
    """A sequence of no steps after ``state [B]``: ``[0, B]`` fields of its dtypes, on its device."""
    return state.map(lambda x: x.new_zeros(0, *x.shape))


def dtype(layers: Layers) -> torch.dtype:
    """The parameters' (and states') dtype, read without nn.Module's attribute lookup."""
    return layers.gru_norm._parameters["weight"].dtype

