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


# The device-generic composite ops (registered once, as CompositeExplicitAutograd) and the kernels they call: such an
# op runs on a device where each of these has a kernel.
_COMPOSITE_CALLS = {
    "observe_sequence": ("ln_gru", "straight_through_categorical"),
    "observe_sequence_forward": ("ln_gru", "straight_through_categorical"),
    "observe_sequence_backward": ("ln_gru_backward", "straight_through_categorical_backward"),
    "obs_step_inference": ("ln_gru", "straight_through_categorical"),
}


def _kernel_table() -> frozenset[tuple[str, str]]:
    """(qualified op name, device type) for every compiled kernel; read once, so torch.compile sees a constant."""
    if _LOAD_ERROR is not None:
        return frozenset()
    table = set()
    for name in torch._C._dispatch_get_all_op_names():
        if name.split("::")[0] in ("dreamer_fast", "dreamer_fast_emu"):
            composite = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd")
            for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
                if composite or torch._C._dispatch_has_kernel_for_dispatch_key(name, key):
                    table.add((name, device_type))
    for namespace in ("dreamer_fast", "dreamer_fast_emu"):
        for op, calls in _COMPOSITE_CALLS.items():
            for device_type in ("cpu", "cuda"):
                if any((f"{namespace}::{call}", device_type) not in table for call in calls):
                    table.discard((f"{namespace}::{op}", device_type))
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
