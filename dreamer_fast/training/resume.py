"""Resuming a run as a transaction: everything is read and checked before any file of the logdir changes.

:func:`plan_start` decides whether a run resumes or starts afresh (the start of a run killed before its first
checkpoint is started again; another run's files are refused). :func:`read_run_config` reads ``config.yaml``, checks
the command line's configuration against it and applies the overrides; :func:`prepare_resume` loads the checkpoint
into the agent (a key that would change a parameter's shape is refused, naming it), reads and checks every replay
chunk the checkpoint counts (``replay_chunks.plan_load``) and ``metrics.csv``. Only then does :func:`commit_resume`
bring the logdir back to the checkpoint's step: metrics rows logged after it are cut off, temp files of interrupted
writes removed, a staged best.pt that the checkpoint records renamed to best.pt (one it does not record removed); the
replay drops the chunks collected after it when it applies its load plan. A failed resume therefore leaves every file
as it was.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dreamer_fast.training.atomic import atomic_write
from dreamer_fast.training.checkpoint import CheckpointError, load_agent_state, load_checkpoint
from dreamer_fast.config import Config, config_from_dict, load_config, preset_names, show_value
from dreamer_fast.training.logger import CSV_NAME
from dreamer_fast.training.replay_chunks import LoadPlan, StepSpec, list_chunks, plan_load, replay_dir

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
BEST = "best.pt"  # the agent at its best periodic evaluation (config.eval_every), loadable as a checkpoint
# best.pt as a new best evaluation wrote it: it becomes best.pt once a checkpoint records that evaluation
# (dreamer_fast/training/loop.py), so best.pt is never ahead of the checkpoint's `best_eval`
BEST_STAGED = "best.pt.staged"
# Keys that set the shapes of the model's parameters (or the observation and action spaces): fixed for a run.
SHAPE_KEYS = ("env", "image_size", "deter", "hidden", "stoch", "classes", "cnn_depth", "mlp_layers", "mlp_units",
              "actor_dist", "return_norm")
# atomic_write's temp names of the files rank 0 writes
TEMP_FILES = (".checkpoint.pt.*.tmp", ".best.pt.*.tmp", ".config.yaml.*.tmp", ".metrics.csv.*.tmp")


def read_run_config(logdir: Path, overrides: dict[str, Any], preset: str | Sequence[str] | None = None) -> Config:
    """The config a resumed run continues with: ``logdir/config.yaml`` plus ``overrides``.

    The command line's resolved configuration is compared with the run's on the keys it gives: every key when
    ``preset`` is given (stacked over the defaults as :func:`~dreamer_fast.config.load_config` takes them, then
    ``overrides``), else the keys of ``overrides``. A key of :data:`SHAPE_KEYS` that differs is refused, naming the
    key, both values and the fix; keys that match or are not given are fine. The presets' other values are not
    applied (``overrides`` are)."""
    logdir = Path(logdir)
    run = _run_config(logdir)
    given = dict(overrides)
    label = "the command line"
    if preset is not None:
        names = preset_names(preset)  # presets resolve every key (over the defaults)
        given = load_config(names, overrides).to_dict()
        label = f"preset {names[0]!r}" if len(names) == 1 else f"presets {','.join(names)!r} (stacked)"
    command = config_from_dict({**run.to_dict(), **given})
    for key in SHAPE_KEYS:
        if key in given and getattr(command, key) != getattr(run, key):
            keep = f"--{key} {show_value(getattr(run, key))}"
            source, fix = ("the command line", f"leave it out or give {keep}") if key in overrides else (label,
                                                                                                      f"add {keep}")
            raise ValueError(f"--resume: {source} has `{key}` = {getattr(command, key)!r} but the run in {logdir} has "
                             f"{getattr(run, key)!r}; `{key}` sets the model's parameter shapes, so it cannot change: "
                             f"{fix} to continue the run, or start a new run in another --logdir")
    return config_from_dict({**run.to_dict(), **overrides})


def _run_config(logdir: Path) -> Config:
    """The resolved configuration in ``logdir/config.yaml`` (one ValueError line when it is missing or unusable)."""
    if logdir.exists() and not logdir.is_dir():
        raise ValueError(f"--logdir {logdir} is a file, not a run's folder")
    path = logdir / CONFIG
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist (nothing to resume in {logdir})")
    values = _read_yaml_mapping(path)
    try:
        return config_from_dict(values)
    except ValueError as error:
        raise ValueError(f"--resume: {path}: {error}") from None


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        first = " ".join(str(error).split())
        raise ValueError(f"--resume: {path} is not valid YAML ({first})") from None
    if not isinstance(values, dict):
        what = "empty" if values is None else f"a {type(values).__name__}, not a mapping of config keys"
        raise ValueError(f"--resume: {path} is {what}; it should hold the run's resolved configuration")
    return values


def plan_start(logdir: Path, config: Config, resume: bool) -> bool:
    """Whether the run in ``logdir`` resumes from its checkpoint (True) or starts afresh (False).

    Without a checkpoint there is nothing to resume, with or without ``resume``. A logdir that holds the start of a
    run stopped before its first checkpoint (killed during prefill) starts afresh when its ``config.yaml`` is this
    run's (every key but ``steps`` equal): its files (config.yaml, metrics.csv, tb/, replay chunks, plots, a staged
    best.pt) are removed, with one line saying so. Anything else in ``logdir`` (a checkpoint without ``resume``,
    another run's config, files without a config.yaml) is refused and stays as it is."""
    logdir = Path(logdir)
    if logdir.exists() and not logdir.is_dir():
        raise ValueError(f"--logdir {logdir} is a file, not a folder")
    if (logdir / CHECKPOINT).exists():
        if resume:
            return True
        raise ValueError(f"{logdir} already holds a run ({logdir / CHECKPOINT}); pass --resume to continue it or pick "
                         "another --logdir")
    files = _unfinished_run_files(logdir)
    if files:
        _check_same_run(logdir, config, files)
        chunks = [c for c in files if c.suffix == ".npz"]
        print(f"dreamer-fast: {logdir} holds this run stopped before its first checkpoint (no {CHECKPOINT}; "
              f"{sum(int(c.stem.rsplit('-', 1)[1]) for c in chunks):,} replay steps): starting it afresh")
        for path in files:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    try:
        logdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--logdir {logdir} cannot be created ({error.strerror or error})") from None
    return False


def _unfinished_run_files(logdir: Path) -> list[Path]:
    """What a run writes before its first checkpoint, as far as ``logdir`` holds it."""
    named = [logdir / name for name in (CONFIG, CSV_NAME, "tb", BEST_STAGED, "curve.png", "losses.png")]
    shards = [replay_dir(logdir)] + sorted((logdir / "replay").glob("rank*"))
    chunks = [c.path for shard in shards for c in list_chunks(shard)]
    temps = [p for pattern in TEMP_FILES for p in logdir.glob(pattern)]
    return [p for p in named if p.exists()] + sorted(logdir.glob("openloop_*.gif")) + chunks + temps


def _check_same_run(logdir: Path, config: Config, files: list[Path]) -> None:
    """``logdir``'s config.yaml holds ``config`` (but for ``steps``): the files are this run's."""
    path = logdir / CONFIG
    what = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
    if not path.is_file():
        raise ValueError(f"{logdir} holds files of a run ({what}) but no {CONFIG} that says which; remove them or "
                         f"pick another --logdir")
    try:
        saved = config_from_dict(_read_yaml_mapping(path)).to_dict()
    except ValueError as error:
        raise ValueError(f"{logdir} holds a run that stopped before its first checkpoint, with an unusable {CONFIG} "
                         f"({error}); remove it or pick another --logdir") from None
    changed = [k for k, v in config.to_dict().items() if k != "steps" and saved[k] != v]
    if changed:
        key = changed[0]
        raise ValueError(f"{logdir} holds another run that stopped before its first checkpoint (its `{key}` is "
                         f"{saved[key]!r}, here {getattr(config, key)!r}); remove it or pick another --logdir")


@dataclass
class Resume:
    """What :func:`prepare_resume` read: the checkpoint, the replay's load plan, the metrics.csv size to keep."""

    checkpoint: dict[str, Any]
    replay: LoadPlan
    metrics_bytes: int | None  # None: a checkpoint that predates the record; rows after its step are dropped
    stale: list[Path]
    promote_best: bool = False  # best.pt.staged holds the evaluation the checkpoint records: it becomes best.pt

    @property
    def step(self) -> int:
        return int(self.checkpoint["step"])


def prepare_resume(logdir: Path, config: Config, agent: Any, spec: StepSpec, rank: int = 0, world: int = 1) -> Resume:
    """Loads ``logdir``'s checkpoint into ``agent`` and reads and checks the replay and metrics; changes no file.
    On rank ``rank`` of ``world`` (``dreamer_fast/training/distributed.py``): that rank's replay shard, and the checkpoint
    must come from as many ranks."""
    path = logdir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} does not exist (the run stopped before its first checkpoint, so "
                              f"there is nothing to resume; start it again in an empty --logdir)")
    ckpt = load_checkpoint(path, map_location=agent.device)
    _check_shape_keys(ckpt.get("config", {}), config, path)
    load_agent_state(agent, ckpt["agent"], f"--resume: {path} does not fit the model of the config")
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world:
        how = "one process" if saved_world == 1 else f"`torchrun --nproc_per_node {saved_world}` (in all)"
        raise ValueError(f"--resume: {path} was trained on {saved_world} rank(s), this job has {world}; resume it "
                         f"with {how}")
    record = ckpt["ranks"][rank]["replay"] if world > 1 else ckpt.get("replay")
    window = (int(record["first_seq"]), int(record["next_seq"])) if record else None
    directory = replay_dir(logdir, rank)
    replay = plan_load(directory, config.replay_capacity, spec, window)
    if replay.missing:
        print(f"dreamer-fast: warning: {directory} lacks {replay.missing} chunk file(s) that {path} counts; "
              f"resuming with the {replay.steps:,} steps left", file=sys.stderr)
    metrics_bytes = ckpt.get("metrics_bytes")
    if rank != 0:  # rank 0 owns metrics.csv and the temp files
        return Resume(ckpt, replay, metrics_bytes, [])
    _check_metrics(logdir / CSV_NAME, metrics_bytes)
    stale = sorted(p for pattern in TEMP_FILES for p in logdir.glob(pattern))
    staged = logdir / BEST_STAGED
    promote = staged.is_file() and _records(ckpt.get("best_eval") or {}, staged)
    if staged.is_file() and not promote:
        stale.append(staged)  # an evaluation after the checkpoint: the resumed run evaluates again
    return Resume(ckpt, replay, metrics_bytes, stale, promote)


