"""Shared fixtures: devices, dtypes, tolerances and the kernel implementations under test."""

from __future__ import annotations

import pytest
import torch

import dreamer_fast  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available()


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not CUDA:
        pytest.skip("CUDA is not available on this machine (CUDA kernels are covered by the emulated tests)")
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


def kernel_namespaces() -> list:
    """The raw kernels: the CPU kernels and the CUDA kernels' source run through the emulator."""
    return [
        pytest.param(torch.ops.dreamer_fast, id="cpu-kernel"),
        pytest.param(torch.ops.dreamer_fast_emu, id="emulated-cuda-kernel"),
    ]
