"""Argument checks whose messages name the op, the argument, what was expected and what was received."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.float16, torch.bfloat16)


def tensor(op: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating(op: str, name: str, t: torch.Tensor) -> None:
    """float32/float64 anywhere; float16/bfloat16 too on CUDA (the kernels accumulate in float32)."""
    if t.dtype in _FLOATS or (t.dtype in _HALVES and t.device.type == "cuda"):
        return
    extra = " (float16/bfloat16 are supported on CUDA only)" if t.dtype in _HALVES else ""
    raise TypeError(f"{op}: `{name}` must be float32 or float64{extra}, got {t.dtype}")


def same_device(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{op}: `{name}` is on {t.device} but `{ref_name}` is on {ref.device}; put them on one device")


def like(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    """Same dtype and device as ``ref``."""
    same_device(op, name, t, ref, ref_name)
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: `{name}` has dtype {t.dtype} but `{ref_name}` has {ref.dtype}; they must match")


def shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: `{name}` must have shape {what} = {list(expected)}, got {list(t.shape)}")


def ndim_at_least(op: str, name: str, t: torch.Tensor, n: int, what: str) -> None:
    if t.dim() < n:
        raise ValueError(f"{op}: `{name}` must be {what} (at least {n} dims), got shape {list(t.shape)}")


def number_in(op: str, name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: `{name}` must be a number in [{lo}, {hi}], got {type(value).__name__}")
    if not lo <= value <= hi:  # also rejects NaN
        raise ValueError(f"{op}: `{name}` must be in [{lo}, {hi}], got {value}")
    return float(value)
