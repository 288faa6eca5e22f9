"""gymnasium tasks with vector observations (CartPole-v1, Pendulum-v1, any Box-observation env).

Observations are flattened to ``{"vector": (n,) float32}``. ``config.action_repeat`` repeats each action (rewards
summed, stopping early at the end of an episode). ``config.time_limit`` > 0 replaces the env's registered time limit
with one of that many agent steps; 0 keeps the registered one (counted in env steps).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.wrappers import TimeLimit

from dreamer_fast.envs.base import Env

if TYPE_CHECKING:
    from dreamer_fast.config import Config


class ActionRepeat(gymnasium.Wrapper):
    """Repeats each action ``repeat`` times, summing the rewards; stops early when the episode ends."""

    def __init__(self, env: gymnasium.Env, repeat: int) -> None:
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"action repeat must be >= 1, got {repeat}")
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def make_gym(env_id: str, config: Config, seed: int) -> Env:
    """The gymnasium env ``env_id`` (e.g. ``"CartPole-v1"``) with vector observations."""
    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3)
        hint = f"; did you mean one of {close}?" if close else ""
        raise ValueError(f"unknown gymnasium env {'gym/' + env_id!r}{hint}")
    spec = gymnasium.spec(env_id)
    if config.time_limit > 0:  # our limit counts agent steps, outside the action repeat
        spec = dataclasses.replace(spec, max_episode_steps=None)
    env = gymnasium.make(spec)
    space = env.observation_space
    if not isinstance(space, gymnasium.spaces.Box):
        env.close()
        raise ValueError(f"env {'gym/' + env_id!r}: only Box observation spaces are supported, got {space}")
    if config.action_repeat > 1:
        env = ActionRepeat(env, config.action_repeat)
    if config.time_limit > 0:
        env = TimeLimit(env, max_episode_steps=config.time_limit)
    size = int(np.prod(space.shape))
    return Env(env, "vector", (size,), np.dtype(np.float32),
               lambda obs: np.asarray(obs, np.float32).reshape(size), seed=seed, name=f"gym/{env_id}")
