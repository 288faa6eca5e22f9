"""Measures environment throughput with random actions: ``python -m dreamer_fast.envs [env ...] [--steps N]``.

Agent steps per second and frames (env steps) per second, at the action repeat of the env's presets."""

from __future__ import annotations

import argparse
import time

import numpy as np

from dreamer_fast.config import Config
from dreamer_fast.envs import make_env


def action_repeat(env_id: str) -> int:
    """The action repeat the presets use for ``env_id``'s kind: 4 for Atari, 2 for DMC, else 1."""
    return {"atari": 4, "dmc": 2, "dmc-proprio": 2}.get(env_id.split("/", 1)[0], 1)


def steps_per_second(env_id: str, steps: int, seed: int = 0) -> float:
    """Agent steps per second of ``env_id`` under uniformly random actions (resets included)."""
    config = Config(env=env_id, action_repeat=action_repeat(env_id))
    env = make_env(config, seed)
    rng = np.random.default_rng(seed)
    eye = np.eye(env.act_space.dim, dtype=np.float32)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        if env.act_space.discrete:
            action = eye[rng.integers(env.act_space.dim)]
        else:
            action = rng.uniform(-1, 1, env.act_space.dim).astype(np.float32)
        if env.step(action)["is_last"]:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("envs", nargs="*", default=["atari/Pong", "gym/CartPole-v1"])
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    for env_id in args.envs:
        rate = steps_per_second(env_id, args.steps)
        print(f"{env_id:28s} {rate:10.0f} agent steps/s  {rate * action_repeat(env_id):10.0f} frames/s "
              f"(action repeat {action_repeat(env_id)})")


if __name__ == "__main__":
    main()
