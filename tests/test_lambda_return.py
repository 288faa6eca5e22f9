"""lambda_return beyond the checks every op shares (tests/test_op_contract.py): hand-computed values, the raw kernels
(CPU and emulated CUDA) against the reference and each other, every gradient element written, layouts, empty sizes,
NaN and backend selection."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_namespaces, tol
from op_contract import Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal

import dreamer_fast as df
from dreamer_fast.reference import lambda_return_ref


def make(T, B, device, dtype, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(T, B, generator=g, dtype=dtype)
    value = torch.randn(T, B, generator=g, dtype=dtype)
    discount = torch.rand(T, B, generator=g, dtype=dtype)
    bootstrap = torch.randn(B, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_(requires_grad) for t in (reward, value, discount, bootstrap)]


def test_hand_computed():
    r = torch.tensor([[1.0], [2.0]])
    v = torch.tensor([[10.0], [20.0]])
    d = torch.tensor([[0.5], [0.9]])
    boot = torch.tensor([100.0])
    lam = 0.8
    R1 = 2.0 + 0.9 * 100.0
    R0 = 1.0 + 0.5 * ((1 - lam) * 20.0 + lam * R1)
    out = df.lambda_return(r, v, d, boot, lam, backend="fused")
    torch.testing.assert_close(out, torch.tensor([[R0], [R1]]))


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_raw_kernels_match_reference(ns, dtype):
    """Each kernel on its own (no autograd): forward and backward against the reference's values and gradients."""
    inputs = make(9, 300, "cpu", dtype, requires_grad=True)
    ref = lambda_return_ref(*inputs, 0.9)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, inputs, grad)
    plain = [t.detach() for t in inputs]
    out = ns.lambda_return(*plain, 0.9)
    torch.testing.assert_close(out, ref.detach(), **tol(dtype))
    got = ns.lambda_return_backward(grad, out, *plain[1:], 0.9)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(dtype))


def test_emulated_cuda_kernel_equals_cpu_kernel():
    """The CUDA kernels accumulate in the same order as the CPU kernels, so float64 results agree to the last bit."""
    inputs = [t.detach() for t in make(13, 517, "cpu", torch.float64)]
    grad = torch.randn(13, 517, dtype=torch.float64)
    cpu = torch.ops.dreamer_fast.lambda_return(*inputs, 0.7)
    emu = torch.ops.dreamer_fast_emu.lambda_return(*inputs, 0.7)
    torch.testing.assert_close(emu, cpu, rtol=0, atol=1e-14)
    for a, b in zip(
        torch.ops.dreamer_fast_emu.lambda_return_backward(grad, cpu, *inputs[1:], 0.7),
        torch.ops.dreamer_fast.lambda_return_backward(grad, cpu, *inputs[1:], 0.7),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_backward_writes_every_gradient_element(ns):
    """The gradients are allocated uninitialised (at::empty_like), so an element a kernel never writes returns whatever
    the allocator held: often 0, which is d_value[0]'s true value (R never depends on value[0]). Free blocks of the
    gradients' size filled with NaN first, so that an unwritten element shows whatever the allocator does."""
    T, B = 4, 6
    inputs = make(T, B, "cpu", torch.float64, requires_grad=True)
    ref = lambda_return_ref(*inputs, 0.9)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, inputs, grad)
    plain = [t.detach() for t in inputs]
    ret = ns.lambda_return(*plain, 0.9)
    for _ in range(3):
        poison = [torch.full((T, B), float("nan"), dtype=torch.float64) for _ in range(8)]
        del poison
        got = ns.lambda_return_backward(grad, ret, *plain[1:], 0.9)
        assert torch.equal(got[1][0], torch.zeros(B, dtype=torch.float64)), "d_value[0] must be exactly 0"
        for name, a, b in zip(("reward", "value", "discount", "bootstrap"), got, want):
            torch.testing.assert_close(a, b, **tol(torch.float64), msg=lambda m, n=name: f"d{n}: {m}")


def test_non_contiguous_inputs(device):
    reward, value, discount, _ = make(20, 30, device, torch.float64)
    bootstrap = torch.randn(30, 2, dtype=torch.float64, device=device)[:, 0]  # strided
    r, v, d = reward.t().contiguous().t(), value[:, :], discount.t().contiguous().t()
    assert not r.is_contiguous() and not bootstrap.is_contiguous()
    torch.testing.assert_close(
        df.lambda_return(r, v, d, bootstrap, backend="fused"), lambda_return_ref(r, v, d, bootstrap)
    )


@pytest.mark.parametrize("T,B", [(0, 4), (3, 0), (0, 0)])
def test_empty(T, B, device):
    inputs = make(T, B, device, torch.float32, requires_grad=True)
    out = df.lambda_return(*inputs, backend="fused")
    assert out.shape == (T, B)
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for g, x in zip(grads, inputs):
        assert g is None or g.shape == x.shape


