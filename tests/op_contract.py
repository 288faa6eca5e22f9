"""The row of the op contract table (tests/test_op_contract.py): what one OpCase holds, and the small pieces the rows
share. Each op's row sits at the end of that op's tests/test_<op>.py; this module is no test module of its own."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import tol

CPU_NS = pytest.param(torch.ops.dreamer_fast, id="cpu-kernel")
EMU_NS = pytest.param(torch.ops.dreamer_fast_emu, id="emulated-cuda-kernel")
BOTH_NS = (CPU_NS, EMU_NS)


# ---- the row ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One input set for the values-and-gradients check: make(device, dtype) -> (args, kwargs) for both the op and
    the reference; the tensors in args that require grad are the ones differentiated. Runs inside context()."""

    id: str
    make: Callable[[Any, torch.dtype], tuple[tuple, dict]]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass(frozen=True)
class Gradcheck:
    """make(device) -> [(fn, inputs), ...]: each pair passes torch.autograd.gradcheck (and gradgradcheck if asked)."""

    id: str
    make: Callable[[Any], list[tuple[Callable, tuple]]]
    gradgrad: bool = False


@dataclass(frozen=True)
class Opcheck:
    """make(device) -> [(op overload, args, opcheck kwargs), ...], each passed to torch.library.opcheck."""

    id: str
    make: Callable[[Any], list[tuple[Any, tuple, dict]]]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass(frozen=True)
class Bad:
    """A call of the Python wrapper that must raise `exc` with a message matching the regex `match`."""

    id: str
    call: Callable[[], Any]
    exc: type[Exception] | tuple[type[Exception], ...]
    match: str


@dataclass(frozen=True)
class CppCheck:
    """A direct call of a raw kernel (call(ns), ns a kernel namespace) that its C++ checks reject."""

    id: str
    call: Callable[[Any], Any]
    match: str
    namespaces: Sequence = BOTH_NS


@dataclass(frozen=True)
class OpCase:
    """One op's row. op / reference take the same (args, kwargs); outputs are a tensor or a tuple of tensors.
    compile_loss() -> (loss fn, inputs): a scalar loss of the op whose values and input gradients must not change
    under torch.compile(fullgraph=True). check_values(out, ref, dtype, args, kwargs) replaces the default comparison
    (each output with `close` at tol(dtype)); grad_tol(dtype) gives the gradients' tolerances."""

    name: str
    op: Callable
    reference: Callable
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    samples: list[Sample]
    gradchecks: list[Gradcheck]
    opchecks: list[Opcheck]
    bad_inputs: list[Bad]
    cpp_checks: list[CppCheck]
    compile_loss: Callable[[], tuple[Callable, tuple]] | None = None
    check_values: Callable | None = None
    close: Callable = torch.testing.assert_close
    grad_tol: Callable[[torch.dtype], dict] = tol
    grads_nonzero: bool = False  # every reference gradient must be nonzero, or a wrong one could pass unseen
    opcheck_devices: tuple[str, ...] = ("cpu", "cuda")
    marks: tuple = field(default_factory=tuple)


def literal(message: str) -> str:
    """The regex that matches `message` as written."""
    return re.escape(message)

