"""The fused linear op beyond the checks every op shares (tests/test_op_contract.py runs its values and gradients on
every route through the kernel: our GEMV at <= 6 rows, oneDNN or MKL above, ATen for float64): leading dims, strided
views, the oneDNN route, the weight gradient's layout, autocast, empty sizes and the networks' Linear layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_to_scale, cpu_gemm_library, tol
from op_contract import CPU_NS, Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample

import dreamer_fast as df
from dreamer_fast.agent import nets
from dreamer_fast.ops.linear import linear
from dreamer_fast.reference.linear import linear_ref

pytestmark = pytest.mark.skipif(not df.has_kernel("linear", "cpu"), reason="the compiled extension is not loaded")

GEMMS = ["mkl", "onednn", "aten"] if df.extension_loaded() else []


def make(shape, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()


def close(got, want):
    """Fused vs reference: the two sum in different orders, so the tolerance scales with the values (a dW summed
    over 800 rows is ~30 here)."""
    assert_close_to_scale(got, want, **tol(want.dtype))


def check_against_reference(x, w, b):
    """Forward and the gradients of all three inputs, fused vs reference, on the same upstream gradient."""
    leaves = [t for t in (x, w, b) if t is not None]
    y, y_ref = linear(x, w, b, backend="fused"), linear_ref(x, w, b)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    close(y, y_ref)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, leaves, g)):
        close(got, want)


def test_leading_dims(device, dtype):
    check_against_reference(make((5, 4, 3, 24), device, dtype, 0), make((9, 24), device, dtype, 1),
                            make((9,), device, dtype, 2))
    check_against_reference(make((24,), device, dtype, 3), make((9, 24), device, dtype, 1), None)  # x [K] -> [N]


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("M", [3, 80])
def test_strided_views(gemm, M, dtype):
    """Transposed x and weight (what the backward passes), a reshaped-and-transposed conv weight (the decoder's first
    layer), a column-strided x (copied first) and size-1 dims with odd strides."""
    with cpu_gemm_library(gemm):
        x_t = make((300, M), "cpu", dtype, 0)
        w_t = make((300, 270), "cpu", dtype, 1)
        check_against_reference(x_t.t(), w_t.t(), None)
        conv_w = make((300, 70, 2, 2), "cpu", dtype, 2)
        check_against_reference(x_t.t(), conv_w.reshape(300, 280).t(), make((280,), "cpu", dtype, 3))
        wide = make((M, 600), "cpu", dtype, 4)
        check_against_reference(wide[:, ::2], make((260, 300), "cpu", dtype, 5), None)
        check_against_reference(wide[:, :300], make((260, 300), "cpu", dtype, 5), None)  # rows padded: copied first
        row = make((1, 300), "cpu", dtype, 6)
        odd = row.as_strided((1, 300), (999, 1))  # a size-1 dim's stride is arbitrary in torch
        check_against_reference(odd, w_t.t(), None)


@pytest.mark.parametrize("M,N,calls", [(300, 300, 3), (2, 300, 0), (300, 18, 0)])
def test_onednn_route_is_taken_for_large_float32_products(M, N, calls):
    """With oneDNN selected, float32 products of at least 64 x 256 x 256 run mkldnn::_linear_pointwise (forward and
    both backward products); smaller ones (2 rows: our GEMV forward; an 18-wide last layer) and float64 stay on ATen."""
    x, w = make((M, 300), "cpu", torch.float32, 0), make((N, 300), "cpu", torch.float32, 1)

    def onednn_calls(x, w):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = linear(x, w, backend="fused")
            torch.autograd.grad(y, (x, w), torch.ones_like(y))
        return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")

    with cpu_gemm_library("onednn"):
        assert onednn_calls(x, w) == calls
        assert onednn_calls(x.double().detach().requires_grad_(), w.double().detach().requires_grad_()) == 0
    with cpu_gemm_library("mkl"):
        assert onednn_calls(x, w) == 0


@pytest.mark.parametrize("gemm", GEMMS)
def test_weight_gradient_in_the_weights_layout(gemm):
    """A column-major weight (the decoder's transposed view of a conv weight) gets a column-major gradient, so the
    views back to the parameter copy nothing; a row-major one a row-major gradient."""
    with cpu_gemm_library(gemm):
        x = make((300, 280), "cpu", torch.float32, 0)
        for w in (make((280, 260), "cpu", torch.float32, 1).t(), make((260, 280), "cpu", torch.float32, 2)):
            y = linear(x, w, backend="fused")
            (dw,) = torch.autograd.grad(y, w, torch.ones_like(y))
            assert dw.stride() == w.stride()
            close(dw, torch.autograd.grad(linear_ref(x, w), w, torch.ones_like(y))[0])


def test_autocast_is_f_linear():
    """Under autocast the op is F.linear, so autocast picks the dtype (bfloat16 here) as for any Linear layer."""
    x, w, b = torch.randn(9, 16), torch.randn(5, 16), torch.randn(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, want = linear(x, w, b, backend="fused"), F.linear(x, w, b)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, want)


def test_empty_sizes(device):
    for M, K, N in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]:
        x, w, b = (make((M, K), device, torch.float32, 0), make((N, K), device, torch.float32, 1),
                   make((N,), device, torch.float32, 2))
        y = linear(x, w, b, backend="fused")
        torch.testing.assert_close(y, F.linear(x, w, b))
        dx, dw, db = torch.autograd.grad(y.sum(), (x, w, b))
        assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_linear_layer(monkeypatch):
    """nets.Linear: nn.Linear's parameters and state dict; the fused op, or F.linear on the reference backend."""
    layer = nets.Linear(12, 5, backend="fused")
    plain = torch.nn.Linear(12, 5)
    assert layer.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(21, 12, requires_grad=True)
    assert "dreamer_fast_linear" in str(layer(x).grad_fn)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **tol(torch.float32))
    assert nets.Linear(12, 5, backend="reference")(x).grad_fn.name() == "AddmmBackward0"
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    assert nets.Linear(12, 5)(x).grad_fn.name() == "AddmmBackward0"


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def linear_fused(*args):
    return linear(*args, backend="fused")


