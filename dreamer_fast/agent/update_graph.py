"""The training update as one captured CUDA graph (``config.cuda_graphs``): the same function that runs eagerly on
the CPU, recorded once on the GPU and replayed for every batch, so that the host launches one graph instead of
thousands of kernels.

What makes the update capturable (see :meth:`dreamer_fast.agent.Agent.update`): no host reads (the non-finite skip
is a device mask, :func:`dreamer_fast.agent.masked_step.masked_step`), no data-dependent shapes, the samplers' Philox
key and offset on the device (:class:`dreamer_fast.PhiloxStream`), capturable AdamW with its learning rate and step
count as device tensors, and autocast without its weight cache. What stays outside the graph: the slow critic's copy
every ``slow_target_update`` updates (Python decides it from a counter) and the update count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Update = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


def resolve_cuda_graphs(value: str, device: torch.device, distributed: bool = False) -> bool:
    """Whether ``config.cuda_graphs`` (``"auto" | "on" | "off"``) captures the update on ``device``. ``auto`` is off:
    capture stays opt-in until a GPU run has checked it. ``on`` needs a CUDA device and one process."""
    if value not in ("auto", "on", "off"):
        raise ValueError(f"config `cuda_graphs` must be one of ('auto', 'on', 'off'), got {value!r}")
    if value != "on":
        return False
    if device.type != "cuda":
        raise ValueError(f"config `cuda_graphs` = 'on' needs a CUDA device, got device {str(device)!r}")
    if distributed:
        raise ValueError("config `cuda_graphs` = 'on' runs on one process; the distributed update is not captured")
    return True


class UpdateGraph:
    """Runs ``update(data)`` eagerly for the first ``warmup`` batches (on a side stream, as capture requires: the
    optimiser state and the allocator's pools settle), then captures it once into a ``torch.cuda.CUDAGraph`` on
    static input buffers and, from then on, copies each batch into those buffers and replays. Every call is one real
    update; the returned metrics are copies, so the next replay does not overwrite what the caller kept.

    The batch's shapes and dtypes must not change after capture (a replay batch always has ``[T, B]``)."""

    def __init__(self, update: Update, warmup: int = 2) -> None:
        self.update = update
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def __call__(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.update(data)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture(data)
        self._fill(data)
        self.graph.replay()
        return {k: v.clone() for k, v in self.outputs.items()}

    def _fill(self, data: Mapping[str, torch.Tensor]) -> None:
        for key, buffer in self.inputs.items():
            value = data[key]
            if value.shape != buffer.shape or value.dtype != buffer.dtype:
                raise ValueError(f"UpdateGraph: batch field {key!r} is {value.dtype} {list(value.shape)}; the graph was"
                                 f" captured for {buffer.dtype} {list(buffer.shape)}")
            buffer.copy_(value, non_blocking=True)

    def _capture(self, data: Mapping[str, torch.Tensor]) -> None:
        self.inputs = {k: v.clone() for k, v in data.items()}
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.update(self.inputs)
        self.graph = graph


__all__ = ["UpdateGraph", "resolve_cuda_graphs"]
