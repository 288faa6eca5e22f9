"""lambda_return: fused (CPU kernel, emulated CUDA kernel, real CUDA where present) against the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import kernel_namespaces, tol

import dreamer_fast as df
from dreamer_fast.reference import lambda_return_ref

SHAPES = [(1, 1), (2, 3), (15, 800), (50, 16), (7, 1030)]


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


@pytest.mark.parametrize("T,B", SHAPES)
@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_values_and_grads_match_reference(T, B, lam, device, dtype):
    fused_in = make(T, B, device, dtype, requires_grad=True)
    ref_in = [t.detach().clone().requires_grad_() for t in fused_in]
    out = df.lambda_return(*fused_in, lam, backend="fused")
    ref = lambda_return_ref(*ref_in, lam)
    torch.testing.assert_close(out, ref, **tol(dtype))
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, fused_in, grad)
    want = torch.autograd.grad(ref, ref_in, grad)
    for name, a, b in zip(("reward", "value", "discount", "bootstrap"), got, want):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"d{n}: {m}")


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


def test_gradcheck(device):
    inputs = make(5, 4, device, torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *x: df.lambda_return(*x, 0.9, backend="fused"), inputs)


def test_opcheck(device):
    inputs = make(6, 5, device, torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.dreamer_fast.lambda_return.default, (*inputs, 0.95))


def test_compile_fullgraph():
    inputs = make(15, 64, "cpu", torch.float32, requires_grad=True)

    def loss(*x):
        return df.lambda_return(*x, 0.95, backend="fused").square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), inputs)
    want = torch.autograd.grad(loss(*inputs), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


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


BAD = [
    ("reward", lambda r, v, d, b: (r[0], v, d, b), ValueError, "`reward` must be [T, B]"),
    ("value", lambda r, v, d, b: (r, v[:, :-1], d, b), ValueError, "`value` must have shape [T, B]"),
    ("discount", lambda r, v, d, b: (r, v, d[1:], b), ValueError, "`discount` must have shape"),
    ("bootstrap", lambda r, v, d, b: (r, v, d, b[:-1]), ValueError, "`bootstrap` must have shape [B]"),
    ("int dtype", lambda r, v, d, b: (r.long(), v, d, b), TypeError, "`reward` must be float32 or float64"),
    ("half on cpu", lambda r, v, d, b: (r.half(), v.half(), d.half(), b.half()), TypeError, "CUDA only"),
    ("mixed dtype", lambda r, v, d, b: (r, v.double(), d, b), TypeError, "`value` has dtype torch.float64"),
    ("mixed device", lambda r, v, d, b: (r, v, d, b.to("meta")), ValueError, "`bootstrap` is on meta"),
    ("not a tensor", lambda r, v, d, b: (r, v, 0.99, b), TypeError, "`discount` must be a torch.Tensor"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs(case):
    _, mutate, exc, match = case
    args = mutate(*make(5, 4, "cpu", torch.float32))
    with pytest.raises(exc, match=match.replace("[", r"\[").replace("]", r"\]")):
        df.lambda_return(*args, backend="fused")


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "0.9"])
def test_bad_lambda(lam):
    with pytest.raises((ValueError, TypeError), match="`lam`"):
        df.lambda_return(*make(3, 2, "cpu", torch.float32), lam)


def test_cpp_checks_name_the_argument():
    """The C++ kernels check too (for callers who skip the Python wrapper)."""
    r, v, d, b = make(5, 4, "cpu", torch.float32)
    for ns in (torch.ops.dreamer_fast, torch.ops.dreamer_fast_emu):
        with pytest.raises(RuntimeError, match="`bootstrap` must have shape"):
            ns.lambda_return(r, v, d, b[:-1], 0.9)
        with pytest.raises(RuntimeError, match="`value` must have the dtype"):
            ns.lambda_return(r, v.double(), d, b, 0.9)


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