def linear_close(got, want, **kw):
    """The tolerance scales with the values (a dW summed over 800 rows is ~30 here)."""
    assert_close_to_scale(got, want, **kw)


def linear_sample(gemm, M, K, N, with_bias):
    def build(device, dtype):
        bias = make((N,), device, dtype, 2) if with_bias else None
        return (make((M, K), device, dtype, 0), make((N, K), device, dtype, 1), bias), {}

    return Sample(f"{gemm}-{M}x{K}x{N}-{'bias' if with_bias else 'no-bias'}", build,
                  lambda: cpu_gemm_library(gemm))


def linear_gradcheck(device):
    args = (make((5, 7), device, torch.float64, 0), make((4, 7), device, torch.float64, 1),
            make((4,), device, torch.float64, 2))
    return [(linear_fused, args)]


def linear_opcheck(gemm):
    def build(device):
        x, w, b = (make((8, 5), device, torch.float32, 0), make((3, 5), device, torch.float32, 1),
                   make((3,), device, torch.float32, 2))
        views = (make((5, 8), device, torch.float32, 3).t(), make((5, 3), device, torch.float32, 4).t(),
                 None)  # the backward's transposed operands
        return [(torch.ops.dreamer_fast.linear.default, (x, w, b), {}),
                (torch.ops.dreamer_fast.linear.default, views, {})]

    return Opcheck(gemm, build, lambda: cpu_gemm_library(gemm))


def linear_compile():
    def loss(*a):
        return linear_fused(*a).square().mean()

    return loss, (make((16, 33), "cpu", torch.float32, 0), make((8, 33), "cpu", torch.float32, 1),
                  make((8,), "cpu", torch.float32, 2))


def linear_bad(**change):
    def call():
        args = dict(x=torch.randn(4, 6), weight=torch.randn(3, 6), bias=torch.randn(3))
        args.update({name: new() for name, new in change.items()})
        linear_fused(args["x"], args["weight"], args["bias"])

    return call


