"""Shared fixtures: devices, dtypes, tolerances and the kernel implementations under test."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# torch.compile's on-disk cache outlives the extension it compiled against: a cache entry written with another build of
# dreamer_fast._C (an older checkout, another profile) can crash when loaded. A run gets its own, unless one is set.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dreamer_fast_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import dreamer_fast  # also registers the ops

CUDA = torch.cuda.is_available()


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not CUDA:
        pytest.skip("no CUDA device (CUDA kernels are covered by the emulated tests)")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def tol(dtype: torch.dtype) -> dict:
    """Tolerances for fused-vs-reference comparisons: the two sum in different orders."""
    return {
        torch.float64: dict(rtol=1e-10, atol=1e-12),
        torch.float32: dict(rtol=1e-5, atol=1e-5),
        torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
        torch.float16: dict(rtol=2e-3, atol=2e-3),
    }[dtype]


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, **kw) -> None:
    """assert_close with ``atol`` times the size of the values (``max(1, |want|)``): for sums over hundreds of terms
    (weight gradients), whose rounding grows with them; a dropped row or a wrong tail is still off by O(1)."""
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, **kw)


@contextlib.contextmanager
def cpu_gemm_library(mode: str):
    """``dreamer_fast.set_cpu_gemm(mode)`` inside, the previous mode again after."""
    previous = dreamer_fast.set_cpu_gemm(mode)
    try:
        yield
    finally:
        dreamer_fast.set_cpu_gemm(previous)


def kernel_namespaces() -> list:
    """The raw kernels: the CPU kernels and the CUDA kernels' source run through the emulator."""
    return [
        pytest.param(torch.ops.dreamer_fast, id="cpu-kernel"),
        pytest.param(torch.ops.dreamer_fast_emu, id="emulated-cuda-kernel"),
    ]


@contextlib.contextmanager
def emulator_schedule(name: str):
    """Emulated launches inside run under the emulator's `name` schedule: "in-order" (the default) or "reverse" (warps
    and lanes last first, a warp running ahead of the others; see csrc/emulation/emulator.h). A kernel whose results
    differ between the two has a missing barrier."""
    previous = torch.ops.dreamer_fast_emu.set_schedule(name)
    try:
        yield
    finally:
        torch.ops.dreamer_fast_emu.set_schedule(previous)


# ---- every CUDA kernel must run under the emulator --------------------------------------------------------------
# Each `__global__` function in csrc/cuda/<op>.cuh is launched as "<op>.<function>". When the whole suite ran and
# passed, the emulator's launch log must hold every one of them; otherwise the run fails (docs/EMULATION.md).

CSRC_CUDA = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
_deselected = 0


def cuda_kernel_names() -> set[str]:
    names = set()
    for src in sorted(CSRC_CUDA.glob("*.cuh")):
        for fn in re.findall(r"__global__\s+(?:__launch_bounds__\([^)]*\)\s+)?void\s+(\w+)", src.read_text()):
            names.add(f"{src.stem}.{fn}")
    return names


def pytest_deselected(items):
    global _deselected
    _deselected += len(items)


def pytest_sessionfinish(session, exitstatus):
    ran_files = {Path(str(item.path)).name for item in session.items}
    all_files = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    if exitstatus != 0 or _deselected or ran_files != all_files or not dreamer_fast.extension_loaded():
        return  # a partial or failing run says nothing about coverage
    missing = sorted(cuda_kernel_names() - set(torch.ops.dreamer_fast_emu.launched_kernels()))
    if missing:
        session.config.get_terminal_writer().line(
            f"\nFAILED: CUDA kernels never executed under the emulator by any test: {missing}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
