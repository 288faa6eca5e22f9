"""The emulated CUDA build covers the real one: same ops, every kernel launched (the run-time check is in conftest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CSRC_CUDA, cuda_kernel_names

import dreamer_fast as df
from dreamer_fast import _backend

OPS = sorted({name.split("::")[1] for name, _ in _backend._KERNELS if name.startswith("dreamer_fast::")})


def test_kernel_sources_found():
    names = cuda_kernel_names()
    assert "lambda_return.forward" in names and "lambda_return.backward" in names


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_cpu_and_emulated_kernels(op):
    assert df.has_kernel(op, "cpu"), f"{op} has no CPU kernel"
    assert df.has_kernel(op, "cpu", namespace="dreamer_fast_emu"), f"{op}: its CUDA kernel is not emulated"


def test_every_kernel_is_launched_by_its_name():
    """launch("<op>.<kernel>", <kernel>...) — the name is what the emulator's launch log records."""
    for name in sorted(cuda_kernel_names()):
        stem, fn = name.split(".")
        src = (CSRC_CUDA / f"{stem}.cuh").read_text()
        assert f'launch("{name}"' in src, f"{name}: launch it as launch(\"{name}\", ...)"


def test_launch_log_records_launches():
    r = torch.randn(3, 5, dtype=torch.float64)
    torch.ops.dreamer_fast_emu.lambda_return(r, r, r, r[0], 0.5)
    assert "lambda_return.forward" in torch.ops.dreamer_fast_emu.launched_kernels()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure path")
def test_gpu_check_fails_loudly_without_gpu():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), "--no-build"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no CUDA GPU visible" in result.stderr


def test_gpu_check_cases_run_on_cpu(monkeypatch):
    """gpu_check.py's cases are exercised here (on the CPU, float32) so the GPU script is not first run on a GPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    for label, inputs, fused, reference, grad_out in gpu_check.cases(torch.device("cpu"), torch.float32):
        assert grad_out is None or grad_out.shape == inputs[0].shape, label
        gpu_check.fwd_bwd(fused, inputs, grad_out)()
        gpu_check.fwd_bwd(reference, inputs, grad_out)()
    calls = []

    def once(fn, reps=50):  # CUDA events need a GPU: run each case once instead of timing it
        calls.append(fn())
        return 1.0

    monkeypatch.setattr(gpu_check, "cuda_time_ms", once)
    rows = gpu_check.policy_step_rows(torch.device("cpu")) + gpu_check.agent_update_rows(torch.device("cpu"), "debug")
    assert len(rows) == len(calls) == 8 and all(ms == 1.0 for _, ms in rows)
    assert all(isinstance(metrics, dict) for metrics in calls[4:])  # train_step's metrics


@pytest.mark.parametrize("namespace", ["dreamer_fast", "dreamer_fast_emu"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_composites_run_where_the_kernels_they_call_do(namespace, device_type):
    """A composite op (registered once, for every device) counts as a kernel on a device only where every kernel it
    calls has one: dreamer_fast_emu has no CUDA kernels, so none of its composites is reported for CUDA."""
    for op, calls in _backend._COMPOSITE_CALLS.items():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::{op}", "CompositeExplicitAutograd")
        expected = all(df.has_kernel(call, device_type, namespace=namespace) for call in calls)
        assert df.has_kernel(op, device_type, namespace=namespace) == expected, (op, namespace, device_type)
    if namespace == "dreamer_fast_emu" and device_type == "cuda":
        assert not any(df.has_kernel(op, "cuda", namespace=namespace) for op in _backend._COMPOSITE_CALLS)
