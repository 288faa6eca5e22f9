"""Greedy evaluation of an agent, and loading one from a checkpoint to act."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamer_fast.agent.agent import Agent
from dreamer_fast.training.checkpoint import CheckpointError, load_agent_state, load_checkpoint
from dreamer_fast.config import Config, config_from_dict
from dreamer_fast.envs import make_env
from dreamer_fast.training.signals import StopSignals


def stack_steps(steps: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}


def evaluate(agent: Agent, env, episodes: int, stop: StopSignals | None = None) -> list[float]:
    """Greedy (mode of the actor) returns of ``episodes`` full episodes (fewer when ``stop`` is requested)."""
    returns = []
    for _ in range(episodes):
        s = env.reset()
        state, total = None, 0.0
        while not s["is_last"]:
            if stop is not None and stop.requested:
                return returns
            obs = stack_steps([{k: s[k] for k in (*env.obs_space, "is_first")}])
            action, state = agent.policy(obs, state, "eval")
            s = env.step(action[0])
            total += float(s["reward"])
        returns.append(total)
    return returns


def load_agent(checkpoint: Path, device: str | None = None) -> tuple[Agent, Config, dict]:
    """The agent of a checkpoint (with the config it was trained with), ready to act."""
    ckpt = load_checkpoint(Path(checkpoint), map_location="cpu")
    if not isinstance(ckpt.get("config"), dict) or "agent" not in ckpt:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r} holds no agent and config (keys: {sorted(ckpt)})")
    values = dict(ckpt["config"])
    if device:
        values["device"] = device
    config = config_from_dict(values)
    if config.threads:  # as the run was trained (with 2 threads on a core another process keeps busy, a CartPole
        torch.set_num_threads(config.threads)  # acting step measured 7x slower than with 1)
    env = make_env(config, seed=config.seed)
    agent = Agent(env.obs_space, env.act_space, config).to(torch.device(config.device))
    env.close()
    load_agent_state(agent, ckpt["agent"], f"checkpoint {str(checkpoint)!r} does not fit the model of its own config")
    agent.eval()
    return agent, config, ckpt
