"""Faults lose nothing: a failed resume changes no file, kill -9 and resume leave the logdir consistent with the
checkpoint, SIGINT loses no collected step, damaged files and bad arguments give one line and exit status 2, and
non-finite training stops while the last good checkpoint survives.

Kill/resume cycles: ``DREAMER_FAST_KILLS`` (default 3) sets how many kills ``test_kill_9_and_resume`` makes; the soak
is the same test with e.g. ``DREAMER_FAST_KILLS=20``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from dreamer_fast.cli import _overrides, _parser, main
from dreamer_fast.config import load_config, presets
from dreamer_fast.training.checkpoint import load_checkpoint, save_checkpoint
from dreamer_fast.training.loop import _write_config
from dreamer_fast.training.resume import read_run_config
from dreamer_fast.training.replay_chunks import list_chunks

ROOT = Path(__file__).resolve().parents[1]
DEBUG = ["--config", "debug", "--no-progress"]


def run_cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    return code, capsys.readouterr().err


def digest(logdir: Path) -> dict[str, str]:
    """Every file under ``logdir`` (relative path -> sha256)."""
    return {str(p.relative_to(logdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(logdir.rglob("*")) if p.is_file()}


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dreamer-fast: error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 300-step debug run (checkpoint at 200 and 300)."""
    logdir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *DEBUG, "--logdir", str(logdir)]) == 0
    return logdir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    logdir = tmp_path / "run"
    shutil.copytree(finished_run, logdir)
    return logdir


def _chunks(logdir: Path):
    return list_chunks(logdir / "replay")


def _truncate_chunk(logdir: Path) -> str:
    chunk = _chunks(logdir)[3].path
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return chunk.name


def _empty_chunk(logdir: Path) -> str:
    chunk = _chunks(logdir)[4].path
    chunk.write_bytes(b"")
    return chunk.name


def _pickled_chunk(logdir: Path) -> str:
    chunk = _chunks(logdir)[5].path
    with open(chunk, "wb") as f:
        np.savez(f, vector=np.array([object()] * chunk_length(chunk), dtype=object))
    return chunk.name


def _wrong_shape_chunk(logdir: Path) -> str:
    chunk = _chunks(logdir)[2].path
    with np.load(chunk) as npz:
        data = {k: npz[k] for k in npz.files}
    data["vector"] = data["vector"][:, :2]
    with open(chunk, "wb") as f:
        np.savez_compressed(f, **data)
    return chunk.name


def chunk_length(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])


def _bad_yaml(logdir: Path) -> str:
    (logdir / "config.yaml").write_text("deter: [32\nsteps: 300\n")
    return "config.yaml"


def _empty_yaml(logdir: Path) -> str:
    (logdir / "config.yaml").write_text("")
    return "config.yaml"


def _bad_metrics(logdir: Path) -> str:
    lines = (logdir / "metrics.csv").read_bytes().splitlines(keepends=True)
    lines.insert(5, b"not,a,row,at all\r\n")
    (logdir / "metrics.csv").write_bytes(b"".join(lines))
    return "metrics.csv line 6"


def _short_metrics(logdir: Path) -> str:
    text = (logdir / "metrics.csv").read_bytes()
    (logdir / "metrics.csv").write_bytes(text[: len(text) // 2])
    return "metrics.csv"


DAMAGE = {"truncated-chunk": _truncate_chunk, "zero-byte-chunk": _empty_chunk, "pickled-chunk": _pickled_chunk,
          "wrong-shape-chunk": _wrong_shape_chunk, "corrupt-config": _bad_yaml, "empty-config": _empty_yaml,
          "corrupt-metrics": _bad_metrics, "cut-metrics": _short_metrics}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_of_a_damaged_run_is_one_line_and_changes_no_file(run_copy, capsys, damage):
    needle = DAMAGE[damage](run_copy)
    before = digest(run_copy)
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "400", "--no-progress")
    assert_one_line_error(code, err, needle)
    assert digest(run_copy) == before


@pytest.mark.parametrize("args,needle", [
    (["--set", "deter=64"], "`deter`"),
    (["--set", "replay_capacity=40", "--set", "deter=64"], "`deter`"),
    (["--set", "stoch=8"], "`stoch`"),
    (["--config", "atari"], "preset 'atari'"),
    (["--config", "debug,small"], "presets 'debug,small' (stacked) has `deter`"),
    (["--config", "debug", "--config", "small"], "presets 'debug,small' (stacked) has `deter`"),
    (["--env", "atari/Pong"], "`env`"),
    (["--config", "debug", "--env", "atari/Pong"], "`env` = 'atari/Pong' but the run in"),
    (["--config", "debug", "--set", "stoch=8"], "leave it out or give --stoch 4 to continue"),
    (["--config", "small,debug", "--set", "stoch=4", "--deter", "64"], "has 32; `deter` sets the model's"),
    (["--config", "cartpole"], "preset 'cartpole' has `deter` = 200 but the run in"),
    (["--set", "deter=abc"], "`deter`"),
])  # fmt: skip
def test_refused_resume_changes_no_file_and_plain_resume_still_works(run_copy, capsys, args, needle):
    before = digest(run_copy)
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--no-progress", *args)
    assert_one_line_error(code, err, needle)
    assert digest(run_copy) == before
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "320", "--no-progress")
    assert code == 0, err
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 320


