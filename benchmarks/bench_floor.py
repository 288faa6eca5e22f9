"""The floor of one Atari update on the running CPU, counted: every GEMM and convolution of the update (forward and
backward, recorded from one reference-backend update, whose ops are plain ATen), replayed alone, each at the faster of
ATen's kernel and oneDNN's matmul. Their FLOPs (torch.utils.flop_counter) over that time is the CPU class's rate at
the update's own shapes. The update cannot run faster than its GEMMs and convs; the ratio update / floor is what the
rest (elementwise chains, the recurrences' Python and dispatch, copies) costs.

Run:  pytest benchmarks/bench_floor.py --benchmark-only -s     (prints the floor and the ratios)
Under the AVX2 class's paths on any CPU:
      DREAMER_FAST_CPU_PROFILE=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ...
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from bench_agent import train_update
from conftest import cpu_description
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten
RECORDED = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.convolution.default,
            aten.convolution_backward.default}


class _Recorder(TorchDispatchMode):
    """Each GEMM/conv call's op and arguments, tensors kept as (shape, stride, dtype) only."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in RECORDED:
            spec = tuple(("T", tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor)
                         else ("V", tuple(a) if isinstance(a, list) else a) for a in args)
            self.calls.append((func, spec))
        return func(*args, **(kwargs or {}))


def _rebuild(spec: tuple) -> list:
    out = []
    for kind, *rest in spec:
        if kind == "T":
            shape, stride, dtype = rest
            out.append(torch.empty_strided(shape, stride, dtype=dtype).normal_())
        else:
            out.append(list(rest[0]) if isinstance(rest[0], tuple) else rest[0])
    return out


def _best_time(fn: Callable, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _onednn_variant(func, args) -> Callable | None:
    """The same float32 product as oneDNN's matmul (`x @ w^T + b`), where the call is an mm/addmm."""
    if not torch.backends.mkldnn.is_available() or func not in (aten.mm.default, aten.addmm.default):
        return None
    if args[1].dtype != torch.float32:
        return None
    if func is aten.mm.default:
        x, w, b = args[0], args[1].t(), None
    elif func is aten.addmm.default and args[0].dim() == 1 and len(args) == 3:
        b, x, w = args[0], args[1], args[2].t()
    else:
        return None
    return lambda: torch.ops.mkldnn._linear_pointwise(x.contiguous(), w.contiguous(), b, "none", [], None)


def update_floor(preset: str = "atari", reps: int = 3) -> dict:
    """Records one `preset` update on the reference backend and replays its GEMMs/convs alone."""
    update = train_update(preset, "reference", warm=True)
    recorder, flops = _Recorder(), FlopCounterMode(display=False)
    with recorder, flops:
        update()
    total_flops = flops.get_total_flops()
    unique = Counter(recorder.calls)
    floor = 0.0
    for (func, spec), count in unique.items():
        args = _rebuild(spec)
        t = _best_time(lambda: func(*args), reps)
        alt = _onednn_variant(func, args)
        if alt is not None:
            t = min(t, _best_time(alt, reps))
        floor += t * count
    return {"flops": total_flops, "calls": len(recorder.calls), "floor_s": floor,
            "gflops_per_s": total_flops / floor / 1e9}


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_update_over_floor(benchmark, backend, capsys):
    """The `atari` float32 update on `backend` against the floor counted in the same run."""
    benchmark.group = "atari update (float32) over its counted GEMM + conv floor"
    reps = 1 if benchmark.disabled else 3
    floor = update_floor("atari", reps=reps)
    update = train_update("atari", backend, warm=not benchmark.disabled)
    benchmark.pedantic(update, rounds=reps, iterations=1)
    best = benchmark.stats.stats.min if benchmark.stats else float("nan")
    benchmark.extra_info.update(floor, ratio=best / floor["floor_s"])
    with capsys.disabled():
        print(f"\n[{cpu_description()}] {backend}: update {best:.2f} s, floor {floor['floor_s']:.2f} s "
              f"({floor['flops'] / 1e9:.0f} GFLOP in {floor['calls']} GEMM/conv calls at "
              f"{floor['gflops_per_s']:.0f} GFLOP/s), update/floor {best / floor['floor_s']:.2f}")