def linear_cpp(x, weight, bias):
    return lambda ns: ns.linear(x(), weight(), bias())


CASE = OpCase(
    name="linear",
    op=linear_fused,
    reference=linear_ref,
    input_names=("x", "weight", "bias"),
    output_names=("y",),
    # Rows 1 and 6: the extension's GEMV; 7: the GEMM library below oneDNN's sizes; 800 x 290 -> 270: oneDNN where
    # selected. Odd sizes give the GEMV's block tails.
    samples=[linear_sample(gemm, M, K, N, with_bias) for gemm in GEMMS
             for M, K, N in [(1, 33, 17), (6, 70, 41), (7, 33, 17), (800, 290, 270)] for with_bias in [True, False]],
    close=linear_close,
    gradchecks=[Gradcheck("5x7x4-bias", linear_gradcheck, gradgrad=True)],
    opchecks=[linear_opcheck(gemm) for gemm in GEMMS],
    compile_loss=linear_compile,
    bad_inputs=[
        Bad("int x", linear_bad(x=lambda: torch.ones(4, 6, dtype=torch.long)), TypeError,
            "`x` must be float32, float64"),
        Bad("weight dtype", linear_bad(weight=lambda: torch.randn(3, 6, dtype=torch.float64)), TypeError,
            "`weight` has dtype torch.float64"),
        Bad("bias dtype", linear_bad(bias=lambda: torch.randn(3, dtype=torch.float64)), TypeError,
            "`bias` has dtype torch.float64"),
        Bad("weight 1-d", linear_bad(weight=lambda: torch.randn(6)), ValueError,
            r"`weight` must be \[N, K\] with K = x.shape\[-1\] = 6"),
        Bad("weight K", linear_bad(weight=lambda: torch.randn(3, 5)), ValueError,
            r"`weight` must be \[N, K\] with K = x.shape\[-1\] = 6"),
        Bad("bias shape", linear_bad(bias=lambda: torch.randn(4)), ValueError, r"`bias` must have shape \[N\] = \[3\]"),
        Bad("x 0-d", linear_bad(x=lambda: torch.tensor(1.0)), ValueError, "`x` must be"),
        Bad("weight device", linear_bad(weight=lambda: torch.randn(3, 6, device="meta")), ValueError,
            "`weight` is on meta"),
        Bad("not a tensor", linear_bad(bias=lambda: [0.0, 1.0, 2.0]), TypeError, "`bias` must be a torch.Tensor"),
    ],
    cpp_checks=[
        CppCheck("x 3-d", linear_cpp(lambda: torch.randn(2, 4, 6), lambda: torch.randn(3, 6), lambda: None),
                 r"`x` must be \[M, K\]", (CPU_NS,)),
        CppCheck("weight dtype",
                 linear_cpp(lambda: torch.randn(4, 6), lambda: torch.randn(3, 6, dtype=torch.float64), lambda: None),
                 "`weight` must have the dtype of `x`", (CPU_NS,)),
        CppCheck("weight K", linear_cpp(lambda: torch.randn(4, 6), lambda: torch.randn(3, 5), lambda: None),
                 r"`weight` must be \[N, K\] with K = x.size\(1\) = 6", (CPU_NS,)),
        CppCheck("bias shape", linear_cpp(lambda: torch.randn(4, 6), lambda: torch.randn(3, 6), lambda: torch.randn(2)),
                 "`bias` must have shape", (CPU_NS,)),
        CppCheck("bias non-contiguous",
                 linear_cpp(lambda: torch.randn(4, 6), lambda: torch.randn(3, 6), lambda: torch.randn(3, 2)[:, 0]),
                 "`bias` must be contiguous", (CPU_NS,)),
        CppCheck("x int", linear_cpp(lambda: torch.randn(4, 6).int(), lambda: torch.randn(3, 6).int(), lambda: None),
                 "`x` must be float32", (CPU_NS,)),
    ],
    marks=(pytestmark,),
)
