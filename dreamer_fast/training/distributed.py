"""Training on several processes: torch.distributed with DistributedDataParallel, started by ``torchrun``.

    torchrun --standalone --nproc_per_node N -m dreamer_fast train --config debug --logdir RUN --steps 400

A process started by torchrun (``WORLD_SIZE`` > 1 in its environment) joins the process group (NCCL when the config's
device is CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU). Rules of a run on ``N`` ranks:

- Each rank steps its own ``num_envs`` environments (seeds offset by ``RANK_SEED_STRIDE * rank``), stores them in its
  own replay shard (``replay/`` for rank 0, ``replay/rank<r>/`` for the others) and samples its own ``batch_size`` x
  ``batch_length`` batch: the global batch is ``N * batch_size`` sequences.
- Env steps (``steps``, ``prefill``, ``log_every``, ``checkpoint_every``, ``eval_every``, ``video_every``) count the
  steps of all ranks; ``train_every`` counts each rank's own steps, so every rank trains ``train_steps`` updates
  per ``N * train_every`` global steps and the train ratio (replayed steps per env step) stays
  ``batch_size * batch_length * train_steps / train_every``, as on one process.
- The world model, the actor and the critic are each wrapped in ``DistributedDataParallel``, whose hooks average the
  gradients over the ranks during the backward pass; every rank then clips and steps the same gradients, so the
  parameters (and the slow critic, a copy of the critic) stay bit-identical. A non-finite loss on any rank skips the
  step on all of them. Buffers (the actor-critic's return-scale statistics) start each update from rank 0's (DDP
  broadcasts them).
- Rank 0 owns the logdir: config.yaml, metrics.csv, tb/, plots, best.pt and checkpoint.pt. Training metrics are
  the means over the ranks, ``replay/steps`` their sum; every rank's episodes are logged (at the next log, evaluation or
  checkpoint, with the step they ended at, so metrics.csv stays in step order); evaluations play ``eval_episodes``
  on every rank and log the mean of all of them.
  ``checkpoint.pt`` also holds every rank's RNG states, replay sampler and replay chunk range (``ranks``), so
  ``--resume`` with the same number of ranks restores all of them (another number is refused).
- A rank that dies makes the others fail their next collective (gloo and NCCL notice the closed connection, or the
  process group's timeout, ``DREAMER_FAST_DIST_TIMEOUT`` seconds, default 120, expires); each exits with status 2
  and one line, and torchrun stops the job with a non-zero status. ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dreamer_fast.training.replay_chunks import replay_dir

RANK_SEED_STRIDE = 100_003  # rank r seeds its environments, replay sampler and RNGs with config.seed + r * stride
TIMEOUT_ENV = "DREAMER_FAST_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0


class RankLost(ValueError):
    """A collective failed: another rank died or stopped answering."""


class Ranks:
    """The processes of a run as the training loop sees them; this class is the single process (rank 0 of 1), where
    every collective is the identity. :class:`Dist` is a rank of a torchrun job."""

    rank, world, local_rank = 0, 1, 0

    @property
    def main(self) -> bool:
        """The rank that owns the logdir (config.yaml, metrics.csv, checkpoints) and reports."""
        return self.rank == 0

    # ---- per-rank settings ----------------------------------------------------------------------------------------

    def seed(self, seed: int) -> int:
        return seed + RANK_SEED_STRIDE * self.rank

    def rank_config(self, config: Any) -> Any:
        """The config with this rank's device."""
        return config

    def replay_dir(self, logdir: Path) -> Path:
        return replay_dir(logdir, self.rank)

    def on_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the main rank (its result); None on the others."""
        return fn(*args, **kwargs) if self.main else None

    def print(self, line: str) -> None:
        self.on_main(print, line)

    def logger(self, logdir: Path, purge_step: int | None) -> Any:
        """The main rank's :class:`~dreamer_fast.training.logger.Logger`; a :class:`NullLogger` on the others."""
        from dreamer_fast.training.logger import Logger

        return self.on_main(Logger, logdir, purge_step=purge_step) or NullLogger()

    def decide(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the main rank, its result on every rank; its ValueError or OSError raised on every rank."""
        result, error = None, None
        try:
            result = self.on_main(fn)
        except (ValueError, OSError) as e:
            error = e
        self.agree(error)
        return self.broadcast(result)

    def failed(self, error: RuntimeError) -> BaseException:
        """What a RuntimeError that escaped training becomes (on several ranks: :class:`RankLost`)."""
        return error

    # ---- collectives ----------------------------------------------------------------------------------------------

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one."""
        return bool(flag)

    def min(self, value: float) -> float:
        return value

    def all_finite(self, finite: torch.Tensor) -> torch.Tensor:
        """``finite`` (a bool scalar tensor) and-ed over the ranks."""
        return finite

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        return [obj]

    def concat(self, items: list[Any]) -> list[Any]:
        """Every rank's ``items`` concatenated in rank order, on every rank."""
        return list(items)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def barrier(self) -> None:
        pass

    def agree(self, error: BaseException | None) -> None:
        """Raises on every rank when ``error`` is set on one (ValueError with the failing rank's line), so that a
        step that must succeed everywhere (the logdir check, reading a resume) fails everywhere."""
        if error is not None:
            raise error

    def close(self) -> None:
        pass


class Dist(Ranks):
    """Rank ``rank`` of a torchrun job of ``world`` processes, in the default process group."""

    def __init__(self, rank: int = 0, world: int = 0, local_rank: int = 0, owns_group: bool = False) -> None:
        self.rank, self.world, self.local_rank, self.owns_group = rank, max(world, 1), local_rank, owns_group
        self.device = torch.device("cpu")  # where collectives' tensors live (the rank's GPU under NCCL)

    def rank_config(self, config: Any) -> Any:
        """The config with this rank's device: ``cuda:LOCAL_RANK`` for a CUDA run."""
        if torch.device(config.device).type == "cuda":
            return dataclasses.replace(config, device=f"cuda:{self.local_rank}")
        return config

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as error:
            raise self.lost(error) from None

    def lost(self, error: BaseException) -> RankLost:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return RankLost(f"rank {self.rank}: lost contact with the other ranks ({first[:240]}); the job stops, "
                        f"`--resume` continues from the last checkpoint")

    def failed(self, error: RuntimeError) -> BaseException:
        return error if isinstance(error, RankLost) else self.lost(error)  # e.g. a collective inside DDP's backward

    def any(self, flag: bool) -> bool:
        t = torch.tensor([float(flag)], device=self.device)
        self._call(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def min(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self._call(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return t.item()

    def all_finite(self, finite: torch.Tensor) -> torch.Tensor:
        t = finite.float().reshape(1)
        self._call(dist.all_reduce, t, op=dist.ReduceOp.MIN)
        return t[0] > 0

    def gather(self, obj: Any) -> list[Any] | None:
        out = [None] * self.world if self.main else None
        self._call(dist.gather_object, obj, out, dst=0)
        return out

    def _all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._call(dist.all_gather_object, out, obj)
        return out

    def concat(self, items: list[Any]) -> list[Any]:
        return [item for part in self._all_gather(list(items)) for item in part]

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        self._call(dist.barrier)

    def agree(self, error: BaseException | None) -> None:
        out = self._all_gather(None if error is None else str(error))
        failed = [(r, m) for r, m in enumerate(out) if m is not None]
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise ValueError(f"rank {rank}: {message}")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Ranks:
    """The process group of a torchrun job (``WORLD_SIZE`` > 1), joined here (a :class:`Dist`); else :class:`Ranks`.
    NCCL for a CUDA ``device``, gloo for the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"config `device` is {device!r} but torch sees no CUDA GPU")
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
        try:
            seconds = float(raw)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
        if not seconds > 0:
            raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=seconds))
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ValueError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                         f"RANK={rank} WORLD_SIZE={world}")
    out = Dist(rank, world, local_rank, owns)
    if cuda:
        out.device = torch.device(f"cuda:{local_rank}")
    return out


# ---- the agent under DDP ------------------------------------------------------------------------------------------


class _WorldModelLoss(nn.Module):
    """DDP's module for the world model: forward is ``WorldModel.loss``."""

    def __init__(self, wm: nn.Module) -> None:
        super().__init__()
        self.wm = wm

    def forward(self, data: Any) -> Any:
        return self.wm.loss(data)


class _BehaviorLoss(nn.Module):
    """DDP's module for the actor and the critic (and the slow critic, not trained): forward is
    ``ActorCritic.loss``. The world model it imagines with is not one of its modules (DDP would expect its
    parameters to get gradients from the behaviour losses)."""

    def __init__(self, ac: nn.Module, wm: nn.Module) -> None:
        super().__init__()
        self.ac = ac
        self._wm = (wm,)

    def forward(self, start: Any, is_terminal: torch.Tensor) -> Any:
        return self.ac.loss(self._wm[0], start, is_terminal)


class AgentDDP:
    """The DDP wrappers :meth:`Agent.train_step` calls instead of the plain losses (``agent.ddp``).

    Every forward is followed by exactly one backward reaching all of the module's trained parameters: the world
    model's loss w.r.t. its parameters, and ``actor_loss + critic_loss`` w.r.t. the actor's and the critic's (each
    loss reaches only its own part: the critic regresses detached features, the actor's targets come from the slow
    critic), so DDP averages each gradient exactly once per update."""

    def __init__(self, agent: Any, d: Dist) -> None:
        self.dist = d
        ids = [d.local_rank] if agent.device.type == "cuda" else None
        self.world_model = DistributedDataParallel(_WorldModelLoss(agent.wm), device_ids=ids)
        self.behavior = DistributedDataParallel(_BehaviorLoss(agent.ac, agent.wm), device_ids=ids)

    def all_finite(self, finite: torch.Tensor) -> torch.Tensor:
        return self.dist.all_finite(finite)


def wrap_agent(agent: Any, d: Ranks) -> None:
    """Makes ``agent`` train with gradients averaged over the ranks (a no-op on one process). DDP broadcasts rank 0's
    parameters and buffers, so every rank starts from the same model."""
    if d.world > 1:
        try:
            agent.ddp = AgentDDP(agent, d)
        except RuntimeError as error:
            raise d.failed(error) from None


class NullLogger:
    """The logger of ranks > 0: rank 0 owns metrics.csv, tb/ and the GIFs."""

    def scalars(self, values: Any, step: int) -> None:
        pass

    def scalar(self, name: str, value: float, step: int) -> None:
        pass

    def gif(self, *args: Any, **kwargs: Any) -> None:
        return None

    def flush(self) -> None:
        pass

    def csv_bytes(self) -> int:
        return 0

    def close(self) -> None:
        pass


__all__ = ["Ranks", "Dist", "RankLost", "setup", "wrap_agent", "AgentDDP", "NullLogger", "RANK_SEED_STRIDE"]
