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


class UpdateFloor:
    """One `preset` update recorded on the reference backend; :meth:`replay` runs its GEMMs/convs alone, each in the
    faster of ATen's kernel and oneDNN's matmul (chosen once). The reference's convs are NCHW: the fused backend's
    channels-last convs can beat this floor where oneDNN is faster in that layout."""

    def __init__(self, preset: str = "atari") -> None:
        update = train_update(preset, "reference", warm=True)
        recorder, flops = _Recorder(), FlopCounterMode(display=False)
        with recorder, flops:
            update()
        self.flops, self.calls = flops.get_total_flops(), len(recorder.calls)
        self.ops = []
        for (func, spec), count in Counter(recorder.calls).items():
            args = _rebuild(spec)
            run = lambda func=func, args=args: func(*args)  # noqa: E731
            alt = _onednn_variant(func, args)
            if alt is not None and _best_time(alt, 2) < _best_time(run, 2):
                run = alt
            self.ops.append((run, count))
        self.best = [float("inf")] * len(self.ops)

    def replay(self) -> float:
        """Runs every recorded GEMM/conv once; returns the floor so far: each op's best time over all replays, times
        the number of calls the update makes to it."""
        for i, (run, _) in enumerate(self.ops):
            self.best[i] = min(self.best[i], _best_time(run, 1))
        return sum(t * count for t, (_, count) in zip(self.best, self.ops))


def test_update_over_floor(benchmark, capsys):
    """The `atari` float32 update, fused and reference backends, against its floor: the three timed in turn in every
    round (the machine's drift hits all alike), the minimum of each over the rounds."""
    benchmark.group = "atari update (float32) over its counted GEMM + conv floor"
    rounds = 1 if benchmark.disabled else 3
    floor = UpdateFloor("atari")
    updates = {b: train_update("atari", b, warm=not benchmark.disabled) for b in ("fused", "reference")}
    times: dict[str, list[float]] = {"floor": [], "fused": [], "reference": []}

    def one_round() -> None:
        times["floor"].append(floor.replay())
        for name, update in updates.items():
            t0 = time.perf_counter()
            update()
            times[name].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    best = {k: min(v) for k, v in times.items()}
    benchmark.extra_info.update(flops=floor.flops, calls=floor.calls, **{f"{k}_s": v for k, v in best.items()},
                                fused_over_floor=best["fused"] / best["floor"],
                                reference_over_floor=best["reference"] / best["floor"],
                                reference_over_fused=best["reference"] / best["fused"])
    with capsys.disabled():
        print(f"\n[{cpu_description()}] floor {best['floor']:.2f} s ({floor.flops / 1e9:.0f} GFLOP in {floor.calls} "
              f"GEMM/conv calls, {floor.flops / best['floor'] / 1e9:.0f} GFLOP/s); fused {best['fused']:.2f} s "
              f"({best['fused'] / best['floor']:.2f}x floor), reference {best['reference']:.2f} s "
              f"({best['reference'] / best['floor']:.2f}x floor, {best['reference'] / best['fused']:.2f}x fused)")
