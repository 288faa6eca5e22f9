"""Loading the compiled kernels and choosing between the fused and the reference implementation of an op."""

from __future__ import annotations

import os
import warnings

import torch

BACKENDS = ("auto", "fused", "reference")
ENV_VAR = "DREAMER_FAST_BACKEND"

try:
    from dreamer_fast import _C  # noqa: F401  (loading registers torch.ops.dreamer_fast.*)

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # the package works without its kernels, on the reference backend
    _LOAD_ERROR = exc

_warned: set[tuple[str, str]] = set()


def _kernel_table() -> frozenset[tuple[str, str]]:
    """(qualified op name, device type) for every compiled kernel; read once, so torch.compile sees a constant."""
    if _LOAD_ERROR is not None:
        return frozenset()
    table = set()
    for name in torch._C._dispatch_get_all_op_names():
        if name.split("::")[0] in ("dreamer_fast", "dreamer_fast_emu"):
            for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
                if torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
                    table.add((name, device_type))
    return frozenset(table)


_KERNELS = _kernel_table()


def extension_loaded() -> bool:
    """True when the compiled extension ``dreamer_fast._C`` was imported."""
    return _LOAD_ERROR is None


def has_kernel(op: str, device_type: str, namespace: str = "dreamer_fast") -> bool:
    """True when the compiled extension has a kernel of ``namespace::op`` for ``device_type`` ("cpu", "cuda")."""
    return (f"{namespace}::{op}", device_type) in _KERNELS


def resolve(backend: str | None) -> str:
    """The backend to use: the argument, else $DREAMER_FAST_BACKEND, else "auto"."""
    chosen = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    if chosen not in BACKENDS:
        source = "backend" if backend is not None else f"${ENV_VAR}"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {chosen!r}")
    return chosen


def use_fused(op: str, device: torch.device, backend: str | None) -> bool:
    """Whether ``op`` runs fused on ``device``. "fused" raises when it cannot; "auto" falls back with one warning."""
    chosen = resolve(backend)
    if chosen == "reference":
        return False
    if has_kernel(op, device.type):
        return True
    if _LOAD_ERROR is not None:
        why = f"the extension dreamer_fast._C failed to load ({_LOAD_ERROR})"
    else:
        why = f"dreamer_fast._C was built without a {device.type} kernel for {op}"
    if chosen == "fused":
        raise RuntimeError(f"{op}: backend='fused' cannot run on {device}: {why}")
    if (op, device.type) not in _warned:
        _warned.add((op, device.type))
        warnings.warn(f"{op}: using the reference implementation on {device}: {why}", RuntimeWarning, stacklevel=3)
    return False


CPU_GEMMS = ("auto", "mkl", "onednn")
CPU_GEMM_ENV_VAR = "DREAMER_FAST_CPU_GEMM"


def set_cpu_gemm(mode: str) -> str:
    """Choose the library for the fused backend's float32 GEMMs on the CPU; returns the previous mode.

    Concerns observe's per-step GEMMs (B rows, the weights packed once per sequence; bfloat16 ones too under oneDNN),
    the acting step's above 6 rows (up to 6, e.g. B = 1, its float32 layers are our own GEMV kernel), and the
    :func:`dreamer_fast.linear` op's products from 64 x 256 x 256 (the networks' Linear layers, imagination's RSSM
    layers, observe's weight gradients; smaller ones stay on ATen). Measured on an AMD EPYC Zen 5, oneDNN's matmul ran
    ~2.2x MKL's at the agent's training shapes too (MKL takes its AVX2 paths on CPUs that are not Intel).
    ``"auto"`` (the default, or ``$DREAMER_FAST_CPU_GEMM``) is oneDNN on CPUs whose vendor is not Intel and MKL on
    Intel ones: measured on an AMD EPYC (Zen 4), oneDNN's matmul is ~2x MKL's at 16 x 1200 -> 1800 (observe T=50
    B=16 forward+backward 340 -> 212 ms); MKL's packed GEMM is what was measured on an Intel Xeon with AMX.
    ``"mkl"`` / ``"onednn"`` force one. Process-wide; the results differ only by summation order (both float32).
    """
    if mode not in CPU_GEMMS:
        raise ValueError(f"set_cpu_gemm: `mode` must be one of {CPU_GEMMS}, got {mode!r}")
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"set_cpu_gemm: the extension dreamer_fast._C failed to load ({_LOAD_ERROR})")
    return torch.ops.dreamer_fast.set_cpu_gemm(mode)


def cpu_gemm() -> str:
    """The library the fused ops' CPU GEMMs use now: "mkl" or "onednn" ("none" without the extension)."""
    if _LOAD_ERROR is not None:
        return "none"
    return torch.ops.dreamer_fast.cpu_gemm()


_env_cpu_gemm = os.environ.get(CPU_GEMM_ENV_VAR)
if _LOAD_ERROR is None and _env_cpu_gemm:
    if _env_cpu_gemm not in CPU_GEMMS:
        raise ValueError(f"${CPU_GEMM_ENV_VAR} must be one of {CPU_GEMMS}, got {_env_cpu_gemm!r}")
    set_cpu_gemm(_env_cpu_gemm)
