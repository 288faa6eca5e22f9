"""ln_gru beyond the checks every op shares (tests/test_op_contract.py): hand-computed values, the raw kernels (CPU and
emulated CUDA) against the reference and each other, float16/bfloat16 gates beside a float32 state, deterministic
parameter gradients, the emulated kernels' schedule independence, layouts, empty batches, NaN and the backends."""

from __future__ import annotations

import pytest
import torch
from conftest import emulator_schedule, kernel_namespaces, tol
from op_contract import CPU_NS, Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal

import dreamer_fast as df
from dreamer_fast.reference import ln_gru_ref


def make(B, D, device, dtype, requires_grad=False, seed=0):
    """gates, deter, weight, bias at the scales the RSSM feeds them (gates ~ N(0, 1), weight near 1)."""
    g = torch.Generator().manual_seed(seed)
    gates = torch.randn(B, 3 * D, generator=g, dtype=dtype) * 2 + 0.3
    deter = torch.randn(B, D, generator=g, dtype=dtype).tanh()
    weight = 1 + 0.2 * torch.randn(3 * D, generator=g, dtype=dtype)
    bias = 0.1 * torch.randn(3 * D, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_(requires_grad) for t in (gates, deter, weight, bias)]


def test_hand_computed():
    """D = 1: LayerNorm of three values, then the cell, by hand."""
    x = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    h = torch.tensor([[0.25]], dtype=torch.float64)
    w = torch.tensor([1.5, 0.5, 2.0], dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    mean = x.mean()
    rstd = 1 / ((x - mean).square().mean() + 1e-3).sqrt()
    y = (x - mean) * rstd * w + b
    r = torch.sigmoid(y[0, 0])
    c = torch.tanh(r * y[0, 1])
    u = torch.sigmoid(y[0, 2] - 1)
    want = (u * c + (1 - u) * h).reshape(1, 1)
    torch.testing.assert_close(df.ln_gru(x, h, w, b, backend="fused"), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("ns", kernel_namespaces())
@pytest.mark.parametrize("B,D", [(5, 16), (70, 7), (2, 300)])
def test_raw_kernels_match_reference(ns, B, D, dtype):
    """Each kernel on its own (no autograd): forward, saved statistics and backward against the reference."""
    inputs = make(B, D, "cpu", dtype, requires_grad=True)
    ref = ln_gru_ref(*inputs)
    grad = torch.randn_like(ref)
    want = torch.autograd.grad(ref, inputs, grad)
    plain = [t.detach() for t in inputs]
    out, mean, rstd = ns.ln_gru(*plain, 1e-3)
    torch.testing.assert_close(out, ref.detach(), **tol(dtype))
    torch.testing.assert_close(mean, plain[0].mean(1), **tol(dtype))
    torch.testing.assert_close(rstd, (plain[0].var(1, unbiased=False) + 1e-3).rsqrt(), **tol(dtype))
    got = ns.ln_gru_backward(grad, *plain, mean, rstd)
    for name, a, b in zip(("gates", "deter", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_emulated_cuda_kernel_half(half):
    """float16/bfloat16 storage, float32 math: close to the float32 reference of the rounded inputs."""
    inputs = [t.to(half) for t in make(9, 40, "cpu", torch.float32)]
    wide = [t.float().requires_grad_() for t in inputs]
    ref = ln_gru_ref(*wide)
    grad = torch.randn_like(ref).to(half)
    want = torch.autograd.grad(ref, wide, grad.float())
    out, mean, rstd = torch.ops.dreamer_fast_emu.ln_gru(*inputs, 1e-3)
    assert out.dtype == half and mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref.detach(), **tol(half))
    got = torch.ops.dreamer_fast_emu.ln_gru_backward(grad, *inputs, mean, rstd)
    for a, b in zip(got, want):
        assert a.dtype == half
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


HALVES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="f16")]


@pytest.mark.parametrize("ns", kernel_namespaces())
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("B,D", [(70, 33), (5, 600), (0, 4)])
def test_mixed_precision_kernels_equal_float32_on_widened_gates(ns, half, B, D):
    """float16/bfloat16 gates beside a float32 state: the float32 op on gates.float(), bit for bit, and the gates'
    gradient is the float32 one rounded to the gates' dtype."""
    gates, deter, weight, bias = (t.detach() for t in make(B, D, "cpu", torch.float32))
    low = gates.to(half)
    out, mean, rstd = ns.ln_gru(low, deter, weight, bias, 1e-3)
    want = ns.ln_gru(low.float(), deter, weight, bias, 1e-3)
    assert out.dtype == mean.dtype == rstd.dtype == torch.float32
    for got, exp in zip((out, mean, rstd), want):
        assert torch.equal(got, exp)
    grad = torch.randn(B, D)
    got = ns.ln_gru_backward(grad, low, deter, weight, bias, mean, rstd)
    exp = ns.ln_gru_backward(grad, low.float(), deter, weight, bias, *want[1:])
    assert got[0].dtype == half and got[1].dtype == got[2].dtype == got[3].dtype == torch.float32
    assert torch.equal(got[0], exp[0].to(half))
    for a, b in zip(got[1:], exp[1:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("half", HALVES)
def test_mixed_precision_matches_reference(half, device):
    """Through autograd: values and every gradient against the reference, which widens the gates first."""
    gates, deter, weight, bias = make(16, 24, device, torch.float32)
    fused_in = [gates.to(half).requires_grad_(), *(t.requires_grad_() for t in (deter, weight, bias))]
    ref_in = [t.detach().clone().requires_grad_() for t in fused_in]
    out = df.ln_gru(*fused_in, backend="fused")
    ref = ln_gru_ref(*ref_in)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, **tol(torch.float32))
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, fused_in, grad)
    want = torch.autograd.grad(ref, ref_in, grad)
    assert got[0].dtype == half
    for name, a, b in zip(("gates", "deter", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b, **tol(a.dtype), msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("half", HALVES)
def test_mixed_precision_opcheck(half, device):
    gates, deter, weight, bias = make(6, 5, device, torch.float32)
    inputs = [gates.to(half).requires_grad_(), *(t.requires_grad_() for t in (deter, weight, bias))]
    torch.library.opcheck(torch.ops.dreamer_fast.ln_gru.default, (*inputs, 1e-3))


def test_emulated_cuda_kernel_equals_cpu_kernel():
    """Same per-element math (dreamer_fast/gru.h); only the order of the row sums differs."""
    inputs = [t.detach() for t in make(37, 33, "cpu", torch.float64)]
    grad = torch.randn(37, 33, dtype=torch.float64)
    cpu = torch.ops.dreamer_fast.ln_gru(*inputs, 1e-3)
    emu = torch.ops.dreamer_fast_emu.ln_gru(*inputs, 1e-3)
    for a, b in zip(emu, cpu):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    for a, b in zip(
        torch.ops.dreamer_fast_emu.ln_gru_backward(grad, *inputs, *cpu[1:]),
        torch.ops.dreamer_fast.ln_gru_backward(grad, *inputs, *cpu[1:]),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_param_grads_are_deterministic():
    """The batch sum of the weight/bias gradients has a fixed order: two runs agree bit for bit."""
    inputs = [t.detach() for t in make(300, 24, "cpu", torch.float32)]
    grad = torch.randn(300, 24)
    for ns in (torch.ops.dreamer_fast, torch.ops.dreamer_fast_emu):
        _, mean, rstd = ns.ln_gru(*inputs, 1e-3)
        first = ns.ln_gru_backward(grad, *inputs, mean, rstd)
        second = ns.ln_gru_backward(grad, *inputs, mean, rstd)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


def test_non_contiguous_inputs(device):
    gates, deter, weight, bias = make(10, 6, device, torch.float64)
    g = gates.t().contiguous().t()
    h = torch.cat([deter, deter], 1)[:, ::2]
    w = torch.stack([weight, weight], 1)[:, 0]
    assert not (g.is_contiguous() or h.is_contiguous() or w.is_contiguous())
    torch.testing.assert_close(df.ln_gru(g, h, w, bias, backend="fused"), ln_gru_ref(g, h, w, bias))


def test_empty_batch_grads(device):
    inputs = make(0, 4, device, torch.float32, requires_grad=True)
    out = df.ln_gru(*inputs, backend="fused")
    assert out.shape == (0, 4)
    d_gates, d_deter, d_weight, d_bias = torch.autograd.grad(out.sum(), inputs)
    assert d_gates.shape == (0, 12) and d_deter.shape == (0, 4)
    assert torch.equal(d_weight, torch.zeros(12, device=device)) and torch.equal(d_bias, torch.zeros(12, device=device))


def test_nan_stays_in_its_row():
    gates, deter, weight, bias = make(4, 3, "cpu", torch.float32)
    gates[2, 1] = float("nan")
    out = df.ln_gru(gates, deter, weight, bias, backend="fused")
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()


def test_reference_backend_matches():
    inputs = make(7, 9, "cpu", torch.float64)
    torch.testing.assert_close(df.ln_gru(*inputs, backend="reference"), df.ln_gru(*inputs, backend="fused"))


def test_emulated_cuda_kernels_are_schedule_independent():
    """Under the emulator's reverse schedule (a warp runs ahead of the others until it waits at __syncthreads()) the
    kernels give the same bits as in order: the block reductions have every barrier they need."""
    inputs = [t.detach() for t in make(37, 70, "cpu", torch.float64, seed=3)]
    grad = torch.randn(37, 70, dtype=torch.float64)
    emu = torch.ops.dreamer_fast_emu

    def run():
        out, mean, rstd = emu.ln_gru(*inputs, 1e-3)
        return (out, mean, rstd, *emu.ln_gru_backward(grad, *inputs, mean, rstd))

    want = run()
    with emulator_schedule("reverse"):
        got = run()
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"output {i} depends on the emulator's schedule"


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def ln_gru_fused(*args):
    return df.ln_gru(*args, backend="fused")


def ln_gru_compile():
    def loss(*x):
        return ln_gru_fused(*x).square().mean()

    return loss, tuple(make(16, 12, "cpu", torch.float32, requires_grad=True))


def ln_gru_bad(mutate):
    return lambda: ln_gru_fused(*mutate(*make(5, 4, "cpu", torch.float32)))


def ln_gru_cpp(mutate):
    return lambda ns: ns.ln_gru(*mutate(*make(5, 4, "cpu", torch.float32)), 1e-3)


def ln_gru_cpp_backward(mutate):
    def call(ns):
        g, h, w, b = make(5, 4, "cpu", torch.float32)
        out, mean, rstd = ns.ln_gru(g, h, w, b, 1e-3)
        ns.ln_gru_backward(*mutate(out, g, h, w, b, mean, rstd))

    return call


CASE = OpCase(
    name="ln_gru",
    op=ln_gru_fused,
    reference=ln_gru_ref,
    input_names=("gates", "deter", "weight", "bias"),
    output_names=("deter",),
    samples=[Sample(f"{B}x{D}", lambda device, dtype, B=B, D=D: (tuple(make(B, D, device, dtype, True)), {}))
             for B, D in [(1, 1), (3, 16), (16, 600), (70, 5), (0, 4)]],
    gradchecks=[Gradcheck("B4-D5", lambda device: [
        (ln_gru_fused, tuple(make(4, 5, device, torch.float64, requires_grad=True)))])],
    opchecks=[Opcheck("B6-D5", lambda device: [
        (torch.ops.dreamer_fast.ln_gru.default, (*make(6, 5, device, torch.float32, True), 1e-3), {})])],
    compile_loss=ln_gru_compile,
    bad_inputs=[
        Bad("gates 1d", ln_gru_bad(lambda g, h, w, b: (g[0], h, w, b)), ValueError,
            literal("`gates` must be [B, 3*D]")),
        Bad("gates not 3D", ln_gru_bad(lambda g, h, w, b: (g[:, :-1], h, w, b)), ValueError,
            literal("`gates` must be [B, 3*D]")),
        Bad("deter", ln_gru_bad(lambda g, h, w, b: (g, h[:, :-1], w, b)), ValueError,
            literal("`deter` must have shape [B, D]")),
        Bad("deter batch", ln_gru_bad(lambda g, h, w, b: (g, h[1:], w, b)), ValueError,
            literal("`deter` must have shape [B, D]")),
        Bad("weight", ln_gru_bad(lambda g, h, w, b: (g, h, w[:-1], b)), ValueError,
            literal("`weight` must have shape [3*D]")),
        Bad("bias", ln_gru_bad(lambda g, h, w, b: (g, h, w, b[None])), ValueError,
            literal("`bias` must have shape [3*D]")),
        Bad("int dtype", ln_gru_bad(lambda g, h, w, b: (g.long(), h, w, b)), TypeError,
            literal("`gates` must be float32 or float64")),
        Bad("half on cpu", ln_gru_bad(lambda g, h, w, b: (g.half(), h.half(), w.half(), b.half())), TypeError,
            literal("CUDA only")),
        Bad("mixed dtype", ln_gru_bad(lambda g, h, w, b: (g, h.double(), w, b)), TypeError,
            literal("`deter` has dtype torch.float64")),
        Bad("bf16 gates, f64 state", ln_gru_bad(lambda g, h, w, b: (g.bfloat16(), h.double(), w.double(), b.double())),
            TypeError, literal("`gates` must be float32 or float64")),
        Bad("bf16 gates, bf16 weight", ln_gru_bad(lambda g, h, w, b: (g.bfloat16(), h, w.bfloat16(), b)), TypeError,
            literal("`weight` has dtype torch.bfloat16 but `deter` has torch.float32")),
        Bad("bf16 gates, deter elsewhere", ln_gru_bad(lambda g, h, w, b: (g.bfloat16(), h.to("meta"), w, b)),
            ValueError, literal("`deter` is on meta")),
        Bad("mixed device", ln_gru_bad(lambda g, h, w, b: (g, h, w, b.to("meta"))), ValueError,
            literal("`bias` is on meta")),
        Bad("not a tensor", ln_gru_bad(lambda g, h, w, b: (g, h, 1.0, b)), TypeError,
            literal("`weight` must be a torch.Tensor")),
        *(Bad(f"eps={eps}", lambda eps=eps: df.ln_gru(*make(3, 2, "cpu", torch.float32), eps),
              (ValueError, TypeError), "`eps`")
          for eps in [-1e-3, float("nan"), "1e-3"]),
    ],
    cpp_checks=[
        CppCheck("deter shape", ln_gru_cpp(lambda g, h, w, b: (g, h[:, 1:].contiguous(), w, b)),
                 "`deter` must have shape"),
        CppCheck("bias dtype", ln_gru_cpp(lambda g, h, w, b: (g, h, w, b.double())), "`bias` must have the dtype"),
        CppCheck("bf16 gates, bf16 weight", ln_gru_cpp(lambda g, h, w, b: (g.bfloat16(), h, w.bfloat16(), b)),
                 "`weight` must have the dtype of `deter`"),
        # The CPU kernels: low-precision gates only beside a float32 state.
        CppCheck("bf16 gates, bf16 state",
                 ln_gru_cpp(lambda g, h, w, b: (g.bfloat16(), h.bfloat16(), w.bfloat16(), b.bfloat16())),
                 "`gates` must be float32 or float64", (CPU_NS,)),
        CppCheck("gates shape", ln_gru_cpp(lambda g, h, w, b: (g[:, 1:].contiguous(), h, w, b)),
                 r"`gates` must be \[B, 3\*D\]"),
        CppCheck("backward rstd shape",
                 ln_gru_cpp_backward(lambda out, g, h, w, b, mean, rstd: (out, g, h, w, b, mean, rstd[1:])),
                 "`rstd` must have shape"),
        CppCheck("backward grad shape",
                 ln_gru_cpp_backward(lambda out, g, h, w, b, mean, rstd: (out[1:], g, h, w, b, mean, rstd)),
                 "`grad` must have shape"),
    ],
)
