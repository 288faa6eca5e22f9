"""Shared benchmark helpers: every op is timed as fused vs eager reference vs torch.compile(reference) in one run.

Run:  pytest benchmarks/ --benchmark-only            (timings; ratios within a group are in the table)
      pytest benchmarks/ --benchmark-disable         (smoke: each case runs once, as CI does)
"""

from __future__ import annotations

import atexit
import functools
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import pytest
import torch

# torch.compile's on-disk cache outlives the extension it compiled against: a cache entry written with another build of
# dreamer_fast._C (an older checkout, another profile) can crash when loaded. A run gets its own, unless one is set.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dreamer_fast_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import dreamer_fast

# As `dreamer-fast train` does: keep freed memory for reuse instead of page-faulting fresh mmaps (applies to every
# implementation in a comparison alike; see dreamer_fast/_memory.py).
dreamer_fast.keep_freed_memory()


@functools.cache
def cpu_description() -> str:
    """The CPU model, the profile its paths follow and the features that decide the bf16 ratios (AMX makes bf16 GEMMs
    ~6x float32; without it, with avx512_bf16, ~2x): ratios measured on different CPUs or profiles are not
    comparable (docs/PERFORMANCE.md)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    if not dreamer_fast.extension_loaded():
        return f"{model}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; extension not loaded"
    f = dreamer_fast.cpu_features()
    features = ", ".join(f"{name}: {'yes' if f[key] else 'no'}"
                         for name, key in (("AMX-bf16", "amx_bf16"), ("AVX512-bf16", "avx512_bf16")))
    return (f"{model}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; profile {f['profile']} "
            f"(ATen {f['aten_capability']}, GEMMs {dreamer_fast.cpu_gemm()}); {features}")


def pytest_report_header(config) -> str:
    return f"dreamer_fast benchmarks on: {cpu_description()}"


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["dreamer_fast_cpu"] = cpu_description()


_compiled: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn) (inductor, static shapes), built once per function for the whole pytest run."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def fwd_bwd(fn: Callable, inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor] | None = None):
    """A closure running forward and backward of ``fn(*inputs)`` into ``inputs`` (those that require grad)."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def run():
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        outs = [o for o in outs if o.requires_grad]
        gs = list(grads) if grads is not None else [torch.ones_like(o) for o in outs]
        return torch.autograd.grad(outs, leaves, gs[: len(outs)])

    return run


def warm(run: Callable, times: int = 3) -> None:
    """Compile and warm caches outside the timed region."""
    for _ in range(times):
        run()


_ratios: list[str] = []


@pytest.fixture
def interleaved_ratio():
    """``measure(benchmark, name, a, b, rounds)``: time ``a`` and ``b`` back to back in each of ``rounds`` rounds, in
    alternating order (a b, b a, ...) so that drift of the machine falls on both alike, and report time(a)/time(b)
    as the median of the per-round ratios (a line at the end of the run and ``extra_info``). The pytest-benchmark
    time of the case is that of one pair. Under --benchmark-disable it runs one round (a smoke test)."""

    def measure(benchmark, name: str, a: Callable, b: Callable, rounds: int) -> None:
        runs = {"a": a, "b": b}
        times: dict[str, list[float]] = {"a": [], "b": []}

        def pair():
            order = ("a", "b") if len(times["a"]) % 2 == 0 else ("b", "a")
            for key in order:
                t0 = time.perf_counter()
                runs[key]()
                times[key].append(time.perf_counter() - t0)

        benchmark.pedantic(pair, rounds=rounds, iterations=1)
        ratio = statistics.median(x / y for x, y in zip(times["a"], times["b"]))
        med_a, med_b = statistics.median(times["a"]), statistics.median(times["b"])
        benchmark.extra_info.update(ratio=ratio, median_a_s=med_a, median_b_s=med_b, rounds=len(times["a"]))
        _ratios.append(f"{name}: {ratio:.3f} (median of {len(times['a'])} interleaved rounds; medians "
                       f"{med_a * 1e3:.1f} ms / {med_b * 1e3:.1f} ms)")

    return measure


def pytest_terminal_summary(terminalreporter) -> None:
    if _ratios:
        terminalreporter.section("interleaved ratios")
        for line in _ratios:
            terminalreporter.write_line(line)
