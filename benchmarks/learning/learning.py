"""Learning benchmark: a task trained for a fixed budget over several seeds, every seed's curve and greedy
evaluations kept, and one PNG per task with the published reference points beside ours.

    # one seed (resumes the seed's run when its logdir already holds one; run seeds one at a time on a small CPU)
    python benchmarks/learning/learning.py run --task dmc-proprio/cartpole_swingup --seed 0 --out runs/learning
    # every finished or running seed under --out: curves to <results>/<task>/seed<k>.csv, one PNG per task
    python benchmarks/learning/learning.py report --out runs/learning --results docs/results/learning

``run`` trains ``--config`` (default ``dmc,dmc_small``: DreamerV2's DMC settings at CPU size, 50k agent steps =
100k env steps, greedy evaluation of 3 episodes every 5k agent steps) with ``--threads 1`` into
``<out>/<task>/seed<k>/`` (``<task>`` with ``/`` as ``-``). ``report`` reads each seed's ``metrics.csv`` and
``config.yaml``, writes ``seed<k>.csv`` (rows ``kind,env_step,agent_step,return``; kind ``episode`` or ``eval``)
and ``seed<k>_config.yaml`` beside it, then draws ``<task>.png`` from every seed file in the results folder (seeds
run at different times accumulate there), with the points of ``anchors.yaml`` for the task and their sources.
Errors (unknown task, nothing to report, bad values) exit with status 2 and one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

from dreamer_fast.config import load_config
from dreamer_fast.training.atomic import atomic_write
from dreamer_fast.training.logger import _rolling_mean, read_metrics

ANCHORS = Path(__file__).resolve().parent / "anchors.yaml"
SEED_DIR = re.compile(r"^seed(\d+)$")
SEED_CSV = re.compile(r"^seed(\d+)\.csv$")


def task_slug(env_id: str) -> str:
    """``dmc-proprio/cartpole_swingup`` -> ``dmc-proprio-cartpole_swingup`` (a folder and file name)."""
    return env_id.replace("/", "-")


def run(task: str, seed: int, out: Path, preset: str, overrides: dict[str, str]) -> Path:
    """Trains (or resumes) one seed of ``task``; returns its logdir."""
    from dreamer_fast.envs import make_env
    from dreamer_fast.training.loop import train
    from dreamer_fast.training.resume import read_run_config

    logdir = out / task_slug(task) / f"seed{seed}"
    values = {"env": task, "seed": seed, "threads": 1, **overrides}
    resume = (logdir / "checkpoint.pt").is_file()
    config = read_run_config(logdir, {}, preset) if resume else load_config(preset, values)
    if not resume:
        make_env(config, seed).close()  # an unknown task or missing GL fails here, before anything is written
        logdir.parent.mkdir(parents=True, exist_ok=True)
    result = train(config, logdir, resume=resume, progress=False)
    print(f"{task} seed {seed}: {'interrupted' if result['interrupted'] else 'finished'} at step {result['step']:,}; "
          f"{logdir}")
    return logdir


def seed_rows(logdir: Path) -> tuple[list[tuple[str, int, int, float]], dict]:
    """A run's episode returns and greedy-evaluation means as ``(kind, env_step, agent_step, return)``, and its
    config."""
    config = yaml.safe_load((logdir / "config.yaml").read_text())
    repeat = int(config["action_repeat"])
    series = read_metrics(logdir)
    rows = []
    for kind, name in (("episode", "episode/return"), ("eval", "eval/return")):
        steps, values = series.get(name, (np.zeros(0, np.int64), np.zeros(0)))
        rows += [(kind, int(s) * repeat, int(s), float(v)) for s, v in zip(steps, values)]
    return rows, config


def _csv_bytes(rows: list[tuple[str, int, int, float]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["kind", "env_step", "agent_step", "return"])
    writer.writerows((k, e, a, f"{v:.4f}") for k, e, a, v in rows)
    return text.getvalue().encode()


def collect(out: Path, results: Path) -> list[str]:
    """Copies every seed under ``out`` into ``results/<task>/``; returns the task folders written."""
    tasks = []
    for task_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        seeds = sorted(p for p in task_dir.iterdir() if SEED_DIR.match(p.name) and (p / "metrics.csv").is_file())
        if not seeds:
            continue
        dest = results / task_dir.name
        dest.mkdir(parents=True, exist_ok=True)
        for logdir in seeds:
            rows, _ = seed_rows(logdir)
            atomic_write(dest / f"{logdir.name}.csv", lambda f, r=rows: f.write(_csv_bytes(r)))
            shutil.copyfile(logdir / "config.yaml", dest / f"{logdir.name}_config.yaml")
        tasks.append(task_dir.name)
    return tasks


def read_seed_csv(path: Path) -> dict[str, np.ndarray]:
    """``{kind: [N, 2] (env_step, return)}`` of a seed file."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {kind: np.array([(float(r["env_step"]), float(r["return"])) for r in rows if r["kind"] == kind],
                           np.float64).reshape(-1, 2) for kind in ("episode", "eval")}


