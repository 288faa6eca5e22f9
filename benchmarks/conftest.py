"""Shared benchmark helpers: every op is timed as fused vs eager reference vs torch.compile(reference) in one run.

Run:  pytest benchmarks/ --benchmark-only            (timings; ratios within a group are in the table)
      pytest benchmarks/ --benchmark-disable         (smoke: each case runs once, as CI does)
"""

from __future__ import annotations

import functools
import os
import platform
from collections.abc import Callable, Sequence

import torch

import dreamer_fast

# As `dreamer-fast train` does: keep freed memory for reuse instead of page-faulting fresh mmaps (applies to every
# implementation in a comparison alike; see dreamer_fast/_memory.py).
dreamer_fast.keep_freed_memory()


@functools.cache
def cpu_description() -> str:
    """The CPU model and the features that decide the bf16 ratios (AMX makes bf16 GEMMs ~6x float32; without it,
    with avx512_bf16, ~2x): ratios measured on different CPUs are not comparable (docs/PERFORMANCE.md)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    features = ", ".join(f"{name}: {'yes' if flag in flags else 'no'}"
                         for name, flag in (("AMX-bf16", "amx_bf16"), ("AVX512-bf16", "avx512_bf16")))
    return f"{model}; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; {features}"


def pytest_report_header(config) -> str:
    return f"dreamer_fast benchmarks on: {cpu_description()}"


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["dreamer_fast_cpu"] = cpu_description()


_compiled: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """torch.compile(fn) (inductor, static shapes), built once per function for the whole session."""
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
