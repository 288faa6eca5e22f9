"""Atari through ale-py with DreamerV2's protocol.

ALE v5 at ``frameskip=1`` with sticky actions (``config.sticky_actions``, 0.25) and the full 18-action space,
then gymnasium's ``AtariPreprocessing``: up to ``config.noop_max`` no-ops at reset, ``config.action_repeat``
frames per agent step with the max over the last two, grayscale, ``config.image_size``² resize, no life-loss
termination. A ``TimeLimit`` of ``config.time_limit`` agent steps (27,000 = 108k frames) truncates episodes;
ALE's own limit (108k frames) stays underneath.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

import ale_py
import gymnasium
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, TimeLimit

from dreamer_fast.envs.base import Env

if TYPE_CHECKING:
    from dreamer_fast.config import Config

gymnasium.register_envs(ale_py)


def atari_games() -> list[str]:
    """The ALE game names ``make_env`` accepts after ``atari/`` (``Pong``, ``MsPacman``, ...)."""
    return sorted(k[len("ALE/"):-len("-v5")] for k in gymnasium.registry if k.startswith("ALE/") and k.endswith("-v5"))


def make_atari(game: str, config: Config, seed: int) -> Env:
    """The Atari game ``game`` (e.g. ``"Pong"``): observations ``{"image": (1, S, S) uint8}``, 18 actions."""
    games = atari_games()
    if game not in games:
        close = difflib.get_close_matches(game, games, n=3) or games[:5]
        raise ValueError(f"unknown Atari game {'atari/' + game!r}; did you mean one of {close}? "
                         f"({len(games)} games, e.g. Pong, Breakout, MsPacman, SpaceInvaders)")
    env = gymnasium.make(f"ALE/{game}-v5", frameskip=1, repeat_action_probability=config.sticky_actions,
                         full_action_space=True)
    env = AtariPreprocessing(env, noop_max=config.noop_max, frame_skip=config.action_repeat,
                             screen_size=config.image_size, terminal_on_life_loss=False, grayscale_obs=True,
                             scale_obs=False)
    if config.time_limit > 0:
        env = TimeLimit(env, max_episode_steps=config.time_limit)
    size = config.image_size
    return Env(env, "image", (1, size, size), np.dtype(np.uint8), lambda obs: np.asarray(obs, np.uint8)[None],
               seed=seed, name=f"atari/{game}")
