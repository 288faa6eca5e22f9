"""DreamerV2's actor-critic, learned in imagination."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from dreamer_fast.config import Config
from dreamer_fast.agent.nets import MLP, ActionHead
from dreamer_fast.ops.lambda_return import lambda_return
from dreamer_fast.rssm import RSSMState

if TYPE_CHECKING:
    from dreamer_fast.agent.world_model import ActionSpaceLike, WorldModel


def actor_dist_name(act_space: ActionSpaceLike, config: Config) -> str:
    if config.actor_dist != "auto":
        return config.actor_dist
    return "onehot" if act_space.discrete else "trunc_normal"


def return_weights(disc: torch.Tensor) -> torch.Tensor:
    """Loss weights ``w[t] = Π_{k<t} disc[k]`` (``w[0] = 1``) of ``[H+1, N]`` discounts; stop-gradient, ``[H+1, N]``.
    """
    disc = disc.detach()
    return torch.cumprod(torch.cat([torch.ones_like(disc[:1]), disc[:-1]], 0), 0)


def actor_objective(
    log_prob: torch.Tensor,
    entropy: torch.Tensor,
    returns: torch.Tensor,
    baseline: torch.Tensor,
    weights: torch.Tensor,
    rho: float,
    ent_scale: float,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``mean(w·-(ρ·log π(a_t)·sg(R_t - v(s_t))/S + (1 - ρ)·R_t/S + η·H[π(s_t)]))``, all inputs ``[H, N]``.

    ``S`` (``scale``, a number or a 0-d tensor, no gradient) is 1 in DreamerV2; with return normalisation it is
    :meth:`ActorCritic.return_scale`, so that ``η`` weighs the entropy against returns of a fixed range.
    """
    scale = scale.detach() if isinstance(scale, torch.Tensor) else scale
    advantage = (returns - baseline).detach() / scale
    objective = ent_scale * entropy
    if rho:
        objective = objective + rho * log_prob * advantage
    if rho != 1:
        objective = objective + (1 - rho) * returns / scale
    return -(weights.detach() * objective).mean()


