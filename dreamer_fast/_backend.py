"""Loading the compiled kernels and choosing between the fused and the reference implementation of an op."""

from __future__ import annotations

import importlib.util
import os
import struct
import warnings
from pathlib import Path

import torch

BACKENDS = ("auto", "fused", "reference")
ENV_VAR = "DREAMER_FAST_BACKEND"
TORCH_SECTION = ".dreamer_fast_torch"  # the library's record of the torch it was compiled against (csrc/ops.cpp)


def elf_section(path: str | os.PathLike, name: str) -> tuple[int, int] | None:
    """(file offset, size) of section ``name`` of the 64-bit little-endian ELF file at ``path``; None for another kind
    of file or a missing section. Reads the section table only."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":
            return None
        (table_at,) = struct.unpack_from("<Q", head, 0x28)
        entry, count, names_index = struct.unpack_from("<HHH", head, 0x3A)
        f.seek(table_at)
        table = f.read(entry * count)
        where = [struct.unpack_from("<QQ", table, i * entry + 0x18) for i in range(count)]  # (offset, size)
        f.seek(where[names_index][0])
        names = f.read(where[names_index][1])
    for i in range(count):
        (name_at,) = struct.unpack_from("<I", table, i * entry)
        if names[name_at:].split(b"\0", 1)[0] == name.encode():
            return where[i]
    return None


def built_torch_version(path: str | os.PathLike) -> str | None:
    """The ``torch.__version__`` the library at ``path`` was compiled against, read from its section
    ``.dreamer_fast_torch`` without loading it; None where the file has no such record."""
    section = elf_section(path, TORCH_SECTION)
    if section is None:
        return None
    with open(path, "rb") as f:
        f.seek(section[0])
        return f.read(section[1]).split(b"\0", 1)[0].decode()


class TorchMismatchError(ImportError):
    """dreamer_fast._C was compiled against another torch than the one imported."""


def _rebuild_command() -> str:
    """How to rebuild the extension against the running torch: the source tree's path where this is one."""
    source = Path(__file__).resolve().parent.parent
    if (source / "setup.py").exists() and (source / "csrc").is_dir():
        return f"pip install --no-build-isolation -e {source}"
    return "pip install --no-build-isolation --no-deps --force-reinstall <the dreamer_fast source directory>"


def _mismatch(built: str | None, detail: str = "") -> TorchMismatchError:
    """The one-line error of a library that does not match the running torch (``built``: the torch it records)."""
    if built:
        what = f"was built against torch {built} but torch {torch.__version__} is installed"
    else:
        what = f"does not load under torch {torch.__version__} ({detail}): it was built against another torch"
    return TorchMismatchError(f"dreamer_fast._C {what}; rebuild it against this torch: {_rebuild_command()}")


def _load() -> Exception | None:
    """Import dreamer_fast._C (registering torch.ops.dreamer_fast.*) when it was built against the running torch;
    the reason it was not loaded otherwise (the package then runs on the reference backend)."""
    spec = importlib.util.find_spec("dreamer_fast._C")
    if spec is None or spec.origin is None:
        return ImportError("dreamer_fast._C is not built (pip install --no-build-isolation -e . builds it)")
    try:
        built = built_torch_version(spec.origin)
    except (OSError, ValueError, struct.error):  # an unreadable or malformed file: loading it tells what is wrong
        built = None
    if built is not None and built != torch.__version__:
        return _mismatch(built)
    try:
        from dreamer_fast import _C  # noqa: F401
    except ImportError as exc:
        # A library without the record (another build) whose symbols this torch lacks: the same one line.
        return _mismatch(None, str(exc).splitlines()[0]) if "undefined symbol" in str(exc) else exc
    return None


_LOAD_ERROR: Exception | None = _load()
if isinstance(_LOAD_ERROR, TorchMismatchError):  # a broken set-up, unlike a package installed without its kernels
    warnings.warn(str(_LOAD_ERROR), RuntimeWarning, stacklevel=2)

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