def test_resume_with_stacked_presets_that_agree_keeps_the_runs_config(run_copy, capsys):
    """Presets given on resume are only checked against the run: `atari,debug` has debug's shapes, and atari's
    `bf16: auto` is not applied."""
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "320", "--no-progress",
                        "--config", "atari,debug")
    assert code == 0, err
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["bf16"] == "false"
    assert load_checkpoint(run_copy / "checkpoint.pt")["step"] == 320


def _resolve(args: list[str]):
    """The configuration `dreamer-fast train ARGS` resolves, as the command line does."""
    parsed = _parser().parse_args(["train", "--logdir", "unused", *args])
    return load_config(parsed.config or "atari", _overrides(parsed)), parsed


STACKS = [[name] for name in presets()] + [[name, "debug"] for name in presets() if name != "debug"]


@pytest.mark.parametrize("names", STACKS, ids=",".join)
def test_the_same_command_with_resume_keeps_the_runs_config(tmp_path, names):
    """For every preset (and each stacked under debug): the command that started a run, with another --steps and
    --resume, continues it with its config (no training: the config.yaml a run writes, read back)."""
    env = ["--env", "atari/Pong"] if "atari" in names or "debug" in names else []
    started, _ = _resolve(["--config", ",".join(names), *env, "--steps", "300"])
    _write_config(tmp_path, started, "resolved on this CPU")
    resumed, parsed = _resolve(["--config", ",".join(names), *env, "--steps", "400", "--resume"])
    config = read_run_config(tmp_path, _overrides(parsed), parsed.config)
    assert config == dataclasses.replace(started, steps=400)


def test_the_same_command_with_resume_continues_a_run(tmp_path, capsys):
    """`train --config debug --env atari/Pong ...` then the same command with --resume: it continues."""
    logdir, command = tmp_path / "run", ["train", *DEBUG, "--env", "atari/Pong"]
    code, err = run_cli(capsys, *command, "--logdir", str(tmp_path / "run"), "--steps", "110")
    assert code == 0, err
    code, err = run_cli(capsys, *command, "--logdir", str(tmp_path / "run"), "--steps", "130", "--resume")
    assert code == 0, err
    assert load_checkpoint(logdir / "checkpoint.pt")["step"] == 130


def test_resume_drops_what_came_after_the_checkpoint(run_copy, capsys):
    """Rows, chunks and temp files written after the checkpoint (as a kill -9 leaves them) are dropped on resume."""
    ckpt = load_checkpoint(run_copy / "checkpoint.pt")
    with open(run_copy / "metrics.csv", "a") as f:
        f.write("310,episode/return,12.0\n320,train/updates,99\n330,episode/re")  # a cut last row too
    extra = run_copy / "replay" / f"{ckpt['replay']['next_seq']:010d}-w0-s-7.npz"
    shutil.copy(_chunks(run_copy)[0].path, extra.with_name(extra.name.replace("-7.", "-8.")))
    (run_copy / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (run_copy / "replay" / ".chunk-xyz.tmp").write_bytes(b"half a chunk")
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "300", "--no-progress")
    assert code == 0, err
    assert not list(run_copy.rglob("*.tmp"))
    rows = _rows(run_copy)
    assert all(int(r[0]) <= 300 for r in rows), rows[-3:]
    assert not _duplicates(rows)
    after = load_checkpoint(run_copy / "checkpoint.pt")
    assert _stored_steps(run_copy) == after["replay"]["steps"] == ckpt["replay"]["steps"] + 1  # one new reset step


