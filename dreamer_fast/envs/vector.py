"""Several environments stepped together, for collecting with one batched policy step: :func:`make_envs`.

Environment ``i`` of ``n`` is ``make_env(config, seed + SEED_STRIDE * i)``. ``reset()`` starts them all, and
``step(actions)`` (``actions`` float32 ``[n, dim]``) returns one step dict per environment, in the
:class:`~dreamer_fast.envs.base.Env` interface. An environment whose previous step ended its episode (``is_last``)
starts its next episode instead of stepping: its action is ignored and its step has ``is_first`` (gymnasium's
"next step" autoreset), so the steps of every environment form whole episodes, one after another.

- :class:`EnvList` steps the environments one after the other in the calling process.
- :class:`AsyncEnvs` runs each environment in a process of its own through ``gymnasium.vector.AsyncVectorEnv``
  (observations come back through shared memory), so the environments step in parallel on the CPU's cores; a step
  costs an interprocess round trip (~0.1 ms), which pays for Atari's ~0.35 ms steps but not for CartPole's ~9 µs.

Both produce the same steps for the same seeds and actions.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode

from dreamer_fast.envs import make_env
from dreamer_fast.envs.base import Env

if TYPE_CHECKING:
    from dreamer_fast.config import Config

SEED_STRIDE = 1000  # environment i is seeded with seed + SEED_STRIDE * i


class EnvList:
    """``envs`` stepped one after the other in this process."""

    def __init__(self, envs: list[Env]) -> None:
        self.envs = envs
        self.num_envs = len(envs)
        self.obs_space, self.act_space = envs[0].obs_space, envs[0].act_space
        self._last = [False] * self.num_envs

    def reset(self) -> list[dict[str, Any]]:
        self._last = [False] * self.num_envs
        return [env.reset() for env in self.envs]

    def step(self, actions: np.ndarray) -> list[dict[str, Any]]:
        out = [env.reset() if last else env.step(action) for env, last, action in zip(self.envs, self._last, actions)]
        self._last = [s["is_last"] for s in out]
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


class _GymView(gymnasium.Env):
    """An :class:`Env` as a gymnasium env, for AsyncVectorEnv's workers: the observation is the converted one, the
    action the float32 vector ``Env.step`` takes, ``is_terminal`` travels as ``terminated`` and an ``is_last`` without
    it as ``truncated``."""

    def __init__(self, config: Config, seed: int) -> None:
        self.env = make_env(config, seed)
        self.obs_space, self.act_space = self.env.obs_space, self.env.act_space
        ((self.key, (shape, dtype)),) = self.obs_space.items()
        low, high = (np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "iu" else (-np.inf, np.inf)
        self.observation_space = gymnasium.spaces.Box(low, high, shape, dtype)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (self.act_space.dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return self.env.reset()[self.key], {}  # the Env seeds its own first reset

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        s = self.env.step(action)
        return s[self.key], float(s["reward"]), s["is_terminal"], s["is_last"] and not s["is_terminal"], {}

    def close(self) -> None:
        self.env.close()


class AsyncEnvs:
    """The environments of ``config`` with ``seeds``, each in its own process (``gymnasium.vector.AsyncVectorEnv``).

    The processes are forked where the platform can (they start at once and share the parent's imported modules);
    create them before the first multithreaded torch op of the process."""

    def __init__(self, config: Config, seeds: list[int]) -> None:
        context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        fns = [functools.partial(_GymView, config, seed) for seed in seeds]
        self._vec = AsyncVectorEnv(fns, context=context, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.num_envs = len(seeds)
        self.obs_space, self.act_space = self._vec.get_attr("obs_space")[0], self._vec.get_attr("act_space")[0]
        self._key = next(iter(self.obs_space))
        self._last = np.zeros(self.num_envs, bool)

    def reset(self) -> list[dict[str, Any]]:
        obs, _ = self._vec.reset()
        self._last[:] = False
        return [{self._key: o, "reward": np.float32(0.0), "is_first": True, "is_last": False, "is_terminal": False}
                for o in obs]

    def step(self, actions: np.ndarray) -> list[dict[str, Any]]:
        obs, reward, terminated, truncated, _ = self._vec.step(np.asarray(actions, np.float32))
        first, self._last = self._last, terminated | truncated  # autoreset: the ended ones restarted this step
        return [{self._key: obs[i], "reward": np.float32(reward[i]), "is_first": bool(first[i]),
                 "is_last": bool(self._last[i]), "is_terminal": bool(terminated[i])} for i in range(self.num_envs)]

    def close(self) -> None:
        self._vec.close()


def make_envs(config: Config, seed: int) -> EnvList | AsyncEnvs:
    """``config.num_envs`` environments: an :class:`EnvList` for one environment or ``vector_env`` "sync", an
    :class:`AsyncEnvs` for "async"; "auto" picks async for Atari, sync for gym tasks (steps cheaper than the round
    trip to a process)."""
    seeds = [seed + SEED_STRIDE * i for i in range(config.num_envs)]
    mode = config.vector_env
    if mode == "auto":
        mode = "async" if config.env.startswith("atari/") else "sync"
    if config.num_envs == 1 or mode == "sync":
        return EnvList([make_env(config, s) for s in seeds])
    return AsyncEnvs(config, seeds)


__all__ = ["AsyncEnvs", "EnvList", "SEED_STRIDE", "make_envs"]
