"""The DreamerV2 agent: world model + actor-critic, their optimisers, the training step and the acting policy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.agent.behavior import ActorCritic
from dreamer_fast.config import Config
from dreamer_fast.cpu import resolve_bf16
from dreamer_fast.rssm import RSSMState
from dreamer_fast.agent.world_model import ActionSpaceLike, ObsSpace, WorldModel, check_act_space

PolicyState = tuple[RSSMState, torch.Tensor]  # (latent [N], previous action [N, A])
MODES = ("explore", "eval", "random")


class Agent(nn.Module):
    """DreamerV2.

    Args:
        obs_space: ``{"image": ((C, 64, 64), np.uint8)}`` or ``{"vector": ((n,), np.float32)}``.
        act_space: ``.discrete: bool``, ``.dim: int`` (e.g. ``dreamer_fast.envs.ActionSpace``).
        config: a :class:`dreamer_fast.config.Config`; everything lives on ``torch.device(config.device)``.

    Attributes: ``wm`` (:class:`WorldModel`), ``ac`` (:class:`ActorCritic`), ``model_opt``, ``actor_opt``,
    ``critic_opt`` (AdamW with ``opt_eps``, ``weight_decay``; gradients clipped to norm ``grad_clip``).
    """

    def __init__(self, obs_space: ObsSpace, act_space: ActionSpaceLike, config: Config) -> None:
        super().__init__()
        self.config = config
        self.act_space = check_act_space(act_space)
        self.device = torch.device(config.device)
        self.bf16, self.bf16_reason = resolve_bf16(config.bf16, self.device)  # bf16 autocast in training, and why
        self.wm = WorldModel(obs_space, act_space, config)
        self.ac = ActorCritic(self.wm.feat_size, act_space, config)
        self.to(self.device)
        c = config
        self.model_opt = self._adam(self.wm.parameters(), c.model_lr)
        self.actor_opt = self._adam(self.ac.actor.parameters(), c.actor_lr)
        self.critic_opt = self._adam(self.ac.critic.parameters(), c.critic_lr)
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient norm
        self.ddp = None  # set by dreamer_fast.distributed.wrap_agent: DDP wrappers that average gradients over ranks

    def _adam(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(params, lr=lr, eps=self.config.opt_eps, weight_decay=self.config.weight_decay)

    @property
    def updates(self) -> int:
        return self.ac.updates

    def _autocast(self, acting: bool = False) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``config.bf16`` resolves to it (:attr:`bf16`). Acting on the CPU stays in float32: its
        GEMVs at a few rows are bound by reading the weights, and autocast would cast every weight to bf16 at every
        step (an Atari acting step took 12 ms in bf16 against 6 ms in float32, measured on an Intel Xeon with AMX,
        2 threads)."""
        if not self.bf16 or (acting and self.device.type == "cpu"):
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter],
              backward: bool = True) -> torch.Tensor:
        """Gradients of ``loss`` w.r.t. ``params`` only (nothing else accumulates a .grad), clip, step. Grad norm
        (a 0-d float32 CPU tensor: it came to the host with the flag). ``backward=False``: the gradients are already
        in ``.grad``.

        A non-finite loss or gradient norm skips the step (counted in ``skipped_steps``); under DDP a non-finite loss
        on any rank skips it on all. Deciding that is the one device-to-host copy of an optimiser step: the finiteness
        flag travels with the norm."""
        if backward:
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
        if self.ddp is not None:
            finite = self.ddp.all_finite(finite)
        value, ok = torch.stack([norm.float(), finite.float()]).tolist()
        if ok:
            opt.step()
        else:
            self.skipped_steps += 1
        return torch.tensor(value)

    # ---- training --------------------------------------------------------------------------------------------------

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One update of the world model, then of the actor and the critic in imagination from every posterior state.

        ``batch``: time-major ``[T, B, ...]`` numpy arrays or tensors (see :meth:`WorldModel.preprocess`).
        Returns metrics as detached 0-d float32 tensors: the losses and statistics stay on the model's device (reading
        them is the caller's choice, e.g. once per log); ``*/grad_norm``, ``train/updates`` and ``train/nonfinite``
        (1 when a non-finite loss or gradient norm made any of the three optimiser steps skip, else 0) are on the CPU.
        The update reads the device once per optimiser step (three times): the non-finite guard of :meth:`_step`.
        """
        skipped = self.skipped_steps
        self.train()
        data = self.wm.preprocess(batch)
        post, metrics = self.train_model(data)
        start = post.detach().flatten()
        metrics.update(self.train_behavior(start, data["is_terminal"].reshape(-1)))
        metrics["train/nonfinite"] = torch.tensor(float(self.skipped_steps > skipped))
        return metrics

    def train_model(self, data: Mapping[str, torch.Tensor]) -> tuple[RSSMState, dict[str, torch.Tensor]]:
        """One world-model update on a preprocessed batch ``[T, B]``; returns the posterior ``[T, B]`` and metrics."""
        with self._autocast():
            model_loss, post, metrics = (self.wm.loss if self.ddp is None else self.ddp.world_model)(data)
        metrics["model/grad_norm"] = self._step(self.model_opt, model_loss, list(self.wm.parameters()))
        return post, metrics

    def train_behavior(self, start: RSSMState, is_terminal: torch.Tensor) -> dict[str, torch.Tensor]:
        """One actor and one critic update from the detached start states ``[N]`` (``is_terminal [N]``), then the
        slow critic's count. Only the actor's and the critic's parameters change (and receive ``.grad``)."""
        with self._autocast():
            if self.ddp is None:
                actor_loss, critic_loss, metrics = self.ac.loss(self.wm, start.detach(), is_terminal)
            else:
                actor_loss, critic_loss, metrics = self.ddp.behavior(start.detach(), is_terminal)
        actor_params, critic_params = list(self.ac.actor.parameters()), list(self.ac.critic.parameters())
        if self.ddp is not None:  # DDP reduces each gradient once per forward: one backward for both parts
            self.actor_opt.zero_grad(set_to_none=True)
            self.critic_opt.zero_grad(set_to_none=True)
            (actor_loss + critic_loss).backward(inputs=actor_params + critic_params)
        single = self.ddp is None
        metrics["actor/grad_norm"] = self._step(self.actor_opt, actor_loss, actor_params, backward=single)
        metrics["critic/grad_norm"] = self._step(self.critic_opt, critic_loss, critic_params, backward=single)
        self.ac.update_slow_target()
        metrics["train/updates"] = torch.tensor(float(self.ac.updates))
        return metrics

    # ---- acting ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def policy(
        self, obs: Mapping[str, np.ndarray], state: PolicyState | None = None, mode: str = "explore"
    ) -> tuple[np.ndarray, PolicyState | None]:
        """Act on a batch of ``N`` observations.

        Args:
            obs: ``{"image" | "vector": [N, ...], "is_first": bool [N]}`` (numpy; other keys ignored).
            state: None at the start, else the returned state (latent ``[N]``, previous action ``[N, A]``).
                Rows with ``is_first`` restart from the initial state and a zero action.
            mode: ``"explore"`` (sample the actor), ``"eval"`` (its mode) or ``"random"`` (uniform one-hot /
                uniform in [-1, 1]; the networks are not run and the returned state is None, so a later call
                starts from the initial state).

        Returns:
            ``(action float32 [N, A], new_state)``.
        """
        if mode not in MODES:
            raise ValueError(f"Agent.policy: `mode` must be one of {MODES}, got {mode!r}")
        is_first = np.asarray(obs["is_first"], dtype=bool)
        N, A = is_first.shape[0], self.act_space.dim
        if mode == "random":
            return self._random_action(N), None
        self.eval()
        data = self.wm.preprocess({self.wm.obs_key: obs[self.wm.obs_key], "is_first": is_first})
        if state is None:
            latent, prev_action = self.wm.rssm.initial(N), torch.zeros(N, A, device=self.device)
        else:
            latent, prev_action = state
        with self._autocast(acting=True):
            embed = self.wm.encoder(data[self.wm.obs_key])
            latent, _ = self.wm.rssm.obs_step(latent, prev_action, embed, data["is_first"], prior=False)
            dist = self.ac.actor.dist(self.ac.actor(self.wm.rssm.get_feat(latent)))
            action = dist.sample() if mode == "explore" else dist.mode()
        action = action.float()
        return action.cpu().numpy().astype(np.float32), (latent, action)

    def _random_action(self, n: int) -> np.ndarray:
        A = self.act_space.dim
        if self.act_space.discrete:
            index = torch.randint(A, (n,))
            return F.one_hot(index, A).numpy().astype(np.float32)
        return (torch.rand(n, A) * 2 - 1).numpy().astype(np.float32)

    # ---- checkpoints -----------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: parameters (slow critic included), the three optimisers, the update count."""
        return {
            "model": self.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.ac.updates,
        }

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned (tensors are moved to this agent's device)."""
        self.load_state_dict(state["model"])
        self.model_opt.load_state_dict(state["model_opt"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.ac.updates = int(state["updates"])


__all__ = ["Agent", "PolicyState"]
