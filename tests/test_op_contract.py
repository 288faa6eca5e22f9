"""The contract every fused op keeps, checked over one table (OP_CASES, one OpCase per op): values and gradients equal
the reference's, gradcheck, opcheck (schema, fake kernel, autograd registration), torch.compile(fullgraph=True),
the Python wrapper's argument errors, and the C++ kernels' own argument checks (CPU kernels and the CUDA kernels
through the emulator). What only one op has (hand-computed values, special values, sampling, emulation schedules,
backend selection) is in that op's tests/test_<op>.py, which also holds the op's row (at its end)."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, tol
from op_contract import Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample
from test_elu import CASE as ELU
from test_kl_balance import CASE as KL_BALANCE
from test_lambda_return import CASE as LAMBDA_RETURN
from test_linear import CASE as LINEAR
from test_ln_gru import CASE as LN_GRU
from test_obs_step_inference import CASE as OBS_STEP_INFERENCE
from test_observe_sequence import CASE as OBSERVE_SEQUENCE
from test_straight_through_categorical import CASE as STRAIGHT_THROUGH_CATEGORICAL

NO_CUDA = "no CUDA device (CUDA kernels are covered by the emulated tests)"

OP_CASES = [LAMBDA_RETURN, STRAIGHT_THROUGH_CATEGORICAL, KL_BALANCE, ELU, LINEAR, LN_GRU, OBSERVE_SEQUENCE,
            OBS_STEP_INFERENCE]


# ---- parametrisation -------------------------------------------------------------------------------------------------


def device_param(device: str):
    marks = [pytest.mark.skipif(not CUDA, reason=NO_CUDA)] if device == "cuda" else []
    return device, marks


def table(kind: str, *, devices: bool = False, namespaces: bool = False) -> list:
    """pytest params (case, item[, device | ns]) for every item of the table's `kind` column, with ids
    "<op>-<item id>[-<device | namespace>]"."""
    params = []
    for case in OP_CASES:
        for item in getattr(case, kind):
            base = f"{case.name}-{item.id}"
            if devices:
                for device in case.opcheck_devices if kind == "opchecks" else ("cpu", "cuda"):
                    name, marks = device_param(device)
                    params.append(pytest.param(case, item, name, id=f"{base}-{name}", marks=[*case.marks, *marks]))
            elif namespaces:
                for ns in item.namespaces:
                    params.append(pytest.param(case, item, ns.values[0], id=f"{base}-{ns.id}", marks=case.marks))
            else:
                params.append(pytest.param(case, item, id=base, marks=case.marks))
    return params


def fresh_leaf(x):
    """x again as a new leaf (for the reference's own graph); anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.requires_grad:
        return x.detach().clone().requires_grad_()
    return x


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def weighted_sum(outputs, weights):
    """A loss that reaches every output with a different weight per element (so mixed-up rows show)."""
    return sum((o * w).sum() for o, w in zip(outputs, weights))


# ---- the checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,sample", table("samples"))
def test_values_and_grads_match_reference(case: OpCase, sample: Sample, device, dtype):
    """Fused vs reference on the same inputs: every output, and the gradient of every input that requires one under a
    random upstream gradient for every output."""
    with sample.context():
        args, kwargs = sample.make(device, dtype)
        ref_args = tuple(fresh_leaf(a) for a in args)
        out, ref = as_tuple(case.op(*args, **kwargs)), as_tuple(case.reference(*ref_args, **kwargs))
        if case.check_values is not None:
            case.check_values(out, ref, dtype, args, kwargs)
        else:
            for name, a, b in zip(case.output_names, out, ref):
                case.close(a, b, **tol(dtype), msg=lambda m, n=name: f"{n}: {m}")
        picked = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
        if not picked:
            return  # an inference op (no input requires grad): values only
        g = torch.Generator().manual_seed(5)
        weights = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in out]
        got = torch.autograd.grad(weighted_sum(out, weights), [args[i] for i in picked])
        want = torch.autograd.grad(weighted_sum(ref, weights), [ref_args[i] for i in picked])
    for i, a, b in zip(picked, got, want):
        name = case.input_names[i]
        if case.grads_nonzero:
            assert b.abs().sum() > 0, f"d{name} is zero: the test would not see a wrong gradient"
        case.close(a, b, **case.grad_tol(dtype), msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("case,check,device", table("gradchecks", devices=True))
def test_gradcheck(case: OpCase, check: Gradcheck, device):
    for fn, inputs in check.make(device):
        assert torch.autograd.gradcheck(fn, inputs)
        if check.gradgrad:
            assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("case,check,device", table("opchecks", devices=True))
def test_opcheck(case: OpCase, check: Opcheck, device):
    with check.context():
        for op, args, kwargs in check.make(device):
            torch.library.opcheck(op, args, **kwargs)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in OP_CASES if c.compile_loss])
def test_compile_fullgraph(case: OpCase):
    """The loss and its input gradients, compiled with fullgraph=True (no graph break) and eager. Both start from the
    same default generator state, for ops that draw a seed from it inside the graph."""
    loss, inputs = case.compile_loss()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.manual_seed(3)
    want = loss(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case,bad", table("bad_inputs"))
def test_bad_inputs(case: OpCase, bad: Bad):
    """The Python wrapper rejects the input with an error that names the argument."""
    with pytest.raises(bad.exc, match=bad.match):
        bad.call()


@pytest.mark.parametrize("case,check,ns", table("cpp_checks", namespaces=True))
def test_cpp_checks_name_the_argument(case: OpCase, check: CppCheck, ns):
    """The C++ kernels check too (for callers who skip the Python wrapper)."""
    with pytest.raises(RuntimeError, match=check.match):
        check.call(ns)