def anchors_for(slug: str) -> list[dict]:
    """The published points of the task a results folder holds (matched on ``<domain>_<task>``)."""
    table = yaml.safe_load(ANCHORS.read_text()) or {}
    return table.get(slug.split("-")[-1], [])


def plot_task(folder: Path, window: int = 10) -> Path:
    """``<folder>.png``-named plot inside ``folder``: each seed's rolling-mean episode return, its greedy evaluations
    and the published points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted((int(SEED_CSV.match(p.name).group(1)), p) for p in folder.iterdir() if SEED_CSV.match(p.name))
    if not seeds:
        raise ValueError(f"{folder}: no seed<k>.csv files to plot")
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (seed, path) in enumerate(seeds):
        data, color = read_seed_csv(path), colors[i % len(colors)]
        episodes, evals = data["episode"], data["eval"]
        if len(episodes):
            ax.plot(episodes[:, 0], _rolling_mean(episodes[:, 1], window), color=color, lw=1.2,
                    label=f"seed {seed}: episode return (mean of {window})")
        if len(evals):
            ax.plot(evals[:, 0], evals[:, 1], "o--", color=color, ms=4, lw=0.8, label=f"seed {seed}: greedy eval")
    sources = []
    for marker, anchor in zip("s^Dv", anchors_for(folder.name)):
        points = sorted(anchor["points"].items())
        ax.plot([p[0] for p in points], [p[1] for p in points], marker, color="black", ms=8, mfc="none", ls="none",
                label=f"{anchor['source']}, {anchor['obs']}")
        sources.append(anchor["source"])
    config = yaml.safe_load((folder / f"seed{seeds[0][0]}_config.yaml").read_text()) \
        if (folder / f"seed{seeds[0][0]}_config.yaml").is_file() else {}
    budget = int(config.get("steps", 0)) * int(config.get("action_repeat", 1))
    ax.set_title(f"{config.get('env', folder.name)}: {len(seeds)} seed(s), budget {budget:,} env steps"
                 if config else folder.name, fontsize=10)
    ax.set_xlabel("env steps (agent steps x action repeat)")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if sources:
        fig.text(0.01, 0.01, "published points: " + "; ".join(sources), fontsize=6)
    path = folder / f"{folder.name}.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def report(out: Path | None, results: Path) -> list[Path]:
    """Collects the runs under ``out`` (if given) into ``results``, then plots every task folder there."""
    if out is not None:
        if not out.is_dir():
            raise ValueError(f"--out {out} is not a folder of runs")
        collect(out, results)
    folders = sorted(p for p in results.iterdir() if p.is_dir() and any(SEED_CSV.match(q.name) for q in p.iterdir())) \
        if results.is_dir() else []
    if not folders:
        raise ValueError(f"nothing to report: no <task>/seed<k>.csv under {results} (and no runs under --out)")
    return [plot_task(folder) for folder in folders]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one seed of a task (resumes it when its logdir holds a run)")
    r.add_argument("--task", required=True, help="env id, e.g. dmc-proprio/cartpole_swingup or dmc/walker_walk")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True, help="runs go to <out>/<task>/seed<k>/")
    r.add_argument("--config", default="dmc,dmc_small", help="presets (default dmc,dmc_small)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p = sub.add_parser("report", help="seed curves to CSV and one PNG per task with the published points")
    p.add_argument("--out", type=Path, default=None, help="the runs folder of `run` (omit to replot --results)")
    p.add_argument("--results", type=Path, required=True, help="e.g. docs/results/learning")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            if args.seed < 0:
                raise ValueError(f"--seed must be >= 0, got {args.seed}")
            bad = [item for item in args.set if "=" not in item]
            if bad:
                raise ValueError(f"--set expects KEY=VALUE, got {bad[0]!r}")
            run(args.task, args.seed, args.out, args.config, dict(item.split("=", 1) for item in args.set))
        else:
            for path in report(args.out, args.results):
                print(path)
    except (ValueError, OSError) as e:
        print(f"learning: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
