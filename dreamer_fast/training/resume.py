"""Resuming a run as a transaction: everything is read and checked before any file of the logdir changes.

:func:`read_run_config` reads ``config.yaml`` and applies the overrides; :func:`prepare_resume` loads the checkpoint
into the agent (a key that would change a parameter's shape is refused, naming it), reads and checks every replay
chunk the checkpoint counts (``replay_chunks.plan_load``) and ``metrics.csv``. Only then does :func:`commit_resume`
bring the logdir back to the checkpoint's step: metrics rows logged after it are cut off, temp files of interrupted
writes removed; the replay drops the chunks collected after it when it applies its load plan. A failed resume
therefore leaves every file as it was.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dreamer_fast.training.atomic import atomic_write
from dreamer_fast.training.checkpoint import CheckpointError, load_agent_state, load_checkpoint
from dreamer_fast.config import Config, config_from_dict, load_config, preset_names
from dreamer_fast.training.logger import CSV_NAME
from dreamer_fast.training.replay_chunks import LoadPlan, StepSpec, plan_load, replay_dir

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
# Keys that set the shapes of the model's parameters (or the observation and action spaces): fixed for a run.
SHAPE_KEYS = ("env", "image_size", "deter", "hidden", "stoch", "classes", "cnn_depth", "mlp_layers", "mlp_units",
              "actor_dist", "return_norm")
# atomic_write's temp names of the files rank 0 writes
TEMP_FILES = (".checkpoint.pt.*.tmp", ".best.pt.*.tmp", ".config.yaml.*.tmp", ".metrics.csv.*.tmp")


def read_run_config(logdir: Path, overrides: dict[str, Any], preset: str | Sequence[str] | None = None) -> Config:
    """The config a resumed run continues with: ``logdir/config.yaml`` plus ``overrides``. Presets given with
    --resume (``preset``: as :func:`~dreamer_fast.config.load_config` takes them, stacked over the defaults) must
    agree with the run on every key of :data:`SHAPE_KEYS`; their other values are not applied."""
    logdir = Path(logdir)
    if logdir.exists() and not logdir.is_dir():
        raise ValueError(f"--logdir {logdir} is a file, not a run's folder")
    path = logdir / CONFIG
    if not path.is_file():
        raise ValueError(f"--resume: {path} does not exist (nothing to resume in {logdir})")
    values = _read_yaml_mapping(path)
    try:
        config_from_dict(values)
    except ValueError as error:
        raise ValueError(f"--resume: {path}: {error}") from None
    config = config_from_dict({**values, **overrides})
    if preset is not None:
        _check_preset(preset, config, logdir)
    return config


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


def _check_preset(preset: str | Sequence[str], config: Config, logdir: Path) -> None:
    names = preset_names(preset)
    wanted = load_config(names)
    label = f"preset {names[0]!r}" if len(names) == 1 else f"presets {','.join(names)!r} (stacked)"
    for key in SHAPE_KEYS:
        if getattr(wanted, key) != getattr(config, key):
            raise ValueError(f"--resume: {label} has `{key}` = {getattr(wanted, key)!r} but the run in "
                             f"{logdir} has {getattr(config, key)!r}; --resume continues a run with its own "
                             f"{CONFIG} (leave out --config)")


@dataclass
class Resume:
    """What :func:`prepare_resume` read: the checkpoint, the replay's load plan, the metrics.csv size to keep."""

    checkpoint: dict[str, Any]
    replay: LoadPlan
    metrics_bytes: int | None  # None: a checkpoint that predates the record; rows after its step are dropped
    stale: list[Path]

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
    return Resume(ckpt, replay, metrics_bytes, stale)


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
    """Brings metrics.csv back to the checkpoint and removes stale temp files (the replay applies its own plan)."""
    path = logdir / CSV_NAME
    if path.is_file():
        if resume.metrics_bytes is not None:
            if path.stat().st_size > resume.metrics_bytes:
                os.truncate(path, resume.metrics_bytes)
        else:
            _drop_rows_after(path, resume.step)
    for stale in resume.stale:
        stale.unlink(missing_ok=True)


def _drop_rows_after(path: Path, step: int) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if int(row[0]) <= step]
    if len(kept) < len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
