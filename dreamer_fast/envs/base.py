"""The environment interface every task is wrapped into: dict observations with episode flags.

An :class:`Env` wraps one (already preprocessed) gymnasium environment and converts its API to the one the agent
uses (DreamerV2's): ``reset()`` and ``step(action)`` both return a dict holding the observation keys of
``obs_space`` plus ``reward`` (``np.float32``), ``is_first``, ``is_last`` and ``is_terminal`` (``bool``). Actions
are always float32 vectors ``[dim]``: one-hot for discrete spaces, values in ``[-1, 1]`` for continuous ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium
import numpy as np

ObsSpace = dict[str, tuple[tuple[int, ...], np.dtype]]


@dataclass(frozen=True)
class ActionSpace:
    """The agent-side action space: ``discrete`` → one-hot vectors of size ``dim``; else a box ``[-1, 1]^dim``."""

    discrete: bool
    dim: int


class Env:
    """A gymnasium env seen through DreamerV2's interface (see the module docstring).

    Args:
        env: the gymnasium environment, with its preprocessing wrappers already applied. Its action space must
            be ``Discrete`` or a ``Box`` with finite bounds.
        obs_key: the name of the observation in the returned dicts (``"image"`` or ``"vector"``).
        obs_shape, obs_dtype: what ``convert_obs`` returns.
        convert_obs: maps the gymnasium observation to an array of ``obs_shape`` / ``obs_dtype``.
        seed: passed to the first ``reset`` and to the action space.
        name: the env id, for error messages.
    """

    def __init__(self, env: gymnasium.Env, obs_key: str, obs_shape: tuple[int, ...], obs_dtype: np.dtype,
                 convert_obs: Callable[[Any], np.ndarray], seed: int, name: str) -> None:
        self._env = env
        self._obs_key = obs_key
        self._convert_obs = convert_obs
        self._seed: int | None = seed
        self.name = name
        self.obs_space: ObsSpace = {obs_key: (tuple(obs_shape), np.dtype(obs_dtype))}
        space = env.action_space
        if isinstance(space, gymnasium.spaces.Discrete):
            self.act_space = ActionSpace(discrete=True, dim=int(space.n))
            self._act_start = int(space.start)
        elif isinstance(space, gymnasium.spaces.Box):
            self._low = space.low.astype(np.float64)
            self._high = space.high.astype(np.float64)
            if not (np.all(np.isfinite(self._low)) and np.all(np.isfinite(self._high))):
                raise ValueError(f"env {name!r}: continuous actions need finite bounds to rescale [-1, 1] into, "
                                 f"got low={space.low}, high={space.high}")
            self.act_space = ActionSpace(discrete=False, dim=int(np.prod(space.shape)))
        else:
            raise ValueError(f"env {name!r}: action space {space} is neither Discrete nor Box")
        env.action_space.seed(seed)
        self._needs_reset = True

    @property
    def gym_env(self) -> gymnasium.Env:
        """The wrapped gymnasium env (for rendering or inspection)."""
        return self._env

    def reset(self) -> dict[str, Any]:
        """Starts an episode: the first observation, ``reward`` 0, ``is_first`` True, the other flags False."""
        seed, self._seed = self._seed, None  # seed only the first reset; later episodes continue the stream
        obs, _ = self._env.reset(seed=seed)
        self._needs_reset = False
        return self._result(obs, 0.0, is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> dict[str, Any]:
        """Applies ``action`` (float32 ``[dim]``; one-hot or in ``[-1, 1]``) and returns the next step's dict.

        ``is_last`` is True when the episode ended for any reason (termination or time limit), ``is_terminal``
        only when it terminated (the value of the next state is zero). Call ``reset`` after ``is_last``.
        """
        if self._needs_reset:
            raise RuntimeError(f"env {self.name!r}: call reset() before step() (and after an episode's last step)")
        obs, reward, terminated, truncated, _ = self._env.step(self._convert_action(action))
        self._needs_reset = bool(terminated or truncated)
        return self._result(obs, reward, is_first=False, is_last=bool(terminated or truncated),
                            is_terminal=bool(terminated))

    def close(self) -> None:
        self._env.close()

    def _convert_action(self, action: np.ndarray) -> Any:
        action = np.asarray(action)
        if action.shape != (self.act_space.dim,):
            kind = "one-hot vector" if self.act_space.discrete else "vector in [-1, 1]"
            raise ValueError(f"env {self.name!r}: action must be a {kind} of shape ({self.act_space.dim},), "
                             f"got shape {action.shape}")
        if self.act_space.discrete:
            return int(np.argmax(action)) + self._act_start
        unit = np.clip(action.astype(np.float64), -1.0, 1.0)
        scaled = self._low + (unit + 1.0) * 0.5 * (self._high - self._low)
        return scaled.reshape(self._env.action_space.shape).astype(self._env.action_space.dtype)

    def _result(self, obs: Any, reward: float, is_first: bool, is_last: bool, is_terminal: bool) -> dict[str, Any]:
        return {self._obs_key: self._convert_obs(obs), "reward": np.float32(reward), "is_first": is_first,
                "is_last": is_last, "is_terminal": is_terminal}

    def __repr__(self) -> str:
        return f"Env({self.name!r}, obs_space={self.obs_space}, act_space={self.act_space})"
