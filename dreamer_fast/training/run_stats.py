"""Running statistics of a training run: the finished episodes per environment, and the updates' metrics kept on
the device until a log reads them."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from dreamer_fast.agent.world_model import SPARSE_METRICS


class EpisodeStats:
    """Per-environment running return and length; the finished episodes' statistics since the last log."""

    def __init__(self, n: int) -> None:
        self.ret = np.zeros(n)
        self.length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []

    def add(self, i: int, step: dict) -> None:
        if step["is_first"]:
            self.ret[i], self.length[i] = 0.0, 0
            return
        self.ret[i] += float(step["reward"])
        self.length[i] += 1
        if step["is_last"]:
            self.finished.append((float(self.ret[i]), int(self.length[i])))


class MetricMeans:
    """Running sums of the updates' metrics (0-d tensors), kept on the device that computed them, so an update never
    waits for the host; :meth:`means` reads them all at once (one copy per device). A metric of
    :data:`~dreamer_fast.world_model.SPARSE_METRICS` averages only the updates where it is not NaN."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor | int] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            count: torch.Tensor | int = 1
            if key in SPARSE_METRICS:
                count = (~value.isnan()).float()
                value = value.nan_to_num(nan=0.0)
            if key in self.sums:  # out of place: `value` may share storage with the caller's tensors
                self.sums[key] = self.sums[key] + value
                self.counts[key] = self.counts[key] + count
            else:
                self.sums[key], self.counts[key] = value, count

    def means(self) -> dict[str, float]:
        keys = list(self.sums)
        tensor_counts = [c for c in self.counts.values() if isinstance(c, torch.Tensor)]
        values = read_scalars([self.sums[k] for k in keys] + tensor_counts)
        sums, rest = values[:len(keys)], iter(values[len(keys):])
        counts = [next(rest) if isinstance(self.counts[k], torch.Tensor) else self.counts[k] for k in keys]
        return {k: total / n for k, total, n in zip(keys, sums, counts) if n}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()


def read_scalars(tensors: list[torch.Tensor]) -> list[float]:
    """The values of 0-d tensors, with one device-to-host copy per device they live on."""
    out = [0.0] * len(tensors)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        by_device[t.device].append(i)
    for index in by_device.values():
        for i, value in zip(index, torch.stack([tensors[i] for i in index]).tolist()):
            out[i] = value
    return out