def critic_objective(value: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Unit-Gaussian NLL without its constant: ``mean(w·0.5·(v(s_t) - sg(R_t))²)``, inputs ``[H, N]``."""
    return (weights.detach() * 0.5 * (value - returns.detach()).square()).mean()


class ActorCritic(nn.Module):
    """Actor, critic and slow target critic (MLPs of ``mlp_layers x mlp_units``, ELU).

    Args:
        feat_size: the world model's feature size.
        act_space: ``.discrete``, ``.dim``.
        config: horizon, discount, lam, actor_grad, actor_ent, actor_dist, actor_min_std, actor_init_std,
            actor_unimix, return_norm, return_norm_decay, slow_target_update.

    The slow critic (``slow_critic``) gives the values of the λ-returns and the actor's baseline; it is not trained
    (``requires_grad`` off) and is a hard copy of the critic after every ``slow_target_update`` calls of
    :meth:`update_slow_target` (counted by ``updates``).

    ``return_norm="percentile"`` (DreamerV3's return normalisation, off in DreamerV2) keeps the buffer
    ``return_range = [low, high]``: exponential moving averages (decay ``return_norm_decay``, starting at 0) of the
    5th and 95th percentiles of each update's λ-returns; the actor's objective is divided by
    ``S = max(1, high - low)`` (:meth:`return_scale`). The buffer is in the state dict, so checkpoints carry it.
    """

    def __init__(self, feat_size: int, act_space: ActionSpaceLike, config: Config) -> None:
        super().__init__()
        self.config = config
        self.act_space = act_space
        c = config
        dist = actor_dist_name(act_space, c)
        if c.actor_unimix > 0 and dist != "onehot":
            raise ValueError(f"config `actor_unimix` applies to the one-hot actor only; the actor here is {dist!r}")
        self.actor = ActionHead(feat_size, act_space.dim, dist, c.mlp_layers, c.mlp_units,
                                c.actor_min_std, c.actor_init_std, unimix=c.actor_unimix, backend=c.backend)
        self.critic = MLP(feat_size, 1, c.mlp_layers, c.mlp_units, c.backend)
        self.slow_critic = copy.deepcopy(self.critic)
        self.slow_critic.requires_grad_(False)
        self.updates = 0
        self.rho = 1.0 if c.actor_grad == "reinforce" else 0.0
        if c.return_norm == "percentile":
            self.register_buffer("return_range", torch.zeros(2))

    def return_scale(self, returns: torch.Tensor | None = None) -> torch.Tensor | float:
        """``S`` of :func:`actor_objective`: 1.0 without return normalisation. With it, first folds the 5th and 95th
        percentiles of ``returns`` (any shape, if given) into ``return_range``, then returns ``max(1, high - low)``
        as a 0-d float32 tensor."""
        if self.config.return_norm == "none":
            return 1.0
        if returns is not None:
            flat = returns.detach().float().flatten()
            quantiles = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device))
            decay = self.config.return_norm_decay
            self.return_range.mul_(decay).add_((1 - decay) * quantiles)
        low, high = self.return_range.unbind()
        return torch.clamp(high - low, min=1.0)

    def update_slow_target(self) -> bool:
        """Count one update; every ``slow_target_update``-th copies the critic into the slow critic. True if copied."""
        self.updates += 1
        if self.updates % self.config.slow_target_update == 0:
            self.slow_critic.load_state_dict(self.critic.state_dict())
            return True
        return False

    def value(self, feat: torch.Tensor, slow: bool = False) -> torch.Tensor:
        """``[..., F] -> [...]`` float32: the critic's (or slow critic's) mean."""
        return (self.slow_critic if slow else self.critic)(feat).squeeze(-1).float()

    def loss(
        self, world_model: WorldModel, start: RSSMState, is_terminal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Actor and critic losses on ``horizon`` imagined steps from every start state.

        Args:
            world_model: gives the RSSM, the reward head (mean) and the discount head (``sigmoid(logits)`` is the
                per-step discount γ·continue it was trained on).
            start: ``[N]`` detached posterior states. is_terminal: ``[N]`` bool.

        Returns:
            ``(actor_loss [], critic_loss [], metrics)``, the metrics as detached 0-d float32 tensors on the
            model's device (none is read on the host here). The actor loss reaches the world model's parameters only
            through dynamics backpropagation (ρ = 0); the caller must step only the actor's parameters with it.

        Indexing (states ``s_0 .. s_H``, ``s_0`` the start; ``a_t`` taken in ``s_t``; ``r_t``, ``γ_t`` predicted from
        ``s_t``, ``γ_0 = discount·(1 - is_terminal)``): ``R_t`` for t < H from
        ``lambda_return(r[:-1], v_slow[:-1], γ[:-1], bootstrap=v_slow[H])``, weights ``w_t = Π_{k<t} γ_k``; the actor
        term of step t uses ``log π(a_t | s_t)``, ``R_t`` and baseline ``v_slow(s_t)``.
        """
        c = self.config
        dynamics = self.rho != 1.0
        grad = torch.is_grad_enabled()
        raws: list[torch.Tensor] = []

        def policy(feat: torch.Tensor) -> torch.Tensor:
            # The actor keeps its graph even where the rollout has none (REINFORCE): its outputs are the ones the
            # loss needs, so they are not computed a second time after the rollout (one MLP pass over H·N states).
            with torch.set_grad_enabled(grad):
                raw = self.actor(feat)
            raws.append(raw)
            return self.actor.dist(raw if dynamics else raw.detach()).rsample()

        # REINFORCE needs no gradient through the imagined states: roll out without the RSSM's backward graph.
        with torch.set_grad_enabled(dynamics and grad):
            states, actions = world_model.rssm.imagine(policy, start.detach(), c.horizon, return_actions=True)
            feat = world_model.rssm.get_feat(states)  # [H+1, N, F]
            reward = world_model.reward(feat).squeeze(-1).float()
            disc = torch.sigmoid(world_model.discount(feat).squeeze(-1).float())
            disc = torch.cat([c.discount * (1.0 - is_terminal.float())[None], disc[1:]], 0)
            slow_value = self.value(feat, slow=True)
            returns = lambda_return(reward[:-1], slow_value[:-1], disc[:-1], slow_value[-1], c.lam,
                                    backend=c.backend)  # [H, N]
        weights = return_weights(disc)[:-1]
        dist = self.actor.dist(torch.stack(raws))
        log_prob = dist.log_prob(actions.detach())
        entropy = dist.entropy()
        scale = self.return_scale(returns)
        actor_loss = actor_objective(log_prob, entropy, returns, slow_value[:-1], weights, self.rho, c.actor_ent,
                                     scale)
        value = self.value(feat[:-1].detach())
        critic_loss = critic_objective(value, returns, weights)
        metrics = {
            "actor/loss": actor_loss,
            "actor/entropy": entropy.mean(),
            "critic/loss": critic_loss,
            "critic/value": value.mean(),
            "imag/return": returns.mean(),
            "imag/reward": reward.mean(),
            "imag/discount": disc.mean(),
        }
        if isinstance(scale, torch.Tensor):
            metrics["actor/return_scale"] = scale
        metrics = {k: v.detach().float() for k, v in metrics.items()}
        return actor_loss, critic_loss, metrics


__all__ = ["ActorCritic", "actor_objective", "critic_objective", "return_weights"]