def _rows(logdir: Path) -> list[list[str]]:
    with open(logdir / "metrics.csv", newline="") as f:
        return list(csv.reader(f))[1:]


def _duplicates(rows: list[list[str]]) -> list:
    return [key for key, n in Counter((r[0], r[1]) for r in rows).items() if n > 1]


def _stored_steps(logdir: Path) -> int:
    return sum(c.length for c in _chunks(logdir))


@pytest.mark.parametrize("make,needle", [
    (lambda d: (d / "file").write_text("x") and d / "file", "is a file"),
    (lambda d: (d / "file").write_text("x") and d / "file" / "run", "cannot be created"),
    (lambda d: Path("/proc/no/such/dir"), "cannot be created"),
])  # fmt: skip
def test_unusable_logdir_is_one_line(tmp_path, capsys, make, needle):
    logdir = make(tmp_path)
    for extra in ([], ["--resume"]):
        code, err = run_cli(capsys, "train", *DEBUG, "--logdir", str(logdir), *extra)
        assert_one_line_error(code, err, str(logdir) if extra else needle)


@pytest.mark.parametrize("args,needle", [
    (["--episodes", "0"], "--episodes"),
    (["--episodes", "-1"], "--episodes"),
    (["--episodes", "x"], "--episodes"),
    (["--no-such-flag"], "--no-such-flag"),
])  # fmt: skip
def test_eval_arguments_are_one_line(finished_run, capsys, args, needle):
    code, err = run_cli(capsys, "eval", "--checkpoint", str(finished_run / "checkpoint.pt"), *args)
    assert_one_line_error(code, err, needle)


def test_eval_of_a_folder_names_the_checkpoint_inside(finished_run, capsys):
    code, err = run_cli(capsys, "eval", "--checkpoint", str(finished_run))
    assert_one_line_error(code, err, "is a folder", "checkpoint.pt")


def test_nonfinite_training_stops_and_the_good_checkpoint_survives(run_copy, capsys):
    good = digest(run_copy)["checkpoint.pt"]
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "1000", "--no-progress",
                        "--set", "model_lr=1e30", "--set", "actor_lr=1e30", "--set", "critic_lr=1e30")
    assert_one_line_error(code, err.splitlines()[-1] + "\n", "diverged", "`max_nonfinite_updates`")
    assert digest(run_copy)["checkpoint.pt"] == good
    counts = [float(r[2]) for r in _rows(run_copy) if r[1] == "train/nonfinite_updates"]
    assert counts[-1] >= 10
    # With the guard's stop off, every non-finite update is skipped and the run ends; no checkpoint replaces the good one.
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "400", "--no-progress",
                        "--set", "max_nonfinite_updates=0")
    assert code == 0, err
    assert "no checkpoint" in err
    assert digest(run_copy)["checkpoint.pt"] == good


