"""Environments with DreamerV2's preprocessing, behind one dict-based interface (see :class:`Env`).

``make_env(config, seed)`` builds ``config.env``: ``"atari/<Game>"`` (ALE, images ``(1, S, S)`` uint8),
``"gym/<gymnasium id>"`` (vector observations ``(n,)`` float32), ``"dmc/<domain>_<task>"`` (DeepMind Control Suite,
RGB images ``(3, S, S)`` uint8) or ``"dmc-proprio/<domain>_<task>"`` (its state vector ``(n,)`` float32; both need
the ``dmc`` extra, see :mod:`dreamer_fast.envs.dmc`). Every step is a dict with the observation key,
``reward``, ``is_first``, ``is_last`` and ``is_terminal``; actions are float32 ``[dim]`` vectors (one-hot for
discrete action spaces, ``[-1, 1]`` for continuous ones).

Throughput with uniformly random actions, one env in one process (resets included), on a 2-core Intel Xeon
shared with other jobs (load ~1.6), measured with ``python -m dreamer_fast.envs --steps 20000`` (twice;
gymnasium 1.4.0, ale-py 0.12.1, Python 3.11):

    atari/Pong       (action repeat 4, 64×64 grayscale, sticky 0.25):  2,700–2,900 agent steps/s (≈11k frames/s)
    gym/CartPole-v1  (action repeat 1):                               ~112,000 agent steps/s

DeepMind Control (dm-control 1.0.52, MuJoCo 4.0.1, action repeat 2), on an AMD EPYC (Zen 4, 2 vCPUs) otherwise
idle, ``python -m dreamer_fast.envs dmc/walker_walk dmc-proprio/walker_walk --steps 2000``:

    dmc/walker_walk          (64×64 RGB, Mesa software EGL):   54 agent steps/s (109 frames/s; ~18 ms per render)
    dmc-proprio/walker_walk  (24-dim state):                  3,154 agent steps/s (6,308 frames/s)

So one Atari env costs ~0.35 ms per policy step, far below the agent's network time per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dreamer_fast.envs.atari import atari_games, make_atari
from dreamer_fast.envs.base import ActionSpace, Env, ObsSpace
from dreamer_fast.envs.gym import ActionRepeat, make_gym

DMC_KINDS = ("dmc", "dmc-proprio")  # DeepMind Control Suite: pixels, state vector (dreamer_fast.envs.dmc)

if TYPE_CHECKING:
    from dreamer_fast.config import Config


def make_env(config: Config, seed: int) -> Env:
    """The environment ``config.env`` (``"atari/<Game>"``, ``"gym/<id>"``, ``"dmc/<domain>_<task>"`` or
    ``"dmc-proprio/<domain>_<task>"``), seeded with ``seed``.

    Raises ``ValueError`` naming the id when it is unknown, and a ``RuntimeError`` (``RenderingUnavailable``) when a
    pixel DMC task finds no OpenGL backend.
    """
    kind, _, name = config.env.partition("/")
    if kind == "atari" and name:
        return make_atari(name, config, seed)
    if kind == "gym" and name:
        return make_gym(name, config, seed)
    if kind in DMC_KINDS and name:
        from dreamer_fast.envs.dmc import make_dmc  # dm-control is an optional dependency

        return make_dmc(kind, name, config, seed)
    raise ValueError(f"unknown env id {config.env!r}: expected 'atari/<Game>' (e.g. 'atari/Pong'), "
                     f"'gym/<gymnasium id>' (e.g. 'gym/CartPole-v1'), 'dmc/<domain>_<task>' (e.g. 'dmc/walker_walk') "
                     f"or 'dmc-proprio/<domain>_<task>'")


__all__ = ["ActionRepeat", "ActionSpace", "Env", "ObsSpace", "atari_games", "make_env"]
