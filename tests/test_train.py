"""End to end: the `dreamer-fast` command with the debug preset (a few hundred env steps), checkpoint, resume, eval,
Ctrl-C, and the clear errors of bad configs, env ids and checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dreamer_fast.training.checkpoint import load_checkpoint
from dreamer_fast.cli import main
from dreamer_fast.config import CHOICES, Config, field_docs, load_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> int:
    return main([*args])


def metrics(logdir: Path) -> list[dict]:
    with open(logdir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_resume_eval_cartpole(tmp_path, capsys):
    logdir = tmp_path / "cartpole"
    assert run_cli("train", "--config", "debug", "--logdir", str(logdir), "--steps", "300", "--no-progress") == 0
    for name in ("checkpoint.pt", "config.yaml", "metrics.csv", "curve.png", "losses.png"):
        assert (logdir / name).is_file(), name
    assert list((logdir / "tb").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["step"] == 300
    # prefill 100, train every 16 steps from there: (300 - 100) / 16 updates, give or take the boundaries
    assert 11 <= ckpt["updates"] <= 14
    rows = metrics(logdir)
    names = {r["name"] for r in rows}
    assert "episode/return" in names and "perf/env_steps_per_s" in names
    assert any(n.startswith("train/") or n.startswith("model/") for n in names), names
    replay_files = sorted((logdir / "replay").glob("*.npz"))
    assert replay_files

    # Resume: the saved config plus more steps; the counters continue and the CSV grows.
    assert run_cli("train", "--resume", "--logdir", str(logdir), "--steps", "400", "--no-progress") == 0
    ckpt2 = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt2["step"] == 400 and ckpt2["updates"] > ckpt["updates"]
    assert len(metrics(logdir)) > len(rows)
    assert "resumed" in capsys.readouterr().out

    assert run_cli("eval", "--checkpoint", str(logdir / "checkpoint.pt"), "--episodes", "2") == 0
    out = capsys.readouterr().out
    assert "2 greedy episodes after 400 steps" in out


def test_periodic_eval_keeps_the_best_agent(tmp_path, capsys):
    """eval_every: greedy evaluations during training (logged as eval/return), the best one's agent in best.pt, which
    `dreamer-fast eval` loads; resume keeps the best so far."""
    logdir = tmp_path / "run"
    args = ["--config", "debug", "--logdir", str(logdir), "--no-progress", "--set", "eval_every=100",
            "--set", "eval_episodes=2"]
    assert run_cli("train", *args, "--steps", "300") == 0
    evals = [(int(r["step"]), float(r["value"])) for r in metrics(logdir) if r["name"] == "eval/return"]
    # prefill 100 (the first update is at step 100), evaluations at 100, 200 and 300, then the final one at 300
    assert [step for step, _ in evals] == [100, 200, 300, 300], evals
    best = load_checkpoint(logdir / "best.pt")
    periodic = evals[:3]
    assert best["return"] == max(v for _, v in periodic)
    assert best["step"] == next(step for step, v in periodic if v == best["return"])  # the first of equal bests
    assert set(best["agent"]) == set(load_checkpoint(logdir / "checkpoint.pt")["agent"])
    assert load_checkpoint(logdir / "checkpoint.pt")["best_eval"]["return"] == best["return"]

    assert run_cli("train", "--resume", "--logdir", str(logdir), "--steps", "400", "--no-progress") == 0
    best2 = load_checkpoint(logdir / "best.pt")
    evals2 = [(int(r["step"]), float(r["value"])) for r in metrics(logdir) if r["name"] == "eval/return"]
    assert [step for step, _ in evals2][4:] == [400, 400]
    assert best2["return"] == max(best["return"], evals2[4][1])
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", str(logdir / "best.pt"), "--episodes", "1") == 0
    assert f"1 greedy episodes after {best2['step']} steps" in capsys.readouterr().out


def test_atari_debug_run_writes_open_loop_gif(tmp_path):
    logdir = tmp_path / "pong"
    code = run_cli("train", "--config", "debug", "--env", "atari/Pong", "--logdir", str(logdir), "--steps", "160",
                   "--set", "prefill=100", "--set", "train_every=20", "--no-progress")
    assert code == 0
    assert list(logdir.glob("openloop_*.gif"))
    # log_every is 100: the periodic log at 100 steps, and the final one at 160 with what came after
    logged = {(r["step"], r["name"]) for r in metrics(logdir)}
    assert ("100", "train/updates") in logged and ("160", "train/updates") in logged
    assert ("160", "model/loss") in logged
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["config"]["env"] == "atari/Pong" and ckpt["updates"] >= 2


def test_existing_run_needs_resume(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert run_cli("train", "--config", "debug", "--logdir", str(logdir), "--steps", "120", "--no-progress") == 0
    assert run_cli("train", "--config", "debug", "--logdir", str(logdir), "--steps", "120", "--no-progress") == 2
    assert "pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--env", "atari/NoSuchGame"], "NoSuchGame"),
    (["--env", "gym/NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--set", "discount=1.5"], "`discount`"),
    (["--set", "replay_ends=-0.1"], "`replay_ends`"),
    (["--batch_size", "0"], "`batch_size`"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--set", "eval_every=100"], "`eval_every`"),
    (["--config", "nope"], "unknown config preset"),
    (["--config", "debug,nope"], "unknown config preset 'nope'"),
    (["--config", "debug,"], "non-empty names"),
])  # fmt: skip
def test_bad_config_is_a_clear_error(tmp_path, capsys, args, message):
    code = run_cli("train", "--config", "debug", "--logdir", str(tmp_path / "x"), "--no-progress", *args)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamer-fast: error:") and message in err, err


def resolved(capsys, *args: str) -> dict:
    assert run_cli("config", *args) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_config_presets_stack_left_to_right_then_overrides(capsys):
    """`--config a,b` = `--config a --config b`: a, then b over the defaults; then `--key value`, then `--set`."""
    stacked = resolved(capsys, "--config", "cartpole,pendulum")
    assert stacked == resolved(capsys, "--config", "cartpole", "--config", "pendulum") == \
        load_config(["cartpole", "pendulum"]).to_dict()
    assert stacked["env"] == "gym/Pendulum-v1" and stacked["actor_grad"] == "dynamics"  # pendulum's, applied last
    assert resolved(capsys, "--config", "pendulum,cartpole")["env"] == "gym/CartPole-v1"
    assert stacked["time_limit"] == 0 != Config().time_limit  # set by both
    assert resolved(capsys)["bf16"] == "auto"  # the default preset is atari
    over = resolved(capsys, "--config", "atari,debug", "--deter", "48", "--set", "stoch=8", "--stoch", "6")
    assert over == {**load_config("atari,debug").to_dict(), "deter": 48, "stoch": 8}
    assert over["bf16"] == "auto" and over["env"] == "gym/CartPole-v1"  # atari's bf16, debug's env


def test_train_help_lists_every_config_key(capsys):
    """`train --help` shows each key with its type (or choices), default and the field's comment in config.py."""
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", "--help")
    assert exit_.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse re-wraps lines (and breaks words at hyphens)
    docs = field_docs()
    for f in dataclasses.fields(Config):
        kind = "|".join(CHOICES[f.name]) if f.name in CHOICES else f.type
        default = f.default if isinstance(f.default, str) else yaml.safe_dump(f.default).split()[0]
        assert docs[f.name].doc and f"--{f.name}{f.type.upper()}{kind},default{default}:" in text, f.name
        assert "".join(docs[f.name].doc.split()) in text, f.name
    assert "policy(agent)stepsintotal" in text and "consecutiveupdateswithanon-finitelossorgradnorm" in text


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    assert run_cli("eval", "--checkpoint", str(bad)) == 2
    assert "dreamer-fast: error:" in capsys.readouterr().err
    assert run_cli("eval", "--checkpoint", str(tmp_path / "missing.pt")) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert run_cli("train", "--resume", "--logdir", str(tmp_path / "empty")) == 2
    assert "nothing to resume" in capsys.readouterr().err


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a non-interactive shell starts `cmd &`


@pytest.mark.parametrize("how", ["sigint", "sigterm", "sigint-started-ignored"])
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, how):
    """Ctrl-C (SIGINT) and SIGTERM save and exit with 130, also when the process inherited SIGINT ignored."""
    logdir = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamer_fast", "train", "--config", "debug", "--logdir", str(logdir),
         "--steps", "1000000", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_ignore_sigint if how == "sigint-started-ignored" else None)
    deadline = time.time() + 120
    while not (logdir / "tb").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # let it collect a little
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted at step" in out
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert 0 < ckpt["step"] < 1000000
