"""The fused ELU (alpha 1) beyond the checks every op shares (tests/test_op_contract.py): accuracy and special values
of both raw kernels (CPU and the CUDA source through the emulator), the emulated kernel at any alignment, the backward
from the output, the half types, dense layouts, empty sizes, the backends and the networks' ELU layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import kernel_namespaces, tol
from op_contract import Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample

import dreamer_fast as df
from dreamer_fast.agent import nets
from dreamer_fast.reference import elu_ref

pytestmark = pytest.mark.skipif(not df.has_kernel("elu", "cpu"), reason="the compiled extension is not loaded")

# Around the range reduction's steps (odd multiples of ln 2 / 2 = 0.3466), the clamp at -87, the far tails, and 0.
EDGES = [0.0, -0.0, -1e-30, -1e-7, -0.01, -0.3465, -0.3466, -0.35, -0.5, -1.0, -5.0, -20.0, -86.9, -87.0, -87.1, -88.7,
         -100.0, -1e4, 1e-30, 0.5, 3.0, 1e30]


def sample(shape, device, dtype, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_raw_kernels_accuracy_and_special_values(ns):
    """float32 within 2 ulp of float64's expm1 (relative), across the branch points, tails and specials."""
    x = torch.cat([torch.tensor(EDGES), torch.linspace(-90, 5, 100_001), -torch.logspace(-38, 2, 20_001)])
    y = ns.elu(x)
    want = F.elu(x.double())
    finite = torch.isfinite(want) & (want != 0)
    rel = ((y.double() - want).abs() / want.abs())[finite]
    assert rel.max() < 2.5 * 2.0**-24, rel.max()
    assert torch.equal(y[want == 0], want[want == 0].float())  # 0 and -0 stay exact
    special = torch.tensor([float("inf"), -float("inf"), float("nan")])
    out = ns.elu(special)
    assert out[0] == float("inf") and out[1] == -1.0 and out[2].isnan()
    assert ns.elu(torch.tensor([-1e-45]))[0] == torch.tensor(-1e-45)  # a denormal keeps its value (e^x - 1 ~ x)


def test_emulated_cuda_kernel_equals_cpu_kernel():
    x = torch.cat([torch.tensor(EDGES), torch.randn(5000) * 4])
    g, out = torch.randn_like(x), torch.ops.dreamer_fast.elu(x)
    assert torch.equal(torch.ops.dreamer_fast_emu.elu(x), out)
    assert torch.equal(torch.ops.dreamer_fast_emu.elu_backward(g, out), torch.ops.dreamer_fast.elu_backward(g, out))
    xd = x.double()
    assert torch.equal(torch.ops.dreamer_fast_emu.elu(xd), torch.ops.dreamer_fast.elu(xd))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_emulated_cuda_kernel_any_offset_and_length(dtype):
    """The CUDA kernels read 16 bytes per access when all pointers are 16-byte aligned (packs of 2-8 elements plus a
    tail) and one element otherwise: views at every element offset, lengths around a pack, equal the CPU kernel."""
    base = (torch.randn(300) * 4).to(dtype)
    grad = torch.randn(300).to(dtype)
    for offset in range(9):
        for length in (0, 1, 2, 3, 7, 8, 9, 17, 255, 256 - offset):
            x, g = base[offset:offset + length], grad[offset:offset + length]  # contiguous views, maybe misaligned
            out = torch.ops.dreamer_fast.elu(x)
            assert torch.equal(torch.ops.dreamer_fast_emu.elu(x), out), (offset, length)
            got = torch.ops.dreamer_fast_emu.elu_backward(g, out)
            assert torch.equal(got, torch.ops.dreamer_fast.elu_backward(g, out)), (offset, length)
            y = torch.ops.dreamer_fast.elu(base)[offset:offset + length]  # an aligned grad with a misaligned output
            assert torch.equal(torch.ops.dreamer_fast_emu.elu_backward(grad[:length], y),
                               torch.ops.dreamer_fast.elu_backward(grad[:length], y)), (offset, length)


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_backward_from_the_output(ns):
    """dx = grad·(out + 1) where out <= 0, grad elsewhere: exactly ATen's result-based ELU backward."""
    x = torch.cat([torch.tensor(EDGES), torch.randn(3000) * 4]).double()
    out, g = F.elu(x), torch.randn(x.shape, dtype=torch.float64)
    want = torch.ops.aten.elu_backward(g, 1.0, 1, 1, True, out)
    assert torch.equal(ns.elu_backward(g, out), want)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ns", kernel_namespaces())
