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
from dreamer_fast.agent.masked_step import masked_step
from dreamer_fast.agent.update_graph import UpdateGraph, resolve_cuda_graphs
from dreamer_fast.config import Config
from dreamer_fast.cpu import resolve_bf16
from dreamer_fast.reference.philox import PhiloxStream
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
    ``critic_opt`` (AdamW with ``opt_eps``, ``weight_decay``; gradients clipped to norm ``grad_clip``; on CUDA
    ``capturable``, with the learning rate and step count as device tensors), ``philox`` (the update's
    :class:`dreamer_fast.PhiloxStream`, or None: see :meth:`set_philox`).

    The update (:meth:`update`) is capture-ready: it reads nothing on the host and its shapes do not depend on data;
    with ``config.cuda_graphs`` on it runs as one replayed CUDA graph (:class:`dreamer_fast.agent.update_graph.
    UpdateGraph`).
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
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)  # see skipped_steps
        self.ddp = None  # set by dreamer_fast.distributed.wrap_agent: DDP wrappers that average gradients over ranks
        self.cuda_graphs = resolve_cuda_graphs(c.cuda_graphs, self.device)
        self._graph = UpdateGraph(self.update) if self.cuda_graphs else None
        # On CUDA the update samples from a device Philox stream (keyed from torch's default generator), as a
        # replayed graph needs; on the CPU from a seed per sample drawn from torch's default generator.
        self.philox: PhiloxStream | None = None
        if self.device.type == "cuda":
            self.set_philox(PhiloxStream(device=self.device))

    def _adam(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.AdamW:
        opt = torch.optim.AdamW(params, lr=lr, eps=self.config.opt_eps, weight_decay=self.config.weight_decay)
        self._capture_ready(opt)
        return opt

    def _capture_ready(self, opt: torch.optim.Optimizer) -> None:
        """On CUDA: ``capturable`` steps, the learning rate and the step counts as device tensors (also after
        ``load_state_dict``, which restores a checkpoint's groups as they were saved). On the CPU nothing changes: the
        CPU cannot capture, and AdamW's CPU step is then exactly the plain one."""
        if self.device.type != "cuda":
            return
        for group in opt.param_groups:
            group["capturable"] = True
            lr = group["lr"]
            group["lr"] = (lr if torch.is_tensor(lr) else torch.tensor(float(lr))).to(self.device)
            for p in group["params"]:
                state = opt.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(device=self.device, dtype=torch.float32)

    @property
    def skipped_steps(self) -> int:
        """Optimiser steps skipped for a non-finite loss or gradient norm (reads a device counter on the host)."""
        return int(self._skipped)

    def set_philox(self, stream: PhiloxStream | None) -> None:
        """The Philox stream the update's samples draw from (the RSSM's latents and the one-hot actor's actions), or
        None: a seed per sample from torch's default generator. Acting keeps drawing its seeds from the generator."""
        if stream is not None and stream.device != self.device:
            raise ValueError(f"Agent.set_philox: `stream` must be on the agent's device {self.device}, got"
                             f" {stream.device}")
        self.philox = stream

    @contextlib.contextmanager
    def _sampling_from_philox(self):
        rssm, actor = self.wm.rssm, self.ac.actor
        before = rssm.stream, actor.stream
        if self.philox is not None:
            rssm.stream = actor.stream = self.philox
        try:
            yield
        finally:
            rssm.stream, actor.stream = before

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
        # No weight cache under capture: cached casts made during capture would not be remade at replay.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graphs)

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter],
              backward: bool = True) -> torch.Tensor:
        """Gradients of ``loss`` w.r.t. ``params`` only (nothing else accumulates a .grad), clip, step. Returns the
        grad norm (a 0-d float32 tensor on the model's device). ``backward=False``: the gradients are already in
        ``.grad``.

        A non-finite loss or gradient norm skips the step (counted in ``skipped_steps``); under DDP a non-finite loss
        on any rank skips it on all. The skip is decided on the device (:func:`masked_step`): nothing is read on the
        host."""
        if backward:
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        finite = torch.isfinite(norm) & torch.isfinite(loss.detach())
        if self.ddp is not None:
            finite = self.ddp.all_finite(finite)
        masked_step(opt, finite)
        self._skipped.add_((~finite).to(self._skipped.dtype))
        return norm.detach().float()

    # ---- training --------------------------------------------------------------------------------------------------

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One update of the world model, then of the actor and the critic in imagination from every posterior state.

        ``batch``: time-major ``[T, B, ...]`` numpy arrays or tensors (see :meth:`WorldModel.preprocess`).
        Returns metrics as detached 0-d float32 tensors on the model's device (reading them is the caller's choice,
        e.g. once per log), ``train/nonfinite`` among them (1 when a non-finite loss or gradient norm made any of the
        three optimiser steps skip, else 0); ``train/updates`` is on the CPU. The update itself reads nothing on the
        host (:meth:`update`); with ``config.cuda_graphs`` on, it is replayed as a captured CUDA graph.
        """
        data = self.wm.preprocess(batch)
        if self.ddp is not None and self._graph is not None:
            raise ValueError("config `cuda_graphs` = 'on' runs on one process; the distributed update is not captured")
        metrics = self._graph(data) if self._graph is not None else self.update(data)
        self.ac.update_slow_target()
        metrics["train/updates"] = torch.tensor(float(self.ac.updates))
        return metrics

    def update(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The capture-ready update on a preprocessed batch: the world model's, the actor's and the critic's
        optimiser steps, with no host read and no data-dependent shape (so it runs eagerly as it would be captured).
        Returns its metrics (device tensors). The slow critic's copy is :meth:`train_step`'s, outside."""
        skipped = self._skipped.clone()
        self.train()
        with self._sampling_from_philox():
            post, metrics = self.train_model(data)
            start = post.detach().flatten()
            metrics.update(self.train_behavior(start, data["is_terminal"].reshape(-1), count=False))
        metrics["train/nonfinite"] = (self._skipped > skipped).float()
        return metrics

    def train_model(self, data: Mapping[str, torch.Tensor]) -> tuple[RSSMState, dict[str, torch.Tensor]]:
        """One world-model update on a preprocessed batch ``[T, B]``; returns the posterior ``[T, B]`` and metrics."""
        with self._autocast():
            model_loss, post, metrics = (self.wm.loss if self.ddp is None else self.ddp.world_model)(data)
        metrics["model/grad_norm"] = self._step(self.model_opt, model_loss, list(self.wm.parameters()))
        return post, metrics

    def train_behavior(self, start: RSSMState, is_terminal: torch.Tensor, count: bool = True
                       ) -> dict[str, torch.Tensor]:
        """One actor and one critic update from the detached start states ``[N]`` (``is_terminal [N]``), then (if
        ``count``) the slow critic's count. Only the actor's and the critic's parameters change (and receive
        ``.grad``)."""
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
        if count:
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
        """Everything needed to resume: parameters (slow critic included), the three optimisers, the update count and,
        where the update draws from one, the Philox stream's key and offset."""
        state = {
            "model": self.state_dict(),
            "model_opt": self.model_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "updates": self.ac.updates,
        }
        if self.philox is not None:
            state["philox"] = self.philox.state_dict()
        return state

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned (tensors are moved to this agent's device). A saved Philox
        stream is restored exactly (in place, so a captured update keeps reading it); without one (a checkpoint from
        the CPU, or an older one) the agent keeps its own."""
        self.load_state_dict(state["model"])
        for name in ("model_opt", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
            self._capture_ready(getattr(self, name))
        self.ac.updates = int(state["updates"])
        if self._graph is not None:  # the optimisers' state tensors are new: capture again
            self._graph = UpdateGraph(self.update)
        if "philox" in state:
            if self.philox is None:
                self.set_philox(PhiloxStream(0, self.device))
            self.philox.load_state_dict(state["philox"])


__all__ = ["Agent", "PolicyState"]
