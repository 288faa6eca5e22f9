"""Training logs: TensorBoard events plus a long-format CSV, GIFs, and PNG plots made from the CSV.

``Logger(logdir)`` writes scalars to ``logdir/tb`` (TensorBoard) and ``logdir/metrics.csv`` (rows
``step,name,value``; an existing file is appended to, so a resumed run continues it). CSV rows are held in memory
and appended in one write at :meth:`Logger.flush`, so the file only ever grows by whole flushes. ``plot(logdir)`` turns the CSV
into ``curve.png`` (``episode/return`` against step) and ``losses.png`` (every training metric: ``model/``, ``actor/``, ``critic/``, ``imag/``, ``train/``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

CSV_NAME = "metrics.csv"
_HEADER = ["step", "name", "value"]



TRAINING_PREFIXES = ("model/", "actor/", "critic/", "imag/", "train/")  # the metrics losses.png shows

class Logger:
    """Writes scalars to TensorBoard and CSV, and GIFs to ``logdir``.

    Args:
        logdir: the run's folder (created if missing).
        purge_step: TensorBoard hides this run's earlier events from this step on (a resumed run's checkpoint step
            plus one: what was logged after the checkpoint is logged again).
    """

    def __init__(self, logdir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a Logger is made

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.logdir / "tb"), purge_step=purge_step)
        path = self.logdir / CSV_NAME
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._rows = io.StringIO()
        self._csv = csv.writer(self._rows)
        if new:
            self._csv.writerow(_HEADER)
            self.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        """Records ``value`` (anything ``float()`` accepts: a number, 0-d array or tensor) for ``name`` at ``step``."""
        value = float(value)
        self.writer.add_scalar(name, value, step)
        self._csv.writerow([int(step), name, repr(value)])

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            self.scalar(name, value, step)

    def gif(self, name: str, frames: np.ndarray, step: int, fps: int = 16) -> Path:
        """Writes ``frames`` (``[T, H, W, C]`` uint8, C 1 or 3) to ``logdir/<name>_<step>.gif``; returns the path.

        TensorBoard gets the frames as an image grid (its video summaries need moviepy).
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3) or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"Logger.gif: frames must be a non-empty [T, H, W, C] uint8 array with C 1 or 3, "
                             f"got shape {frames.shape} and dtype {frames.dtype}")
        images = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
        path = self.logdir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}_{int(step)}.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
        self.writer.add_images(name, frames, step, dataformats="NHWC")
        return path

    def flush(self) -> None:
        """Appends the rows since the last flush to metrics.csv in one write; flushes TensorBoard."""
        rows = self._rows.getvalue()
        if rows:
            self._file.write(rows)
            self._file.flush()
            self._rows.seek(0)
            self._rows.truncate()
        self.writer.flush()

    def csv_bytes(self) -> int:
        """The size of metrics.csv after a flush (a checkpoint records it; resume cuts the file back to it)."""
        self.flush()
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()
        self.writer.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(logdir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.csv`` as ``{name: (steps [N] int64, values [N] float64)}``, rows in file order."""
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    with open(Path(logdir) / CSV_NAME, newline="") as f:
        for row in csv.DictReader(f):
            steps, values = series[row["name"]]
            steps.append(int(row["step"]))
            values.append(float(row["value"]))
    return {name: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for name, (s, v) in series.items()}


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot(logdir: str | Path, window: int = 20) -> list[Path]:
    """Writes ``logdir/curve.png`` (``episode/return`` vs step, with a ``window``-episode rolling mean and the greedy
    evaluations' means) and ``logdir/losses.png`` (one subplot per training metric, see ``TRAINING_PREFIXES``) from
    ``metrics.csv``; returns both paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    logdir = Path(logdir)
    metrics = read_metrics(logdir)

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if "episode/return" in metrics:
        steps, values = metrics["episode/return"]
        ax.plot(steps, values, ".", alpha=0.3, label="episode return")
        ax.plot(steps, _rolling_mean(values, window), label=f"rolling mean ({window} episodes)")
        if "eval/return" in metrics:  # greedy evaluations (periodic with eval_every, and the final one)
            ax.plot(*metrics["eval/return"], "s-", markersize=4, label="greedy evaluation (mean)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no 'episode/return' in metrics.csv", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"Episode return — {logdir.name}", xlabel="step", ylabel="return")
    ax.grid(alpha=0.3)
    curve = logdir / "curve.png"
    fig.savefig(curve, dpi=100, bbox_inches="tight")

    names = sorted(n for n in metrics if n.startswith(TRAINING_PREFIXES))
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.5 * cols, 2.6 * rows))
    FigureCanvasAgg(fig)
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"no {'/'.join(TRAINING_PREFIXES)} metrics in metrics.csv", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = metrics[name]
        ax.plot(steps, values, lw=1, marker="." if len(steps) <= 50 else None)  # few points: make each one visible
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training metrics — {logdir.name}")
    fig.tight_layout()
    losses = logdir / "losses.png"
    fig.savefig(losses, dpi=100)
    return [curve, losses]