def test_half_types_round_once_from_float32(ns, half):
    """bfloat16/float16 (CPU too: under bf16 autocast the conv outputs are bfloat16) compute in float32 and round
    once to nearest even: equal to rounding the float32 kernel's result, forward and backward."""
    x = (torch.randn(4099) * 4).to(half)
    x[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    y = ns.elu(x)
    assert y.dtype == half
    want = ns.elu(x.float()).to(half)
    assert torch.equal(y[3:], want[3:]) and y[0].isnan() and y[1] == float("inf") and y[2] == -1
    g = torch.randn(x.shape).to(half)
    assert torch.equal(ns.elu_backward(g[3:], y[3:]), ns.elu_backward(g[3:].float(), y[3:].float()).to(half))
    torch.testing.assert_close(df.elu(x[3:], backend="fused").float(), F.elu(x[3:].float()), **tol(half))


def test_dense_layouts_are_kept(device, dtype):
    """A channels-last (or any permuted dense) input is computed in place of its layout: same values and gradients as
    F.elu, the output and the input gradient with the input's strides."""
    for x in (sample((3, 5, 4, 6), device, dtype).to(memory_format=torch.channels_last),
              sample((4, 7, 5), device, dtype).permute(2, 0, 1)):
        x = x.detach().requires_grad_()
        y = df.elu(x, backend="fused")
        assert y.stride() == x.stride()
        torch.testing.assert_close(y, F.elu(x), **tol(dtype))
        g = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, g)
        assert dx.stride() == x.stride()
        torch.testing.assert_close(dx, torch.autograd.grad(F.elu(x), x, g)[0], **tol(dtype))


def test_non_contiguous_and_empty(device):
    x = sample((6, 8), device, torch.float64).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(df.elu(x, backend="fused"), F.elu(x), **tol(torch.float64))
    for shape in [(0,), (3, 0), (0, 4, 5)]:
        e = torch.empty(shape, device=device, requires_grad=True)
        out = df.elu(e, backend="fused")
        assert out.shape == shape
        assert torch.autograd.grad(out.sum(), e)[0].shape == shape


def test_backend_selection_and_layer(monkeypatch):
    x = torch.randn(5, 9)
    with pytest.raises(ValueError, match="backend must be one of"):
        df.elu(x, backend="fast")
    assert df.elu(x.requires_grad_(), backend="reference").grad_fn.name() == "EluBackward0"
    assert "dreamer_fast" in str(df.elu(x, backend="fused").grad_fn)
    # The networks' layer: the fused op, or F.elu in place on the reference backend; same values.
    y = x.detach() * 2
    fused, ref = nets.ELU("fused")(y.clone()), nets.ELU("reference")(y.clone())
    torch.testing.assert_close(fused, ref, **tol(torch.float32))
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    z = y.clone()
    assert nets.ELU()(z) is z  # in place


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def elu_fused(x):
    return df.elu(x, backend="fused")


def elu_gradcheck(device):
    x = sample((6, 5), device, torch.float64, requires_grad=True)
    x = x.detach().masked_fill(x.detach().abs() < 1e-3, 0.5).requires_grad_()  # away from the kink at 0
    return [(elu_fused, (x,))]


def elu_opcheck(device):
    x = sample((4, 7), device, torch.float32)
    return [(torch.ops.dreamer_fast.elu.default, (sample((4, 7), device, torch.float32, True),), {}),
            (torch.ops.dreamer_fast.elu_backward.default, (torch.randn_like(x), F.elu(x)), {})]


def elu_compile():
    def loss(t):
        return elu_fused(t).square().mean()

    return loss, (sample((16, 33), "cpu", torch.float32, requires_grad=True),)


def elu_bad(mutate):
    return lambda: elu_fused(mutate(torch.randn(3, 4)))


def elu_cpp_backward(mutate):
    def call(ns):
        out = F.elu(torch.randn(4, 6))
        ns.elu_backward(*mutate(out))

    return call


CASE = OpCase(
    name="elu",
    op=elu_fused,
    reference=elu_ref,
    input_names=("x",),
    output_names=("y",),
    samples=[Sample("x".join(map(str, shape)),
                    lambda device, dtype, shape=shape: ((sample(shape, device, dtype, requires_grad=True),), {}))
             for shape in [(7,), (3, 5), (2, 3, 4, 5), (800, 13)]],
    gradchecks=[Gradcheck("6x5-away-from-0", elu_gradcheck)],
    opchecks=[Opcheck("forward-backward", elu_opcheck)],
    compile_loss=elu_compile,
    bad_inputs=[
        Bad("int dtype", elu_bad(lambda x: x.long()), TypeError, "`x` must be float32, float64, float16 or bfloat16"),
        Bad("bool", elu_bad(lambda x: x > 0), TypeError, "`x` must be float32"),
        Bad("not a tensor", elu_bad(lambda x: 1.5), TypeError, "`x` must be a torch.Tensor"),
    ],
    cpp_checks=[
        CppCheck("x non-contiguous", lambda ns: ns.elu(torch.randn(4, 6).t()), "`x` must be contiguous"),
        CppCheck("x int", lambda ns: ns.elu(torch.randn(4, 6).int()), "`x` must be float32"),
        CppCheck("backward grad shape", elu_cpp_backward(lambda out: (torch.randn(4, 5), out)),
                 "`grad` must have shape"),
        CppCheck("backward grad dtype", elu_cpp_backward(lambda out: (torch.randn(4, 6, dtype=torch.float64), out)),
                 "`grad` must have the dtype of `out`"),
        CppCheck("backward out non-contiguous", elu_cpp_backward(lambda out: (torch.randn(6, 4), out.t())),
                 "`out` must be contiguous"),
    ],
    marks=(pytestmark,),
)
