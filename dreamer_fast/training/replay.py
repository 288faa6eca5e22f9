"""Sequence replay: steps stored in chunks (in memory and as ``.npz`` files), sampled as time-major windows.

A step is the dict an env returns plus ``"action"`` (float32 ``[A]``, the action taken *before* this observation;
zeros on ``is_first``). Each worker (parallel env) appends to its own pending chunk; a chunk is finalised when its
episode ends or it holds ``chunk`` steps. A finalised chunk is written atomically to
``<directory>/<seq>-w<worker>-<c|s>-<length>.npz`` (``seq`` zero-padded, so names sort in insertion order; ``c``
when the chunk continues the worker's previous chunk, ``s`` when it starts fresh) and appended to the in-memory
store. Beyond ``capacity`` steps the oldest chunks are dropped from memory and their files deleted (with
``keep_evicted_files``, only at :meth:`release_evicted`, so that files a checkpoint still counts survive until the next
checkpoint). A new ``Replay`` over a directory with chunk files loads them in order (resume), each checked against
``spec`` when one is given (``dreamer_fast/training/replay_chunks.py``).

``sample(batch, length)`` draws windows of ``length`` consecutive *stored* steps, uniformly over all start
positions. Stored order interleaves workers, so a window may run from one worker's chunk into an unrelated one;
there, and at the window's first step, ``is_first`` is set True and ``action`` zeroed, so the model restarts its
state from zeros exactly as it does at an episode start. (DreamerV2's official agent instead carries the posterior
across batches; starting each sequence from zeros is the documented simpler choice.)

``sample(batch, length, ends=p)`` makes each window, with probability ``p``, end at a stored episode's last step
instead (the episode drawn uniformly among those whose last step has ``length - 1`` stored steps before it). Under
uniform windows an episode's last step, the only one that shows a termination, is a tiny share of the data once
episodes grow long; ``ends`` keeps it in every batch (DreamerV2's replay has a similar ``prioritize_ends``).
``ends=0`` draws exactly what it did without the option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_fast.training.replay_chunks import FLAGS as _FLAGS
from dreamer_fast.training.replay_chunks import LoadPlan, StepSpec, chunk_name, plan_load, write_chunk


@dataclass
class _Chunk:
    """Consecutive steps of one worker: ``data[key]`` is ``[n, ...]``."""

    data: dict[str, np.ndarray]
    worker: int
    continues: bool  # the worker's previous chunk is the same episode, directly before this one
    joins: bool  # ... and that chunk is stored directly before this one, so windows may run across
    path: Path
    seq: int

    def __len__(self) -> int:
        return len(self.data["reward"])


class Replay:
    """Chunked on-disk + in-memory step replay with uniform sampling of time-major windows.

    Args:
        directory: where chunk files live (created if missing); existing chunk files are loaded.
        capacity: the most steps kept; beyond it the oldest chunks are dropped (memory and files).
        seed: seeds the sampler's ``numpy.random.Generator``.
        chunk: steps per chunk (a chunk also ends at an episode's last step); at most ``capacity``.
        spec: the keys, per-step shapes and dtypes of a step (``replay_chunks.step_spec``); loaded chunks must match.
        plan: a :func:`replay_chunks.plan_load` result to apply instead of loading ``directory`` afresh.
        keep_evicted_files: delete evicted chunks' files only at :meth:`release_evicted`.
    """

    def __init__(self, directory: str | os.PathLike, capacity: int, seed: int = 0, chunk: int = 1024,
                 spec: StepSpec | None = None, plan: LoadPlan | None = None, keep_evicted_files: bool = False) -> None:
        if capacity <= 0 or chunk <= 0:
            raise ValueError(f"Replay: capacity and chunk must be > 0, got capacity={capacity}, chunk={chunk}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.chunk = min(chunk, capacity)  # a chunk bigger than the capacity would evict itself
        self._rng = np.random.default_rng(seed)
        self._chunks: list[_Chunk] = []
        self._starts = np.zeros(0, np.int64)  # start index of each stored chunk, for searchsorted; rebuilt lazily
        self._ends = np.zeros(0, np.int64)  # stored index of each episode's last step; rebuilt with _starts
        self._starts_valid = True
        self._size = 0
        self._episodes = 0
        self._keys: tuple[str, ...] | None = None
        self._pending: dict[int, list[dict[str, np.ndarray]]] = {}
        self._open_episode: dict[int, bool] = {}  # worker -> its last finalised chunk ended mid-episode
        self._seq = 0
        self._keep_evicted = keep_evicted_files
        self._evicted: list[Path] = []
        self._load(plan if plan is not None else plan_load(self.directory, capacity, spec))

    # ------------------------------------------------------------------ adding

    def add(self, step: dict[str, Any], worker: int = 0) -> None:
        """Appends one step (obs keys, ``reward``, ``is_first``, ``is_last``, ``is_terminal``, ``action``)."""
        step = self._check_step(step)
        pending = self._pending.setdefault(worker, [])
        if step["is_first"] and pending:  # a reset without is_last (e.g. the env was abandoned): close the chunk
            self._finalise(worker)
            pending = self._pending.setdefault(worker, [])
        pending.append(step)
        if step["is_last"] or len(pending) >= self.chunk:
            self._finalise(worker)

    def save(self) -> None:
        """Finalises every worker's pending steps (call before a checkpoint so nothing is lost on resume)."""
        for worker in list(self._pending):
            self._finalise(worker)

    def _check_step(self, step: dict[str, Any]) -> dict[str, np.ndarray]:
        required = {"reward", "action", *_FLAGS}
        missing = required - set(step)
        if missing:
            raise ValueError(f"Replay.add: step is missing key(s) {sorted(missing)}; got {sorted(step)}")
        keys = tuple(sorted(step))
        if self._keys is None:
            self._keys = keys
        elif keys != self._keys:
            raise ValueError(f"Replay.add: step keys {list(keys)} differ from the stored keys {list(self._keys)}")
        out = {k: np.asarray(v) for k, v in step.items()}
        out["reward"] = out["reward"].astype(np.float32)
        out["action"] = out["action"].astype(np.float32)
        for flag in _FLAGS:
            out[flag] = out[flag].astype(bool)
        return out

    def _finalise(self, worker: int) -> None:
        steps = self._pending.pop(worker, [])
        if not steps:
            return
        data = {key: np.stack([s[key] for s in steps]) for key in steps[0]}
        continues = bool(self._open_episode.get(worker, False) and not data["is_first"][0])
        self._open_episode[worker] = not bool(data["is_last"][-1])
        path = self.directory / chunk_name(self._seq, worker, continues, len(steps))
        write_chunk(path, data)
        self._append(_Chunk(data, worker, continues, False, path, self._seq))
        self._seq += 1

    def _append(self, chunk: _Chunk) -> None:
        last = self._chunks[-1] if self._chunks else None
        chunk.joins = chunk.continues and last is not None and last.worker == chunk.worker
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._episodes += int(chunk.data["is_last"].sum())
        self._starts_valid = False
        while self._size > self.capacity:
            old = self._chunks.pop(0)
            self._size -= len(old)
            self._episodes -= int(old.data["is_last"].sum())
            if self._keep_evicted:
                self._evicted.append(old.path)
            else:
                old.path.unlink(missing_ok=True)

    def release_evicted(self) -> None:
        """Deletes the files of chunks evicted since the last call (with ``keep_evicted_files``)."""
        for path in self._evicted:
            path.unlink(missing_ok=True)
        self._evicted.clear()

    def checkpoint_state(self) -> dict[str, int]:
        """Which chunk files hold the stored steps: sequence numbers ``first_seq`` to ``next_seq - 1``, ``steps`` in
        all.
        Call :meth:`save` first, so that no step is pending."""
        first = self._chunks[0].seq if self._chunks else self._seq
        return {"first_seq": first, "next_seq": self._seq, "steps": self._size}

    # ------------------------------------------------------------------ resume

    def _load(self, plan: LoadPlan) -> None:
        """Applies a load plan: deletes its dropped chunks and stale temp files, stores its kept chunks."""
        for path in plan.drop + plan.stale:
            path.unlink(missing_ok=True)
        for chunk, data in plan.keep:
            keys = tuple(sorted(data))
            if self._keys is not None and keys != self._keys:
                raise ValueError(f"Replay: {chunk.path} holds keys {list(keys)}, other chunks {list(self._keys)}")
            self._keys = keys
            # A new process's envs start new episodes, so no worker continues a loaded chunk.
            self._append(_Chunk(data, chunk.worker, chunk.continues, False, chunk.path, chunk.seq))
        if plan.keep:
            self._seq = plan.keep[-1][0].seq + 1

    # ------------------------------------------------------------------ sampling

    def __len__(self) -> int:
        """Stored (finalised) steps."""
        return self._size

    @property
    def episodes(self) -> int:
        """Completed episodes among the stored steps (steps with ``is_last``)."""
        return self._episodes

    def sample(self, batch: int, length: int, ends: float = 0.0) -> dict[str, np.ndarray]:
        """``batch`` windows of ``length`` consecutive stored steps, time-major: each value is ``[length, batch, ...]``.

        ``is_first[0]`` is True and ``action[0]`` zero in every window, and likewise at every chunk boundary inside
        a window where the next chunk does not continue the same worker's episode. ``ends`` in [0, 1]: the
        probability that a window ends at an episode's last step rather than at a uniform position (see the module
        docstring); no effect while no stored episode has ended.
        """
        if batch <= 0 or length <= 0:
            raise ValueError(f"Replay.sample: batch and length must be > 0, got batch={batch}, length={length}")
        if not 0.0 <= ends <= 1.0:
            raise ValueError(f"Replay.sample: `ends` must be in [0, 1], got {ends!r}")
        if self._size < length:
            raise ValueError(f"Replay.sample: need at least length={length} stored steps, have {self._size} "
                             f"(pending steps count once their chunk is finalised; see save())")
        if not self._starts_valid:
            self._starts = np.cumsum([0] + [len(c) for c in self._chunks])[:-1]
            # A chunk is finalised at its episode's last step, so episode ends are the last steps of such chunks.
            last = [start + len(c) - 1 for start, c in zip(self._starts, self._chunks) if c.data["is_last"][-1]]
            self._ends = np.array(last, np.int64)
            self._starts_valid = True
        first = self._chunks[0].data
        out = {k: np.empty((length, batch) + v.shape[1:], v.dtype) for k, v in first.items()}
        starts = self._rng.integers(0, self._size - length + 1, size=batch)
        if ends > 0:  # drawn after the uniform starts, so ends=0 leaves the sampler's stream as it was
            fits = self._ends[self._ends >= length - 1]
            at_end = self._rng.random(batch) < ends
            if len(fits) and at_end.any():
                starts[at_end] = self._rng.choice(fits, size=int(at_end.sum())) - (length - 1)
        for b, start in enumerate(starts):
            self._fill_window(out, b, int(start), length)
        out["is_first"][0] = True
        out["action"][0] = 0.0
        return out

    def _fill_window(self, out: dict[str, np.ndarray], b: int, start: int, length: int) -> None:
        index = int(np.searchsorted(self._starts, start, side="right")) - 1
        offset, t = start - int(self._starts[index]), 0
        while t < length:
            chunk = self._chunks[index]
            n = min(len(chunk) - offset, length - t)
            for key, value in chunk.data.items():
                out[key][t:t + n, b] = value[offset:offset + n]
            if offset == 0 and t > 0 and not chunk.joins:
                out["is_first"][t, b] = True
                out["action"][t, b] = 0.0
            t, offset, index = t + n, 0, index + 1

    def rng_state(self) -> dict[str, Any]:
        """The sampler's generator state (plain Python ints and strings; goes into a checkpoint)."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state

    def __repr__(self) -> str:
        return (f"Replay({str(self.directory)!r}, steps={self._size}/{self.capacity}, chunks={len(self._chunks)}, "
                f"episodes={self._episodes})")
