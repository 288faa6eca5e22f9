"""Replay chunk files: their names, reading them back with checks, writing them atomically, and load plans.

A chunk file ``<seq>-w<worker>-<c|s>-<length>.npz`` holds one array per step key, each ``[length, ...]`` (``seq``
zero-padded, so names sort in insertion order; ``c`` when the chunk continues its worker's previous chunk). Chunks are
written to a temp file (``.chunk-*``) and renamed, so a crash leaves no half chunk under a chunk's name.

Reading checks every array against a :data:`StepSpec` (the keys, per-step shapes and dtypes the environment
produces), so a chunk from another environment, a truncated or a garbage file stops a load with one line naming the
file instead of failing later inside sampling. :func:`plan_load` reads and checks everything a load needs and changes
no file; the replay applies the plan (deletes what it drops) only after the caller's other checks passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dreamer_fast.training.atomic import atomic_write

NAME = re.compile(r"^(\d{10})-w(\d+)-([cs])-(\d+)\.npz$")
TMP_PREFIX = ".chunk-"
FLAGS = ("is_first", "is_last", "is_terminal")

StepSpec = Mapping[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape of one step's value, dtype)


def replay_dir(logdir: Path, rank: int = 0) -> Path:
    """A rank's replay shard: ``replay/`` for rank 0 (and a single process), ``replay/rank<r>/`` for the others."""
    return logdir / "replay" if rank == 0 else logdir / "replay" / f"rank{rank}"


class ReplayFileError(ValueError):
    """A replay chunk file is unreadable or does not hold the steps the environment produces."""


def step_spec(obs_space: Mapping[str, tuple[tuple[int, ...], Any]], action_dim: int) -> dict:
    """What one stored step holds: the observation keys of ``obs_space``, ``reward``, ``action`` and the flags."""
    spec = {key: (tuple(shape), np.dtype(dtype)) for key, (shape, dtype) in obs_space.items()}
    spec["reward"] = ((), np.dtype(np.float32))
    spec["action"] = ((int(action_dim),), np.dtype(np.float32))
    spec.update({flag: ((), np.dtype(bool)) for flag in FLAGS})
    return spec


@dataclass(frozen=True)
class ChunkFile:
    path: Path
    seq: int
    worker: int
    continues: bool
    length: int


def chunk_name(seq: int, worker: int, continues: bool, length: int) -> str:
    return f"{seq:010d}-w{worker}-{'c' if continues else 's'}-{length}.npz"


def list_chunks(directory: Path) -> list[ChunkFile]:
    """The chunk files in ``directory`` (none when it does not exist), oldest first."""
    if not directory.is_dir():
        return []
    files = []
    for path in sorted(directory.iterdir()):
        if m := NAME.match(path.name):
            files.append(ChunkFile(path, int(m.group(1)), int(m.group(2)), m.group(3) == "c", int(m.group(4))))
    return files


def write_chunk(path: Path, data: Mapping[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez_compressed(f, **data), tmp_prefix=TMP_PREFIX)


def read_chunk(chunk: ChunkFile, spec: StepSpec | None) -> dict[str, np.ndarray]:
    """The arrays of ``chunk``; ``ReplayFileError`` naming the file when it is unreadable or does not fit ``spec``."""
    try:
        with np.load(chunk.path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except Exception as error:  # zipfile, zlib, EOFError, ValueError (pickled objects)... depending on the damage
        text = str(error).splitlines()[0] if str(error) else ""
        raise ReplayFileError(f"replay chunk {chunk.path} is truncated, corrupt or not an .npz of arrays "
                              f"({type(error).__name__}: {text}); move it out of the replay folder") from None
    _check(chunk, data, spec)
    return data


def _check(chunk: ChunkFile, data: Mapping[str, np.ndarray], spec: StepSpec | None) -> None:
    required = set(spec) if spec is not None else {"reward", "action", *FLAGS}
    keys = set(data)
    if (spec is not None and keys != required) or not required <= keys:
        raise ReplayFileError(f"replay chunk {chunk.path} holds keys {sorted(keys)}, expected {sorted(required)}")
    for key, value in data.items():
        if value.ndim == 0 or len(value) != chunk.length:
            raise ReplayFileError(f"replay chunk {chunk.path}: `{key}` has shape {value.shape}, expected "
                                  f"{chunk.length} steps (the length in the file's name)")
        if spec is None:
            continue
        shape, dtype = spec[key]
        if value.shape[1:] != shape or value.dtype != dtype:
            raise ReplayFileError(f"replay chunk {chunk.path}: `{key}` is {value.dtype} of per-step shape "
                                  f"{value.shape[1:]}, expected {dtype} of shape {shape} (the environment's)")


@dataclass
class LoadPlan:
    """What loading a replay folder does: ``keep`` (checked chunks with their data, oldest first) become the stored
    steps; ``drop`` (chunks beyond the capacity or outside the kept window) and ``stale`` (temp files of interrupted
    writes) are deleted; ``missing`` counts chunks of the window that are not on disk."""

    keep: list[tuple[ChunkFile, dict[str, np.ndarray]]] = field(default_factory=list)
    drop: list[Path] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    missing: int = 0

    @property
    def steps(self) -> int:
        return sum(chunk.length for chunk, _ in self.keep)


def plan_load(directory: Path, capacity: int, spec: StepSpec | None = None,
              window: tuple[int, int] | None = None) -> LoadPlan:
    """Reads and checks the chunks a load keeps; changes no file.

    ``window = (first, end)`` keeps only chunks with ``first <= seq < end`` (a checkpoint's replay: later chunks were
    collected after it, earlier ones were evicted before it). Of those, the newest that fit ``capacity`` are kept; the
    others are dropped unread (lengths are in the names).
    """
    files = list_chunks(directory)
    plan = LoadPlan(stale=sorted(directory.glob(TMP_PREFIX + "*")) if directory.is_dir() else [])
    if window is not None:
        inside = [c for c in files if window[0] <= c.seq < window[1]]
        plan.drop = [c.path for c in files if not window[0] <= c.seq < window[1]]
        plan.missing = (window[1] - window[0]) - len(inside)
        files = inside
    total, first_kept = 0, len(files)
    for i in range(len(files) - 1, -1, -1):
        if total + files[i].length > capacity:
            break
        total += files[i].length
        first_kept = i
    plan.drop += [c.path for c in files[:first_kept]]
    plan.keep = [(c, read_chunk(c, spec)) for c in files[first_kept:]]
    return plan
