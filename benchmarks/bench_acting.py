"""Agent steps/s of the training loop with ``--num_envs N``: ``python benchmarks/bench_acting.py [options]``.

Each N runs ``dreamer-fast train`` in a fresh process (atari preset, no prefill, so every step runs the policy) and
reads ``perf/env_steps_per_s`` from its metrics.csv: the mean over the log intervals after the first (which holds the
start-up). ``acting`` trains never (``train_every`` beyond ``steps``); ``train`` trains at the preset's ratio
(``train_every`` 16: one update of 16 x 50 steps per 16 agent steps) and is timed over the intervals after the first
one with updates: training starts once the replay holds a chunk (200 steps of each environment), so such a run is
``200 N + --steps`` steps long.

    python benchmarks/bench_acting.py --env atari/Pong --num-envs 1 4 16 --steps 1600 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def steps_per_second(env: str, num_envs: int, steps: int, log_every: int, threads: int, train: bool,
                     vector_env: str) -> float:
    """The mean ``perf/env_steps_per_s`` of one run after its first log interval (with ``train``: its first interval
    with updates)."""
    if train:
        steps += 4 * 50 * num_envs  # the first replay chunks: 4 batch lengths of each environment
    with tempfile.TemporaryDirectory(prefix="bench_acting_") as tmp:
        logdir = Path(tmp) / "run"
        args = [sys.executable, "-m", "dreamer_fast", "train", "--config", "atari", "--env", env, "--logdir",
                str(logdir), "--no-progress", "--steps", str(steps), "--num_envs", str(num_envs), "--prefill", "0",
                "--threads", str(threads), "--log_every", str(log_every), "--checkpoint_every", str(10 * steps),
                "--vector_env", vector_env, "--train_every", "16" if train else str(10 * steps)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with open(logdir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    rates = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "perf/env_steps_per_s"}
    updates = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "perf/updates_per_s"}
    timed = sorted(s for s in rates if updates[s] > 0) if train else sorted(rates)
    if len(timed) < 2:
        raise SystemExit(f"num_envs {num_envs}: {len(timed)} timed log interval(s); raise --steps")
    values = [rates[s] for s in timed[1:]]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="atari/Pong")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=1600, help="agent steps per run (all envs together)")
    parser.add_argument("--log-every", type=int, default=320, help="steps per timed interval")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vector-env", default="auto", choices=("auto", "async", "sync"))
    parser.add_argument("--train", action="store_true", help="also at the atari preset's train ratio")
    args = parser.parse_args()
    print(f"# {cpu_name()}, {args.threads} torch thread(s), {args.env}, vector_env {args.vector_env}, "
          f"{time.strftime('%H:%M')}")
    modes = [False, True] if args.train else [False]
    print(f"{'num_envs':>8} " + " ".join(f"{'train' if t else 'acting':>16}" for t in modes) + "   (agent steps/s)")
    base: dict[bool, float] = {}
    for n in args.num_envs:
        cells = []
        for train in modes:
            rate = steps_per_second(args.env, n, args.steps, args.log_every, args.threads, train, args.vector_env)
            base.setdefault(train, rate)
            cells.append(f"{rate:8.1f} ({rate / base[train]:4.2f}x)")
        print(f"{n:>8} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
