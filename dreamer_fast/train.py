"""The training loop: collect with the policy, store whole episodes, train every ``train_every`` steps, log, checkpoint.

Everything a run leaves is under its ``logdir``:

    config.yaml        the resolved configuration (``--resume`` reads it back)
    checkpoint.pt      model, optimisers, RNG states and step counters, written atomically (temp file + rename)
    best.pt            with ``eval_every``: the agent at its best greedy evaluation (``dreamer-fast eval`` loads it)
    replay/            the replay buffer as episode chunks (.npz); resume reloads them, so nothing is lost
    metrics.csv        every logged metric (step, name, value), also in TensorBoard under tb/
    curve.png          the learning curve (episode return vs env steps), losses.png the training losses
    openloop_*.gif     open-loop predictions (Atari): real frames | imagined frames | error
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from dreamer_fast._memory import keep_freed_memory
from dreamer_fast.agent import Agent
from dreamer_fast.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dreamer_fast.config import Config, config_from_dict
from dreamer_fast.cpu import resolve_bf16
from dreamer_fast.envs import make_env
from dreamer_fast.logger import Logger, plot
from dreamer_fast.replay import Replay

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the agent at its best periodic evaluation (config.eval_every), loadable as a checkpoint


def resolve_resume_config(logdir: Path, overrides: dict[str, Any]) -> Config:
    """The config a resumed run continues with: the saved one, plus the overrides given now (e.g. more steps)."""
    path = logdir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist (nothing to resume in {logdir})")
    values = yaml.safe_load(path.read_text())
    values.update(overrides)
    return config_from_dict(values)


def _setup(config: Config) -> torch.device:
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # ~20% of an Atari update otherwise goes to page faults (dreamer_fast/_memory.py)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config `device` is {config.device!r} but torch sees no CUDA GPU")
    return device


class _Episodes:
    """Per-environment running return and length; the finished episodes' statistics since the last log."""

    def __init__(self, n: int) -> None:
        self.ret = np.zeros(n)
        self.length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def add(self, i: int, step: dict) -> None:
        if step["is_first"]:
            self.ret[i], self.length[i] = 0.0, 0
            return
        self.ret[i] += float(step["reward"])
        self.length[i] += 1
        if step["is_last"]:
            self.finished.append((float(self.ret[i]), int(self.length[i])))


def _stack(steps: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}