def _records(best: dict[str, Any], staged: Path) -> bool:
    """The checkpoint's best evaluation ``best`` is the one of the staged best.pt (a kill came between the
    checkpoint and the rename)."""
    try:
        agent = load_checkpoint(staged)
    except CheckpointError:
        return False  # written by atomic_write, so only damage from outside the run makes it unreadable
    return bool(best) and all(agent.get(key) == best[key] for key in ("step", "return"))


def _check_shape_keys(saved: dict[str, Any], config: Config, path: Path) -> None:
    for key in SHAPE_KEYS:
        if key in saved and saved[key] != getattr(config, key):
            raise ValueError(f"--resume: `{key}` is {getattr(config, key)!r} but {path} was trained with "
                             f"{saved[key]!r}; it sets the model's parameter shapes, so it cannot change on resume")


def _check_metrics(path: Path, keep_bytes: int | None) -> None:
    """The part of metrics.csv that resume keeps must be whole ``step,name,value`` rows."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    size = path.stat().st_size
    if keep_bytes is not None and size < keep_bytes:
        raise ValueError(f"--resume: {path} holds {size} bytes, fewer than the {keep_bytes} of the checkpoint's "
                         f"(it was cut or replaced); move it away to resume with a new one")
    with open(path, "rb") as f:
        head = f.read(keep_bytes if keep_bytes is not None else size)
    try:
        rows = list(csv.reader(io.StringIO(head.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"--resume: {path} is not a CSV file ({error}); move it away to resume with a new one"
                         ) from None
    if rows[:1] != [["step", "name", "value"]]:
        raise ValueError(f"--resume: {path} line 1 should be the header step,name,value, got {rows[:1]}")
    for number, row in enumerate(rows[1:], start=2):
        if not _is_row(row):
            raise ValueError(f"--resume: {path} line {number} is not a step,name,value row with an integer step and "
                             f"a number: {row!r}; fix the line or move the file away")


def _is_row(row: list[str]) -> bool:
    if len(row) != 3:
        return False
    try:
        int(row[0]), float(row[2])
    except ValueError:
        return False
    return True


def commit_resume(logdir: Path, resume: Resume) -> None:
    """Brings metrics.csv and best.pt back to the checkpoint and removes stale temp files (the replay applies its own
    plan)."""
    path = logdir / CSV_NAME
    if path.is_file():
        if resume.metrics_bytes is not None:
            if path.stat().st_size > resume.metrics_bytes:
                os.truncate(path, resume.metrics_bytes)
        else:
            _drop_rows_after(path, resume.step)
    for stale in resume.stale:
        stale.unlink(missing_ok=True)
    if resume.promote_best:
        os.replace(logdir / BEST_STAGED, logdir / BEST)


def _drop_rows_after(path: Path, step: int) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= step]
    if len(kept) < len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
