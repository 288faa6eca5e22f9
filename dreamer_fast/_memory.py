"""Process-wide allocator tuning for CPU training.

glibc's malloc serves every allocation above a (dynamic, at most 32 MiB) threshold with a fresh ``mmap`` and hands it
back with ``munmap`` when freed. An agent update at Atari sizes allocates and frees activations of 10-150 MB dozens
of times, so every update pays the kernel for zeroing and page-faulting the same memory again: measured here, about
a fifth of an update (4.8 s -> 3.1 s for the conv encoder + decoder fwd+bwd over 800 frames, docs/PERFORMANCE.md).
:func:`keep_freed_memory` turns that off: large blocks come from the heap and freed memory is kept for reuse. The
cost: the process keeps what it freed (returned to the OS only when 2 GiB at the top of the heap are free), and
aligned blocks fragment the heap a little: an Atari update's resident memory settles at ~3.0 GiB instead of ~1.9 GiB
(measured over 12 updates; it stops growing after the third).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (no ``mmap`` per large block, no trimming).

    Process-wide and idempotent; affects allocations made after the call. Returns True when applied, False where
    it does not apply (not Linux/glibc) — nothing else changes then.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others have no mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