def train(config: Config, logdir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs (or, with ``resume``, continues) training until ``config.steps`` policy steps; returns a summary."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = logdir / CHECKPOINT
    if not resume and ckpt_path.exists():
        raise ValueError(f"{logdir} already holds a run ({ckpt_path}); pass --resume to continue it or pick another "
                         "--logdir")
    device = _setup(config)
    _, bf16_reason = resolve_bf16(config.bf16, device)
    print(f"dreamer-fast: {bf16_reason}")
    (logdir / "config.yaml").write_text(f"# {bf16_reason}\n" + yaml.safe_dump(config.to_dict(), sort_keys=False))

    envs = [make_env(config, seed=config.seed + 1000 * i) for i in range(config.num_envs)]
    obs_space, act_space = envs[0].obs_space, envs[0].act_space
    agent = Agent(obs_space, act_space, config).to(device)
    # Steps become sampleable when their chunk is written: at an episode's end or every 4 sequence lengths, so that
    # long Atari episodes feed training while they run.
    replay = Replay(logdir / "replay", config.replay_capacity, seed=config.seed, chunk=4 * config.batch_length)
    logger = Logger(logdir)

    step, updates, episodes = 0, 0, 0
    best: dict[str, Any] = {}  # the best periodic evaluation so far: {"step", "return"}
    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        agent.load_checkpoint_state(ckpt["agent"])
        step, updates, episodes = ckpt["step"], ckpt["updates"], ckpt["episodes"]
        best = dict(ckpt.get("best_eval", {}))
        set_rng_state(ckpt["rng"])
        replay.set_rng_state(ckpt["replay_rng"])
        print(f"dreamer-fast: resumed {logdir} at step {step:,} ({updates:,} updates, {len(replay):,} replay steps)")

    def checkpoint() -> None:
        replay.save()
        save_checkpoint(ckpt_path, {
            "config": config.to_dict(), "agent": agent.checkpoint_state(), "step": step, "updates": updates,
            "episodes": episodes, "rng": rng_state(), "replay_rng": replay.rng_state(), "best_eval": best,
        })

    eval_env = make_env(config, seed=config.seed + 999_983) if config.eval_every else None

    def periodic_eval() -> None:
        """Greedy returns on the evaluation env; the agent is written to best.pt when their mean is the best yet."""
        returns = evaluate(agent, eval_env, config.eval_episodes)
        mean = float(np.mean(returns))
        logger.scalars({"eval/return": mean, "eval/return_min": float(np.min(returns))}, step)
        if not best or mean > best["return"]:
            best.update(step=step, updates=updates, episodes=episodes, **{"return": mean})
            save_checkpoint(logdir / BEST, {"config": config.to_dict(), "agent": agent.checkpoint_state(), **best})
        bar.set_postfix_str(f"eval {mean:.1f} (best {best['return']:.1f} at {best['step']:,})", refresh=False)

    zero_action = np.zeros(act_space.dim, np.float32)
    current = []
    for env in envs:
        first = env.reset()
        first["action"] = zero_action
        current.append(first)
    tracker = _Episodes(len(envs))
    for i, s in enumerate(current):
        replay.add(s, worker=i)
        tracker.add(i, s)

    policy_state = None
    metrics: dict[str, list[float]] = defaultdict(list)
    last_log_step, last_log_time, last_log_updates = step, time.perf_counter(), updates
    next_train = step + config.train_every
    next_log = (step // config.log_every + 1) * config.log_every
    next_ckpt = (step // config.checkpoint_every + 1) * config.checkpoint_every
    next_video = (step // config.video_every + 1) * config.video_every if config.video_every else math.inf
    next_eval = (step // config.eval_every + 1) * config.eval_every if config.eval_every else math.inf
    interrupted = False
    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True, disable=not progress,
               desc=f"{config.env}")
    def log_now() -> None:
        """Means of the training metrics since the last log, throughput, replay size."""
        nonlocal last_log_step, last_log_time, last_log_updates
        now = time.perf_counter()
        elapsed = max(now - last_log_time, 1e-9)
        summary = {k: float(np.mean(v)) for k, v in metrics.items()}
        summary["perf/env_steps_per_s"] = (step - last_log_step) / elapsed
        summary["perf/updates_per_s"] = (updates - last_log_updates) / elapsed
        summary["replay/steps"] = len(replay)
        summary["train/updates"] = updates
        logger.scalars(summary, step)
        logger.flush()
        metrics.clear()
        last_log_step, last_log_time, last_log_updates = step, now, updates
        bar.set_postfix_str(
            f"{summary['perf/env_steps_per_s']:.0f} steps/s {summary['perf/updates_per_s']:.2f} upd/s", refresh=False)

    with _stop_signals():
        try:
            while step < config.steps:
                obs = _stack([{k: s[k] for k in (*obs_space, "is_first")} for s in current])
                mode = "random" if step < config.prefill else "explore"
                actions, policy_state = agent.policy(obs, policy_state, mode)
                for i, env in enumerate(envs):
                    s = env.reset() if current[i]["is_last"] else env.step(actions[i])
                    s["action"] = zero_action if s["is_first"] else actions[i].astype(np.float32)
                    replay.add(s, worker=i)
                    tracker.add(i, s)
                    current[i] = s
                step += len(envs)
                bar.update(len(envs))
                for ret, length in tracker.finished:
                    episodes += 1
                    logger.scalars({"episode/return": ret, "episode/length": length}, step)
                    bar.set_postfix_str(f"return {ret:.1f}", refresh=False)
                tracker.finished.clear()

                if step >= config.prefill and len(replay) >= config.batch_length and step >= next_train:
                    next_train = step + config.train_every
                    for _ in range(config.train_steps):
                        batch = replay.sample(config.batch_size, config.batch_length, config.replay_ends)
                        out = agent.train_step(batch)
                        updates += 1
                        for k, v in out.items():
                            metrics[k].append(v)

                if step >= next_log:
                    next_log += config.log_every
                    log_now()
                if step >= next_video and updates:
                    next_video += config.video_every
                    _open_loop(agent, replay, logger, config, step)
                if step >= next_eval and updates:
                    next_eval += config.eval_every
                    periodic_eval()
                if step >= next_ckpt:
                    next_ckpt += config.checkpoint_every
                    checkpoint()
        except KeyboardInterrupt:
            interrupted = True
            print(f"\ndreamer-fast: interrupted at step {step:,}; saving a checkpoint to {ckpt_path}")
        finally:
            bar.close()
    if step > last_log_step:  # what happened since the last periodic log
        log_now()
    checkpoint()
    if not interrupted and updates:
        _open_loop(agent, replay, logger, config, step)
    result: dict[str, Any] = {"step": step, "updates": updates, "episodes": episodes, "interrupted": interrupted,
                              "logdir": str(logdir)}
    if not interrupted and config.eval_episodes:
        returns = evaluate(agent, envs[0], config.eval_episodes)
        logger.scalars({"eval/return": float(np.mean(returns))}, step)
        result["eval_returns"] = returns
    if best:
        result["best_eval"] = dict(best)
    logger.close()
    for env in envs + ([eval_env] if eval_env is not None else []):
        env.close()
    result["plots"] = [str(p) for p in plot(logdir)]
    return result


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """While training, SIGINT and SIGTERM stop it as Ctrl-C does (checkpoint, plots, exit status 130).

    Also when the process was started in the background (``cmd &``) by a non-interactive shell, which starts it with
    SIGINT ignored: Python then inherits ``SIG_IGN`` and ``kill -INT`` would do nothing. The previous handlers are
    restored afterwards. Only in the main thread (where Python delivers signals).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _open_loop(agent: Agent, replay: Replay, logger: Logger, config: Config, step: int) -> None:
    """Real vs imagined frames of a replayed sequence (image observations only)."""
    if len(replay) < config.batch_length:
        return
    batch = replay.sample(min(4, config.batch_size), config.batch_length)
    with torch.no_grad():
        video = agent.wm.open_loop(agent.wm.preprocess(batch))
    if video is not None:
        logger.gif("openloop", video, step)


def evaluate(agent: Agent, env, episodes: int) -> list[float]:
    """Greedy (mode of the actor) returns of ``episodes`` full episodes."""
    returns = []
    for _ in range(episodes):
        s = env.reset()
        state, total = None, 0.0
        while not s["is_last"]:
            obs = _stack([{k: s[k] for k in (*env.obs_space, "is_first")}])
            action, state = agent.policy(obs, state, "eval")
            s = env.step(action[0])
            total += float(s["reward"])
        returns.append(total)
    return returns


def load_agent(checkpoint: Path, device: str | None = None) -> tuple[Agent, Config, dict]:
    """The agent of a checkpoint (with the config it was trained with), ready to act."""
    ckpt = load_checkpoint(Path(checkpoint), map_location="cpu")
    values = dict(ckpt["config"])
    if device:
        values["device"] = device
    config = config_from_dict(values)
    if config.threads:  # as the run was trained (with 2 threads on a core another process keeps busy, a CartPole
        torch.set_num_threads(config.threads)  # acting step measured 7x slower than with 1)
    env = make_env(config, seed=config.seed)
    agent = Agent(env.obs_space, env.act_space, config).to(torch.device(config.device))
    env.close()
    agent.load_checkpoint_state(ckpt["agent"])
    agent.eval()
    return agent, config, ckpt