def _start(logdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamer_fast", "train", "--logdir", str(logdir), "--no-progress",
                             *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


FAST = ["--config", "debug", "--steps", "100000", "--set", "prefill=40", "--set", "train_every=8",
        "--set", "checkpoint_every=40", "--set", "log_every=20"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


def _wait_for_growth(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the file grows past its size now (the run logs: it is past its startup)."""
    size, deadline = path.stat().st_size, time.time() + timeout
    while path.stat().st_size <= size:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


def test_kill_9_and_resume(tmp_path):
    """kill -9 at random points (startup, resume checks, collection, updates, writes), then --resume, N times: the
    logdir matches its checkpoint (no duplicate metrics rows, the replay holds exactly the checkpoint's steps)."""
    kills, rng, logdir = int(os.environ.get("DREAMER_FAST_KILLS", "3")), random.Random(0), tmp_path / "run"
    proc = _start(logdir, *FAST)
    _wait_for(logdir / "checkpoint.pt", proc)
    steps = [load_checkpoint(logdir / "checkpoint.pt")["step"]]
    for i in range(kills):
        if i % 4 != 3:  # most kills land while it collects and trains, the others in the startup and resume checks
            _wait_for_growth(logdir / "metrics.csv", proc)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
        steps.append(load_checkpoint(logdir / "checkpoint.pt")["step"])
        proc = _start(logdir, "--resume")
    step = steps[-1]
    print(f"checkpoint steps at the {kills} kills: {steps}")
    proc.kill()
    proc.wait()
    final = _start(logdir, "--resume", "--steps", str(step + 100))
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["step"] >= step + 100
    rows = _rows(logdir)
    assert not _duplicates(rows)
    steps = [int(r[0]) for r in rows]
    assert steps == sorted(steps)
    assert _stored_steps(logdir) == ckpt["replay"]["steps"]
    seqs = [c.seq for c in _chunks(logdir)]
    assert seqs == list(range(ckpt["replay"]["first_seq"], ckpt["replay"]["next_seq"]))
    assert not list(logdir.rglob("*.tmp"))


@pytest.mark.parametrize("delay", [0.3, 1.7])
def test_sigint_loses_no_collected_step(tmp_path, delay):
    """SIGINT at any moment stops at a step boundary: every collected step is in the replay of the checkpoint."""
    logdir = tmp_path / "run"
    proc = _start(logdir, *FAST)
    _wait_for(logdir / "checkpoint.pt", proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert _stored_steps(logdir) == ckpt["replay"]["steps"] == ckpt["step"] + 1  # + the first reset
    assert not _duplicates(_rows(logdir))


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, capsys):
    """kill -9 during prefill: the same command (with or without --resume) starts the run afresh with one line, and
    a command with another config leaves the files as they are."""
    logdir, run = tmp_path / "run", ["--config", "debug", "--set", "prefill=100000", "--set", "checkpoint_every=1000"]
    proc = _start(logdir, *run, "--steps", "100000")
    _wait_for(logdir / "metrics.csv", proc)
    _wait_for_growth(logdir / "metrics.csv", proc)  # the first log: 100 steps collected (chunks of 32 written)
    proc.kill()
    proc.wait()
    assert _chunks(logdir) and not (logdir / "checkpoint.pt").exists()
    before = digest(logdir)
    code, err = run_cli(capsys, "train", "--logdir", str(logdir), "--no-progress", *run, "--set", "seed=1")
    assert_one_line_error(code, err, "another run", "`seed` is 0, here 1")
    assert digest(logdir) == before
    for extra in (["--resume"], []):
        capsys.readouterr()
        assert main(["train", "--logdir", str(logdir), "--no-progress", *run, "--steps", "60", *extra]) == 0
        out = capsys.readouterr().out
        assert out.count("stopped before its first checkpoint") == 1, out
        (logdir / "checkpoint.pt").unlink()  # as if killed again before it
    rows = _rows(logdir)
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows) and max(int(r[0]) for r in rows) == 60
    assert _stored_steps(logdir) == 61


@pytest.mark.parametrize("recorded", [False, True])
def test_best_pt_is_never_ahead_of_the_checkpoint(run_copy, capsys, recorded):
    """A new best evaluation is staged (best.pt.staged) and becomes best.pt only with the checkpoint that records it:
    a kill before that checkpoint leaves the staged file, which resume removes (a later, worse evaluation then
    competes with the record); a kill after it, between the checkpoint and the rename, is completed by resume."""
    ckpt = load_checkpoint(run_copy / "checkpoint.pt")
    best = {"step": 300, "updates": ckpt["updates"], "episodes": ckpt["episodes"], "return": 50.0}
    if recorded:
        save_checkpoint(run_copy / "checkpoint.pt", {**ckpt, "best_eval": best})
    save_checkpoint(run_copy / "best.pt.staged", {"config": ckpt["config"], "agent": ckpt["agent"], **best})
    code, err = run_cli(capsys, "train", "--resume", "--logdir", str(run_copy), "--steps", "320", "--no-progress")
    assert code == 0, err
    assert not (run_copy / "best.pt.staged").exists()
    assert (run_copy / "best.pt").exists() == recorded
    after = load_checkpoint(run_copy / "checkpoint.pt")
    assert after["step"] == 320 and after["best_eval"] == (best if recorded else {})