def test_nan_propagates():
    reward, value, discount, bootstrap = make(4, 3, "cpu", torch.float32)
    reward[2, 1] = float("nan")
    out = df.lambda_return(reward, value, discount, bootstrap, backend="fused")
    assert torch.isnan(out[:3, 1]).all() and not torch.isnan(out[3, 1])
    assert not torch.isnan(out[:, [0, 2]]).any()


def test_backend_selection(monkeypatch):
    inputs = make(4, 3, "cpu", torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        df.lambda_return(*inputs, backend="fast")
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="DREAMER_FAST_BACKEND"):
        df.lambda_return(*inputs)
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    out = df.lambda_return(*inputs)
    assert out.grad_fn is None or "Stack" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, df.lambda_return(*inputs, backend="fused"))


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def lambda_return_fused(*args, **kwargs):
    return df.lambda_return(*args, **kwargs, backend="fused")


def lambda_return_sample(T, B, lam):
    return Sample(f"{T}x{B}-lam{lam}",
                  lambda device, dtype: ((*make(T, B, device, dtype, requires_grad=True), lam), {}))


def lambda_return_bad(mutate):
    return lambda: lambda_return_fused(*mutate(*make(5, 4, "cpu", torch.float32)))


def lambda_return_cpp(mutate):
    return lambda ns: ns.lambda_return(*mutate(*make(5, 4, "cpu", torch.float32)), 0.9)


def lambda_return_compile():
    def loss(*x):
        return lambda_return_fused(*x, 0.95).square().mean()

    return loss, tuple(make(15, 64, "cpu", torch.float32, requires_grad=True))


CASE = OpCase(
    name="lambda_return",
    op=lambda_return_fused,
    reference=lambda_return_ref,
    input_names=("reward", "value", "discount", "bootstrap"),
    output_names=("return",),
    samples=[lambda_return_sample(T, B, lam)
             for T, B in [(1, 1), (2, 3), (15, 800), (50, 16), (7, 1030)] for lam in [0.0, 0.95, 1.0]],
    gradchecks=[Gradcheck("T5-B4", lambda device: [
        (lambda *x: lambda_return_fused(*x, 0.9), tuple(make(5, 4, device, torch.float64, True)))])],
    opchecks=[Opcheck("T6-B5", lambda device: [
        (torch.ops.dreamer_fast.lambda_return.default,
         (*make(6, 5, device, torch.float32, requires_grad=True), 0.95), {})])],
    compile_loss=lambda_return_compile,
    bad_inputs=[
        Bad("reward", lambda_return_bad(lambda r, v, d, b: (r[0], v, d, b)), ValueError,
            literal("`reward` must be [T, B]")),
        Bad("value", lambda_return_bad(lambda r, v, d, b: (r, v[:, :-1], d, b)), ValueError,
            literal("`value` must have shape [T, B]")),
        Bad("discount", lambda_return_bad(lambda r, v, d, b: (r, v, d[1:], b)), ValueError,
            literal("`discount` must have shape")),
        Bad("bootstrap", lambda_return_bad(lambda r, v, d, b: (r, v, d, b[:-1])), ValueError,
            literal("`bootstrap` must have shape [B]")),
        Bad("int dtype", lambda_return_bad(lambda r, v, d, b: (r.long(), v, d, b)), TypeError,
            literal("`reward` must be float32 or float64")),
        Bad("half on cpu", lambda_return_bad(lambda r, v, d, b: (r.half(), v.half(), d.half(), b.half())), TypeError,
            literal("CUDA only")),
        Bad("mixed dtype", lambda_return_bad(lambda r, v, d, b: (r, v.double(), d, b)), TypeError,
            literal("`value` has dtype torch.float64")),
        Bad("mixed device", lambda_return_bad(lambda r, v, d, b: (r, v, d, b.to("meta"))), ValueError,
            literal("`bootstrap` is on meta")),
        Bad("not a tensor", lambda_return_bad(lambda r, v, d, b: (r, v, 0.99, b)), TypeError,
            literal("`discount` must be a torch.Tensor")),
        *(Bad(f"lam={lam}", lambda lam=lam: df.lambda_return(*make(3, 2, "cpu", torch.float32), lam),
              (ValueError, TypeError), "`lam`")
          for lam in [-0.1, 1.5, float("nan"), "0.9"]),
    ],
    cpp_checks=[
        CppCheck("bootstrap shape", lambda_return_cpp(lambda r, v, d, b: (r, v, d, b[:-1])),
                 "`bootstrap` must have shape"),
        CppCheck("value dtype", lambda_return_cpp(lambda r, v, d, b: (r, v.double(), d, b)),
                 "`value` must have the dtype"),
    ],
)
