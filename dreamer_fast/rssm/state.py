"""The RSSM's state: a NamedTuple of its deterministic and stochastic parts, with batch-shape helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


class RSSMState(NamedTuple):
    """The RSSM state; every field has the same leading (batch or time-and-batch) dims ``...``.

    Fields:
        deter: ``[..., D]`` deterministic (GRU) state.
        stoch: ``[..., S, K]`` stochastic state: a one-hot sample with the straight-through gradient of its
            probabilities (for the prior that :meth:`RSSM.observe` returns: the probabilities themselves).
        logits: ``[..., S, K]`` logits of the categorical distribution of ``stoch``.
    """

    deter: torch.Tensor
    stoch: torch.Tensor
    logits: torch.Tensor

    @property
    def batch_shape(self) -> torch.Size:
        """The leading dims ``...`` (e.g. ``[T, B]`` or ``[B]``)."""
        return self.deter.shape[:-1]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RSSMState:
        """``RSSMState(fn(deter), fn(stoch), fn(logits))``."""
        return RSSMState(fn(self.deter), fn(self.stoch), fn(self.logits))

    def detach(self) -> RSSMState:
        return self.map(torch.Tensor.detach)

    def to(self, *args, **kwargs) -> RSSMState:
        return self.map(lambda x: x.to(*args, **kwargs))

    def at(self, index) -> RSSMState:
        """Index the leading dims, e.g. ``post.at(t)`` (time step t, ``[B]``), ``post.at((slice(None), b))``."""
        return self.map(lambda x: x[index])

    def flatten(self) -> RSSMState:
        """Merge all leading dims into one: ``[T, B, ...] -> [T*B, ...]``."""
        n = self.deter.shape[:-1].numel()
        return RSSMState(
            self.deter.reshape(n, self.deter.shape[-1]),
            self.stoch.reshape(n, *self.stoch.shape[-2:]),
            self.logits.reshape(n, *self.logits.shape[-2:]),
        )

    @staticmethod
    def stack(states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Stack states along a new leading dim ``dim`` (0 <= dim <= len(batch_shape))."""
        return RSSMState(*(torch.stack(fields, dim) for fields in zip(*states)))

    @staticmethod
    def cat(states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Concatenate states along the existing leading dim ``dim`` (0 <= dim < len(batch_shape))."""
        return RSSMState(*(torch.cat(fields, dim) for fields in zip(*states)))


__all__ = ["RSSMState"]
