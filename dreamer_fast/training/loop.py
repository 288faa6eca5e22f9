"""The training loop: collect with the policy, store whole episodes, train every ``train_every`` steps, log, checkpoint.

Everything a run leaves is under its ``logdir``:

    config.yaml        the resolved configuration (``--resume`` reads it back)
    checkpoint.pt      model, optimisers, RNG states and step counters, written atomically (temp file + rename)
    best.pt            with ``eval_every``: the agent at its best greedy evaluation (``dreamer-fast eval`` loads it);
                       staged as best.pt.staged and renamed once checkpoint.pt records that evaluation
    replay/            the replay buffer as episode chunks (.npz); resume reloads them, so nothing is lost
    metrics.csv        every logged metric (step, name, value) in step order, also in TensorBoard under tb/
    curve.png          the learning curve (episode return vs env steps), losses.png the training losses
    openloop_*.gif     open-loop predictions (Atari): real frames | imagined frames | error

The processes of the run are a collaborator, :class:`~dreamer_fast.training.distributed.Ranks` (one process) or
:class:`~dreamer_fast.training.distributed.Dist` (a rank of a torchrun job): the loop calls its collectives and
main-rank helpers the same way on either.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from dreamer_fast.training.atomic import atomic_write
from dreamer_fast._memory import keep_freed_memory
from dreamer_fast.agent.agent import Agent
from dreamer_fast.training.checkpoint import rng_state, save_checkpoint, set_rng_state
from dreamer_fast.config import Config
from dreamer_fast.training.distributed import Ranks, setup, wrap_agent
from dreamer_fast.envs import make_env
from dreamer_fast.envs.vector import EnvList, make_envs
from dreamer_fast.training.evaluation import evaluate, stack_steps
from dreamer_fast.training.logger import Logger, plot
from dreamer_fast.training.replay import Replay
from dreamer_fast.training.replay_chunks import step_spec
from dreamer_fast.training.resume import BEST, BEST_STAGED, CHECKPOINT, commit_resume, plan_start, prepare_resume
from dreamer_fast.training.run_stats import EpisodeStats, MetricMeans
from dreamer_fast.training.signals import StopSignals


class TrainingDiverged(ValueError):
    """``max_nonfinite_updates`` consecutive updates had a non-finite loss or gradient norm."""


def _setup(config: Config, seed: int) -> torch.device:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # ~20% of an Atari update otherwise goes to page faults (dreamer_fast/_memory.py)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config `device` is {config.device!r} but torch sees no CUDA GPU")
    return device


def _write_config(logdir: Path, config: Config, note: str) -> None:
    """config.yaml: `note` (what the config resolved to on this run's hardware) as a comment, then the config."""
    text = (f"# {note}\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)).encode()
    atomic_write(logdir / "config.yaml", lambda f: f.write(text))


def _parameters_finite(agent: Agent) -> bool:
    return bool(torch.stack([torch.isfinite(p).all() for p in agent.parameters()]).all())


def train(config: Config, logdir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs (or, with ``resume``, continues) training until ``config.steps`` policy steps; returns a summary.

    SIGINT and SIGTERM stop it at the next step boundary (checkpoint, exit status 130 from the command). With
    ``resume``, nothing in ``logdir`` changes until the checkpoint, the replay and metrics.csv have been read and
    checked (``dreamer_fast/training/resume.py``). ``TrainingDiverged`` when ``config.max_nonfinite_updates`` consecutive
    updates were non-finite (no checkpoint is written then).
    """
    logdir = Path(logdir)
    ranks = setup(config.device)  # one process, or a rank of a torchrun job (dreamer_fast/training/distributed.py)
    try:
        resume = ranks.decide(lambda: plan_start(logdir, config, resume))
        with StopSignals() as stop:
            result = _Run(config, logdir, resume, progress, stop, ranks).run()
    except RuntimeError as error:
        raise ranks.failed(error) from None  # several ranks: a collective inside DDP's backward failed
    ranks.close()
    result["rank"] = ranks.rank
    return result


class _Run:
    """One training process: builds (or restores) everything, then collects, trains, logs and checkpoints."""

    def __init__(self, config: Config, logdir: Path, resume: bool, progress: bool, stop: StopSignals,
                 ranks: Ranks | None = None) -> None:
        self.config, self.logdir, self.stop, self.ckpt_path = config, logdir, stop, logdir / CHECKPOINT
        self.ranks = r = ranks or Ranks()
        seed = r.seed(config.seed)  # each rank collects and samples with its own seeds
        device = _setup(config, seed)
        self.envs = make_envs(config, seed)  # before the agent: worker processes fork before torch starts threads
        self.obs_space, self.act_space = self.envs.obs_space, self.envs.act_space
        self.agent = Agent(self.obs_space, self.act_space, r.rank_config(config)).to(device)
        r.print(f"dreamer-fast: {self.agent.bf16_reason}")
        self.eval_env = make_env(config, seed=seed + 999_983) if config.eval_every else None  # periodic evaluations
        spec = step_spec(self.obs_space, self.act_space.dim)
        restored, error = None, None
        try:
            restored = prepare_resume(logdir, config, self.agent, spec, r.rank, r.world) if resume else None
        except (ValueError, OSError) as e:
            error = e
        r.agree(error)  # every rank's checks passed: from here on files change
        if restored is not None:
            r.on_main(commit_resume, logdir, restored)
        r.on_main(_write_config, logdir, config, self.agent.bf16_reason)
        # Steps become sampleable when their chunk is written: at an episode's end or every 4 sequence lengths, so
        # that long Atari episodes feed training while they run.
        self.replay = Replay(r.replay_dir(logdir), config.replay_capacity, seed=seed, chunk=4 * config.batch_length,
                             spec=spec, plan=restored.replay if restored else None, keep_evicted_files=True)
        self.logger = r.logger(logdir, purge_step=restored.step + 1 if restored else None)
        self.ended: list[tuple[int, float, int]] = []  # (step, return, length) of episodes not logged yet
        self.step = self.updates = self.episodes = self.nonfinite = self.streak = 0
        self.best: dict[str, Any] = {}  # the best periodic evaluation so far: {"step", "return", ...}
        if restored is not None:
            self._restore(restored.checkpoint)
        self.metrics = MetricMeans()
        self.last_log = (self.step, time.perf_counter(), self.updates)  # step, time and updates of the last log
        wrap_agent(self.agent, r)  # DDP on several ranks (after the restore: rank 0's parameters are broadcast)
        self.bar = tqdm(total=config.steps, initial=self.step, unit="step", dynamic_ncols=True,
                        disable=not (progress and r.main), desc=f"{config.env}")

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.step, self.updates = ckpt["step"], ckpt["updates"]
        self.nonfinite = int(ckpt.get("nonfinite_updates", 0))
        self.best = dict(ckpt.get("best_eval", {}))
        own = ckpt.get("ranks", [ckpt])[self.ranks.rank]  # each rank's RNGs and episode count
        self.episodes = own["episodes"]
        set_rng_state(own["rng"])
        self.replay.set_rng_state(own["replay_rng"])
        c = self.config  # load_state_dict brought back the saved optimiser settings; the config's apply
        for opt, lr in ((self.agent.model_opt, c.model_lr), (self.agent.actor_opt, c.actor_lr),
                        (self.agent.critic_opt, c.critic_lr)):
            for group in opt.param_groups:
                group.update(lr=lr, eps=c.opt_eps, weight_decay=c.weight_decay)
        self.ranks.print(f"dreamer-fast: resumed {self.logdir} at step {self.step:,} ({self.updates:,} updates, "
                         f"{len(self.replay):,} replay steps)")

    def run(self) -> dict[str, Any]:
        try:
            interrupted = self._loop()
            if not interrupted and self.config.eval_episodes:
                returns = self._final_evaluation()
                interrupted = returns is None
                if not interrupted:
                    self.logger.scalars({"eval/return": float(np.mean(returns))}, self.step)
            self.checkpoint()
            if not interrupted and self.updates:
                self.ranks.on_main(_open_loop, self.agent, self.replay, self.logger, self.config, self.step)
        finally:
            self.bar.close()
            self.logger.close()
            for env in [self.envs] + ([self.eval_env] if self.eval_env is not None else []):
                env.close()
        if interrupted:
            print(f"dreamer-fast: interrupted at step {self.step:,}; checkpoint in {self.ckpt_path}")
        result: dict[str, Any] = {"step": self.step, "updates": self.updates,
                                  "episodes": sum(self.ranks.concat([self.episodes])),
                                  "interrupted": interrupted, "logdir": str(self.logdir)}
        if not interrupted and self.config.eval_episodes:
            result["eval_returns"] = returns
        if self.best:
            result["best_eval"] = dict(self.best)
        result["plots"] = [str(p) for p in self.ranks.on_main(plot, self.logdir) or []]
        return result

    def _stopping(self) -> bool:
        """A signal asked to stop (on any rank: all ranks stop at the same step)."""
        return self.ranks.any(self.stop.requested)

    def _final_evaluation(self) -> list[float] | None:
        """The evaluation at the end of training: on the first training env when it runs in this process, else on an
        env of its own (the periodic evaluations' env, or a new one with its seed)."""
        if isinstance(self.envs, EnvList):
            return self._evaluate(self.envs.envs[0])
        if self.eval_env is None:
            self.eval_env = make_env(self.config, seed=self.ranks.seed(self.config.seed) + 999_983)
        return self._evaluate(self.eval_env)

    def _evaluate(self, env: Any) -> list[float] | None:
        """``eval_episodes`` greedy returns on ``env`` from every rank (the episodes that ended before are logged
        first, so that metrics.csv stays in step order); None when a signal stopped the evaluation."""
        returns = evaluate(self.agent, env, self.config.eval_episodes, self.stop)
        stopping = self._stopping()
        self._log_episodes()
        returns = self.ranks.concat(returns)
        return None if stopping else returns

    def _log_episodes(self) -> None:
        """Logs every rank's episodes that ended since the last call, in step order."""
        for step, ret, length in sorted(self.ranks.concat(self.ended)):
            self.logger.scalars({"episode/return": ret, "episode/length": length}, step)
        self.ended.clear()

    def _loop(self) -> bool:
        """Collects and trains until ``config.steps``; True when a signal stopped it first."""
        c = self.config
        zero_action = np.zeros(self.act_space.dim, np.float32)
        current = self.envs.reset()
        tracker = EpisodeStats(self.envs.num_envs)
        for i, s in enumerate(current):
            s["action"] = zero_action
            self.replay.add(s, worker=i)  # each env's steps go to its own chunks: a stored episode is one env's
            tracker.add(i, s)
        policy_state = None
        self.last_log = (self.step, time.perf_counter(), self.updates)
        world = self.ranks.world  # steps count every rank's; train_every each rank's own
        increment, stride = self.envs.num_envs * world, c.train_every * world  # steps per loop, per training round
        next_train = self.step + stride
        next_log = (self.step // c.log_every + 1) * c.log_every
        next_ckpt = (self.step // c.checkpoint_every + 1) * c.checkpoint_every
        next_video = (self.step // c.video_every + 1) * c.video_every if c.video_every else math.inf
        next_eval = (self.step // c.eval_every + 1) * c.eval_every if c.eval_every else math.inf
        while self.step < c.steps and not self._stopping():
            obs = stack_steps([{k: s[k] for k in (*self.obs_space, "is_first")} for s in current])
            mode = "random" if self.step < c.prefill else "explore"
            actions, policy_state = self.agent.policy(obs, policy_state, mode)  # rows with is_first restart
            current = self.envs.step(actions)  # an env whose episode ended starts the next one instead
            for i, s in enumerate(current):
                s["action"] = zero_action if s["is_first"] else actions[i].astype(np.float32)
                self.replay.add(s, worker=i)
                tracker.add(i, s)
            self.step += increment
            self.bar.update(increment)
            for ret, length in tracker.finished:
                self.episodes += 1
                self.ended.append((self.step, ret, length))  # logged with every rank's at the next log
                self.bar.set_postfix_str(f"return {ret:.1f}", refresh=False)
            tracker.finished.clear()

            if (self.step >= c.prefill and self.step >= next_train
                    and self.ranks.min(len(self.replay)) >= c.batch_length):  # every rank can sample
                if self.step - next_train >= increment:  # it waited for prefill or replay: the count starts here
                    next_train = self.step
                while self.step >= next_train:  # one round per `stride` steps, also when a loop adds several
                    next_train += stride
                    self._train_round()
            if self.step >= next_log:
                next_log += c.log_every
                self.log_now()
            if self.step >= next_video and self.updates:
                next_video += c.video_every
                self.ranks.on_main(_open_loop, self.agent, self.replay, self.logger, c, self.step)
            if self.step >= next_eval and self.updates:
                next_eval += c.eval_every
                self.periodic_eval()
            if self.step >= next_ckpt:
                next_ckpt += c.checkpoint_every
                self.checkpoint()
        if self.step > self.last_log[0]:  # what happened since the last periodic log
            self.log_now()
        return self._stopping()

    def _train_round(self) -> None:
        """``train_steps`` updates; a non-finite one was skipped by the agent and counts towards the stop."""
        c = self.config
        for _ in range(c.train_steps):
            batch = self.replay.sample(c.batch_size, c.batch_length, c.replay_ends)
            out = self.agent.train_step(batch)
            self.updates += 1
            skipped = bool(out.pop("train/nonfinite"))  # on CUDA: one small copy per update, after the update
            self.nonfinite += int(skipped)
            self.streak = self.streak + 1 if skipped else 0
            self.metrics.add(out)
            if c.max_nonfinite_updates and self.streak >= c.max_nonfinite_updates:
                self._diverged()

    def _diverged(self) -> None:
        self.log_now()
        good = f"{self.ckpt_path} keeps the last good state" if self.ckpt_path.exists() else "no checkpoint written"
        raise TrainingDiverged(
            f"training diverged at step {self.step:,}: {self.streak} consecutive updates had a non-finite loss or "
            f"gradient norm (skipped); stopped, {good}; lower the learning rates or raise `max_nonfinite_updates`")

    def log_now(self) -> None:
        """Means of the training metrics since the last log, throughput, replay size."""
        last_step, last_time, last_updates = self.last_log
        now = time.perf_counter()
        elapsed = max(now - last_time, 1e-9)
        self._log_episodes()
        parts = self.ranks.concat([(self.metrics.means(), len(self.replay))])
        keys = dict.fromkeys(k for s, _ in parts for k in s)  # the ranks' means of the training metrics
        summary = {k: float(np.mean([s[k] for s, _ in parts if k in s])) for k in keys}
        replay_steps = sum(n for _, n in parts)
        summary["perf/env_steps_per_s"] = (self.step - last_step) / elapsed
        summary["perf/updates_per_s"] = (self.updates - last_updates) / elapsed
        summary["replay/steps"] = replay_steps
        summary["train/updates"] = self.updates
        summary["train/nonfinite_updates"] = self.nonfinite
        self.logger.scalars(summary, self.step)
        self.logger.flush()
        self.metrics.clear()
        self.last_log = (self.step, now, self.updates)
        self.bar.set_postfix_str(
            f"{summary['perf/env_steps_per_s']:.0f} steps/s {summary['perf/updates_per_s']:.2f} upd/s", refresh=False)

    def periodic_eval(self) -> None:
        """Greedy returns on the evaluation env; when their mean is the best yet, the agent is staged for best.pt (the
        next checkpoint records it and renames it to best.pt)."""
        returns = self._evaluate(self.eval_env)
        if returns is None:
            return
        mean = float(np.mean(returns))
        self.logger.scalars({"eval/return": mean, "eval/return_min": float(np.min(returns))}, self.step)
        best = self.best
        if not best or mean > best["return"]:
            best.update(step=self.step, updates=self.updates, episodes=self.episodes, **{"return": mean})
            self.ranks.on_main(save_checkpoint, self.logdir / BEST_STAGED,
                               {"config": self.config.to_dict(), "agent": self.agent.checkpoint_state(), **best})
        self.bar.set_postfix_str(f"eval {mean:.1f} (best {best['return']:.1f} at {best['step']:,})", refresh=False)

    def checkpoint(self) -> None:
        """Writes checkpoint.pt with the replay's chunk range and metrics.csv's size, so that resume can bring both
        back to it. Not while updates are non-finite or a parameter is not finite: the last good one stays."""
        if self.streak or not _parameters_finite(self.agent):
            print(f"dreamer-fast: warning: no checkpoint at step {self.step:,}: the model is not finite "
                  f"({self.streak} non-finite updates in a row); {self.ckpt_path} keeps the last good state",
                  file=sys.stderr)
            return
        self.replay.save()
        self._log_episodes()  # the episodes up to the checkpoint's step are in the metrics.csv size it records
        own = {"rng": rng_state(), "replay_rng": self.replay.rng_state(), "replay": self.replay.checkpoint_state(),
               "episodes": self.episodes}
        self.ranks.on_main(self._commit, self.ranks.concat([own]))  # rank 0 writes every rank's state
        self.ranks.barrier()  # every rank keeps its evicted chunks until the checkpoint no longer counts them
        self.replay.release_evicted()

    def _commit(self, ranks: list[dict[str, Any]]) -> None:
        """checkpoint.pt, then the best.pt it records: a kill between the two leaves best.pt.staged, which resume
        renames (``dreamer_fast/training/resume.py``), so best.pt is never ahead of the checkpoint's record."""
        own = ranks[0]
        save_checkpoint(self.ckpt_path, {
            "config": self.config.to_dict(), "agent": self.agent.checkpoint_state(), "step": self.step,
            "updates": self.updates, "episodes": sum(r["episodes"] for r in ranks), "rng": own["rng"],
            "replay_rng": own["replay_rng"], "best_eval": self.best, "replay": own["replay"],
            "metrics_bytes": self.logger.csv_bytes(), "nonfinite_updates": self.nonfinite,
            "world_size": self.ranks.world, "ranks": ranks,
        })
        staged = self.logdir / BEST_STAGED
        if staged.exists():
            os.replace(staged, self.logdir / BEST)


def _open_loop(agent: Agent, replay: Replay, logger: Logger, config: Config, step: int) -> None:
    """Real vs imagined frames of a replayed sequence (image observations only)."""
    if len(replay) < config.batch_length:
        return
    batch = replay.sample(min(4, config.batch_size), config.batch_length)
    with torch.no_grad():
        video = agent.wm.open_loop(agent.wm.preprocess(batch))
    if video is not None:
        logger.gif("openloop", video, step)
