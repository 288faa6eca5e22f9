"""straight_through_categorical beyond the checks every op shares (tests/test_op_contract.py): seeded samples, the raw
kernels (CPU and emulated CUDA) against the reference and each other, the random stream, the sampling distribution,
the draw rule and other semantics, layouts, half precision, the seed's device and the backends."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
from conftest import CUDA, emulator_schedule, kernel_namespaces, tol
from op_contract import Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal

import dreamer_fast as df
from dreamer_fast.reference import straight_through_categorical_ref
from dreamer_fast.reference.philox import PhiloxStream, draw_seed, philox4x32_10, philox_uniform

OP = df.straight_through_categorical


def make(shape, dtype=torch.float32, device="cpu", seed=0, scale=2.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
    noise = torch.rand(shape[:-1], generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return logits.requires_grad_(requires_grad), noise


def seed_tensor(value=0):
    return torch.tensor(value, dtype=torch.int64)


def away_from_boundaries(probs: torch.Tensor, noise: torch.Tensor, margin: float = 1e-5) -> torch.Tensor:
    """Rows whose noise is more than `margin` from every cumsum boundary (where float32 rounding cannot matter)."""
    cdf = probs.detach().double().cumsum(-1)
    return ((cdf - noise.double()[..., None]).abs() > margin).all(-1)


def assert_samples_equal(got: torch.Tensor, want: torch.Tensor, probs: torch.Tensor, noise: torch.Tensor) -> None:
    """Equal one-hots: everywhere in float64, away from class boundaries in float32 (see away_from_boundaries)."""
    got, want = got.detach(), want.detach()
    assert ((got == 0) | (got == 1)).all() and (got.sum(-1) == 1).all(), "sample is not one-hot"
    rows = torch.ones(got.shape[:-1], dtype=torch.bool, device=got.device)
    if got.dtype != torch.float64:
        rows = away_from_boundaries(probs, noise)
        assert rows.float().mean() > 0.9, "too few rows to compare"
    torch.testing.assert_close(got[rows], want[rows], rtol=0, atol=0)


def losses(sample, probs, w, v):
    return (sample * w).sum() + (probs * v).sum()


# ---- samples and raw kernels against the reference -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(500, 32), (20, 3, 7)], ids=str)
def test_seeded_samples_match_reference(shape, device, dtype):
    """Without noise both draw from Philox under the generator's seed: the same samples, fused or reference."""
    logits, _ = make(shape, dtype, device, seed=1)
    sample, probs = OP(logits, 0.01, generator=torch.Generator().manual_seed(7), backend="fused")
    ref_sample, ref_probs = straight_through_categorical_ref(logits, 0.01, generator=torch.Generator().manual_seed(7))
    noise = philox_uniform(draw_seed(torch.Generator().manual_seed(7)), shape[:-1], dtype, device)  # what both drew
    assert_samples_equal(sample, ref_sample, ref_probs, noise)
    torch.testing.assert_close(probs, ref_probs, **tol(dtype))


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_raw_kernels_match_reference(ns, dtype):
    """Each kernel on its own (no autograd): forward, and backward with either or both incoming gradients."""
    logits, noise = make((60, 37), dtype, requires_grad=True)
    ref_sample, ref_probs = straight_through_categorical_ref(logits, 0.1, noise=noise)
    sample, probs = ns.straight_through_categorical(logits.detach(), noise, seed_tensor(), 0.1)
    torch.testing.assert_close(probs, ref_probs.detach(), **tol(dtype))
    assert_samples_equal(sample, ref_sample, ref_probs, noise)
    w, v = torch.randn_like(probs), torch.randn_like(probs)
    for gs, gp in ((w, v), (w, None), (None, v)):
        loss = sum((o * g).sum() for o, g in ((ref_sample, gs), (ref_probs, gp)) if g is not None)
        want = torch.autograd.grad(loss, logits, retain_graph=True)[0]
        got = ns.straight_through_categorical_backward(gs, gp, probs, 0.1)
        torch.testing.assert_close(got, want, **tol(dtype))
    assert torch.equal(ns.straight_through_categorical_backward(None, None, probs, 0.1), torch.zeros_like(probs))


@pytest.mark.parametrize("K", [1, 5, 31, 32, 33, 70])
def test_emulated_cuda_kernel_equals_cpu_kernel(K, dtype):
    """Same reduction order (warp lanes, sequential cumsum) and the same exp: identical probs, samples and gradients."""
    logits, noise = make((45, K), dtype, scale=3.0, seed=K)
    g, g2 = torch.randn_like(logits), torch.randn_like(logits)  # not g and -g: their sum, the gradient used, is 0
    cpu, emu = torch.ops.dreamer_fast, torch.ops.dreamer_fast_emu
    for noise_arg, seed in ((None, seed_tensor(-12345)), (None, seed_tensor(2**62)), (noise, seed_tensor())):
        s1, p1 = cpu.straight_through_categorical(logits, noise_arg, seed, 0.05)
        s2, p2 = emu.straight_through_categorical(logits, noise_arg, seed, 0.05)
        assert torch.equal(s1, s2) and torch.equal(p1, p2)
    for grads in ((g, g2), (g, None), (None, g2)):
        want = cpu.straight_through_categorical_backward(*grads, p1, 0.05)
        assert torch.equal(emu.straight_through_categorical_backward(*grads, p1, 0.05), want)
        assert K == 1 or want.abs().sum() > 0


@pytest.mark.parametrize("K", [5, 33, 70])
def test_emulated_cuda_kernel_is_schedule_independent(K):
    """Under the emulator's reverse schedule (lanes last first) the CUDA kernels still give the CPU kernel's bits:
    every lane's read of the shared chunk waits (__syncwarp) for the lanes that write it, in whatever order they run."""
    logits, noise = make((20, K), torch.float64, scale=3.0, seed=K)
    g, g2 = torch.randn_like(logits), torch.randn_like(logits)
    cpu, emu = torch.ops.dreamer_fast, torch.ops.dreamer_fast_emu
    s1, p1 = cpu.straight_through_categorical(logits, noise, seed_tensor(), 0.05)
    want = cpu.straight_through_categorical_backward(g, g2, p1, 0.05)
    with emulator_schedule("reverse"):
        s2, p2 = emu.straight_through_categorical(logits, noise, seed_tensor(), 0.05)
        got = emu.straight_through_categorical_backward(g, g2, p1, 0.05)
    assert torch.equal(p2, p1)
    assert torch.equal(s2, s1)
    assert torch.equal(got, want)


# ---- the random stream ----------------------------------------------------------------------------------------------


def test_reference_philox_known_answers():
    """Random123's known answers for Philox4x32-10 (csrc/include/dreamer_fast/philox.h passes the same ones)."""
    t = lambda *v: tuple(torch.tensor(x, dtype=torch.int64) for x in v)  # noqa: E731
    got = philox4x32_10(t(0, 0, 0, 0), t(0, 0))
    assert [x.item() for x in got] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    f = 0xFFFFFFFF
    got = philox4x32_10(t(f, f, f, f), t(f, f))
    assert [x.item() for x in got] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("ns", kernel_namespaces())
def test_kernels_draw_row_n_from_stream_element_n(ns):
    """With K = 2 and probs (1/2, 1/2) the class is (u >= 1/2): the kernel's uniforms are the reference stream's."""
    seed = seed_tensor(-(2**40) - 3)
    sample, _ = ns.straight_through_categorical(torch.zeros(3, 100, 2, dtype=torch.float64), None, seed, 0.0)
    u = philox_uniform(seed, (3, 100), torch.float64, "cpu")
    assert torch.equal(sample[..., 1], (u >= 0.5).double())


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of `counts` to `probs`: P(chi2 >= statistic), from the regularised upper incomplete gamma
    function (scipy.stats.chi2.sf without scipy)."""
    expected = probs * counts.sum()
    statistic = ((counts - expected) ** 2 / expected).sum()
    dof = torch.tensor(probs.numel() - 1, dtype=torch.float64)
    return torch.special.gammaincc(dof / 2, statistic / 2).item()


DISTRIBUTIONS = [
    ([0.5, 0.25, 0.125, 0.0625, 0.0625], 0.0),
    ([0.7, 0.2, 0.05, 0.03, 0.01, 0.01], 0.0),
    ([0.97, 0.01, 0.01, 0.01], 0.2),  # mixed: (1 - 0.2) p + 0.2 / 4
]


@pytest.mark.parametrize(
    "ns,draws",
    [
        pytest.param(torch.ops.dreamer_fast, 200_000, id="cpu-kernel"),
        pytest.param(torch.ops.dreamer_fast_emu, 8_000, id="emulated-cuda-kernel"),  # the emulator is slow
    ],
)
@pytest.mark.parametrize("dist", DISTRIBUTIONS, ids=lambda d: f"K{len(d[0])}-u{d[1]}")
def test_sampling_distribution(ns, draws, dist):
    """Fixed seed, many rows with the same logits: the class frequencies fit the mixed probs (chi-square p > 1e-6),
    and clearly do not fit a slightly different distribution (so the test can fail)."""
    p, unimix = torch.tensor(dist[0], dtype=torch.float64), dist[1]
    mixed = (1 - unimix) * p + unimix / p.numel()
    logits = p.log().expand(draws, -1).contiguous()
    sample, probs = ns.straight_through_categorical(logits, None, seed_tensor(20240601), unimix)
    torch.testing.assert_close(probs[0], mixed)
    counts = sample.sum(0)
    assert counts.sum() == draws
    assert chi_square_p_value(counts, mixed) > 1e-6
    wrong = mixed.roll(1) * 0.2 + mixed * 0.8  # moves 20% of the mass: a real bug would move more
    assert chi_square_p_value(counts, wrong) < 1e-6


def test_same_seed_same_samples_different_seed_different():
    logits, _ = make((400, 32))
    a, _ = OP(logits, generator=torch.Generator().manual_seed(1), backend="fused")
    b, _ = OP(logits, generator=torch.Generator().manual_seed(1), backend="fused")
    c, _ = OP(logits, generator=torch.Generator().manual_seed(2), backend="fused")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_reproducible_under_manual_seed():
    logits, _ = make((200, 32))
    torch.manual_seed(123)
    a, _ = OP(logits, backend="fused")
    b, _ = OP(logits, backend="fused")  # the default generator moved on: a fresh draw
    torch.manual_seed(123)
    c, _ = OP(logits, backend="fused")
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_noise_does_not_consume_the_generator():
    logits, noise = make((10, 4))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    OP(logits, noise=noise, generator=g, backend="fused")
    assert torch.equal(g.get_state(), state)


# ---- semantics ------------------------------------------------------------------------------------------------------


def test_draw_rule_at_the_boundaries():
    """The class is the smallest k with noise < cumsum(probs)[k]: a noise equal to a boundary goes to the next class,
    and a noise at or above the last cumsum is clamped to K - 1."""
    logits = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64).log().expand(5, 3)
    noise = torch.tensor([0.0, 0.2499, 0.25, 0.5, 1.0], dtype=torch.float64)
    for backend in ("fused", "reference"):
        sample, _ = OP(logits, noise=noise, backend=backend)
        assert sample.argmax(-1).tolist() == [0, 0, 1, 2, 2], backend


@pytest.mark.parametrize("ns", kernel_namespaces())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_raw_kernels_draw_rule_at_the_boundaries(ns, dtype):
    """test_draw_rule_at_the_boundaries on each raw kernel, with probs whose cumsum is exact (powers of 2): a noise at
    or above the last cumsum (1 here) still picks K - 1, also when the row spans two chunks of 32 lanes (K = 64)."""
    cases = [
        ([0.25, 0.25, 0.5], [0.0, 0.2499, 0.25, 0.5, 1.0], [0, 0, 1, 2, 2]),
        ([1 / 64] * 64, [0.0, 1 / 64, 0.5, 63 / 64, 1.0], [0, 1, 32, 63, 63]),
    ]
    for probs, noise, want in cases:
        logits = torch.tensor(probs, dtype=torch.float64).log().to(dtype).expand(len(noise), -1).contiguous()
        sample, _ = ns.straight_through_categorical(logits, torch.tensor(noise, dtype=dtype), seed_tensor(), 0.0)
        assert torch.equal(sample.sum(-1), torch.ones(len(noise), dtype=dtype)), "sample is not one-hot"
        assert sample.argmax(-1).tolist() == want, f"K={len(probs)}"


def test_unimix(device):
    logits, noise = make((50, 8), torch.float64, device, scale=20.0, requires_grad=True)
    sample, probs = OP(logits, 0.1, noise=noise, backend="fused")
    assert (probs >= 0.1 / 8 - 1e-15).all()  # the floor u / K, even for logits far below the max
    torch.testing.assert_close(probs.sum(-1), torch.ones(50, dtype=torch.float64, device=device))
    sample, probs = OP(logits, 1.0, noise=noise, backend="fused")
    assert torch.equal(probs, torch.full_like(probs, 1 / 8))  # u = 1: uniform ...
    assert torch.equal(sample.argmax(-1), (noise * 8).long())  # ... so the class is floor(8 u)
    grad = torch.autograd.grad(losses(sample, probs, torch.randn_like(probs), torch.randn_like(probs)), logits)[0]
    assert torch.equal(grad, torch.zeros_like(grad))  # ... and constant


def test_single_class(device, dtype):
    logits, noise = make((6, 3, 1), dtype, device, requires_grad=True)
    for kwargs in ({"noise": noise}, {}):
        sample, probs = OP(logits, 0.3, backend="fused", **kwargs)
        assert torch.equal(sample, torch.ones_like(sample))
        torch.testing.assert_close(probs, torch.ones_like(probs))
        grad = torch.autograd.grad(losses(sample, probs, torch.randn_like(probs), torch.randn_like(probs)), logits)[0]
        assert torch.equal(grad, torch.zeros_like(grad))


def test_sample_gradient_is_the_probs_gradient(device, dtype):
    logits, noise = make((9, 32), dtype, device, requires_grad=True)
    w = torch.randn(9, 32, dtype=dtype, device=device)
    sample, probs = OP(logits, 0.01, noise=noise, backend="fused")
    via_sample = torch.autograd.grad((sample * w).sum(), logits, retain_graph=True)[0]
    via_probs = torch.autograd.grad((probs * w).sum(), logits)[0]
    torch.testing.assert_close(via_sample, via_probs, **tol(dtype))
    assert via_sample.abs().sum() > 0


def test_nan_logits_give_nan_probs():
    logits, noise = make((4, 6), torch.float64)
    logits[1, 2] = float("nan")
    _, probs = OP(logits, 0.01, noise=noise, backend="fused")
    assert torch.isnan(probs[1]).all()
    assert not torch.isnan(probs[[0, 2, 3]]).any()


def test_extreme_logits():
    """Large and -inf logits: no overflow, exact zeros where softmax is zero."""
    logits = torch.tensor([[1e4, 0.0, -1e4, -math.inf], [-math.inf, 3.0, 3.0, -math.inf]])
    noise = torch.tensor([0.999, 0.5])
    sample, probs = OP(logits, noise=noise, backend="fused")
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]]), rtol=0, atol=1e-7)
    assert probs[0, 3] == 0 and probs[1, 0] == 0
    assert sample.argmax(-1).tolist() == [0, 2]


# ---- layouts, empty sizes, half precision ----------------------------------------------------------------------------


def test_non_contiguous_inputs(device):
    logits, noise = make((20, 32), torch.float64, device)
    strided_logits = logits.t().contiguous().t()  # same values, column-major
    strided_noise = torch.stack([noise, noise], -1)[..., 0]
    assert not strided_logits.is_contiguous() and not strided_noise.is_contiguous()
    for a, b in zip(OP(strided_logits, 0.1, noise=strided_noise, backend="fused"), OP(logits, 0.1, noise=noise)):
        assert torch.equal(a, b)
    g = torch.Generator()
    a, _ = OP(strided_logits, generator=g.manual_seed(0), backend="fused")
    b, _ = OP(logits, generator=g.manual_seed(0), backend="fused")
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 32), (3, 0, 5)], ids=str)
def test_empty_leading_dims(shape, device):
    logits, noise = make(shape, torch.float32, device, requires_grad=True)
    for kwargs in ({"noise": noise}, {}):
        sample, probs = OP(logits, 0.01, backend="fused", **kwargs)
        assert sample.shape == probs.shape == shape
        grad = torch.autograd.grad((sample + probs).sum(), logits)[0]
        assert grad.shape == shape


@pytest.mark.skipif(not CUDA, reason="float16/bfloat16 run on CUDA only")
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(half):
    logits, noise = make((100, 32), torch.float32, "cuda", requires_grad=True)
    sample, probs = OP(logits.to(half), 0.01, noise=noise.to(half), backend="fused")
    _, ref_probs = straight_through_categorical_ref(logits, 0.01, noise=noise)
    assert sample.dtype == probs.dtype == half
    torch.testing.assert_close(probs.float(), ref_probs, **tol(half))


# ---- the seed's device, the backends ---------------------------------------------------------------------------------


def test_seed_on_another_device_is_rejected():
    """A seed off the CPU dispatches to that device's kernel: the fake (meta) kernel checks it too."""
    with pytest.raises(ValueError, match="`seed` must be a one-element int64 tensor on the CPU.*meta"):
        torch.ops.dreamer_fast.straight_through_categorical(make((5, 5))[0], None, seed_tensor().to("meta"), 0.1)


def test_reference_backend_gives_the_same_samples(monkeypatch):
    logits, _ = make((30, 32), torch.float64)
    fused = OP(logits, 0.01, generator=torch.Generator().manual_seed(4), backend="fused")
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    ref = OP(logits, 0.01, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fused[0], ref[0])
    torch.testing.assert_close(fused[1], ref[1], **tol(torch.float64))


# ---- the device-resident Philox stream ------------------------------------------------------------------------------


def stream_at(key, offset, device="cpu"):
    stream = PhiloxStream(key, device)
    stream.load_state_dict({"key": key, "offset": offset})
    return stream


def stream_kernels():
    """Every way to draw from a stream: the raw CPU and emulated CUDA kernels, the fused op and the reference."""
    raw = lambda ns: lambda x, st, u: ns.straight_through_categorical_stream(x, st.state, u)  # noqa: E731
    return [
        pytest.param(raw(torch.ops.dreamer_fast), id="cpu-kernel"),
        pytest.param(raw(torch.ops.dreamer_fast_emu), id="emulated-cuda-kernel"),
        pytest.param(lambda x, st, u: OP(x, u, stream=st, backend="fused"), id="fused"),
        pytest.param(lambda x, st, u: straight_through_categorical_ref(x, u, stream=st), id="reference"),
    ]


@pytest.mark.parametrize("draw", stream_kernels())
def test_stream_successive_draws_differ_and_advance_the_offset(draw):
    """Two calls with the same stream object draw different samples; each advances the offset by its rows."""
    logits = torch.zeros(3, 100, 2, dtype=torch.float64)
    stream = stream_at(-(2**40) - 3, 2**32 - 150)  # the offset crosses into the counter's high word
    first, _ = draw(logits, stream, 0.0)
    assert stream.state_dict() == {"key": -(2**40) - 3, "offset": 2**32 - 150 + 300}
    second, _ = draw(logits, stream, 0.0)
    assert stream.state_dict()["offset"] == 2**32 - 150 + 600
    assert not torch.equal(first, second)
    # Row n of each draw is stream element offset + n: with probs (1/2, 1/2) the class is (u >= 1/2).
    u = philox_uniform(torch.tensor(-(2**40) - 3), (2, 3, 100), torch.float64, "cpu", offset=2**32 - 150)
    assert torch.equal(torch.stack([first[..., 1], second[..., 1]]), (u >= 0.5).double())


@pytest.mark.parametrize("dtype_", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_stream_same_key_and_offset_same_samples_everywhere(dtype_):
    """The same key and offset give bit-equal samples and probs on the CPU kernel, the emulated CUDA kernel, the
    reference and (when present) CUDA; at offset 0 they are the samples of the seed path under that key."""
    logits, _ = make((40, 3, 32), dtype_, seed=4)
    key, offset = 1234567, 987
    outs = [draw(logits, stream_at(key, offset), 0.01) for draw in
            (stream_kernels()[i].values[0] for i in range(4))]
    if CUDA:
        cuda = OP(logits.cuda(), 0.01, stream=stream_at(key, offset, "cuda"), backend="fused")
        outs.append(tuple(t.cpu() for t in cuda))
    for sample, probs in outs[1:]:
        assert torch.equal(sample, outs[0][0])
        torch.testing.assert_close(probs, outs[0][1], **tol(dtype_))
    assert torch.equal(outs[0][1], outs[1][1])  # the emulated CUDA kernel's probs equal the CPU kernel's bit for bit
    at_zero = OP(logits, 0.01, stream=stream_at(key, 0), backend="fused")[0]
    seeded = torch.ops.dreamer_fast.straight_through_categorical(logits, None, seed_tensor(key), 0.01)[0]
    assert torch.equal(at_zero, seeded)


def test_stream_checkpoint_restores_the_draws():
    """state_dict / load_state_dict: a restored stream continues with exactly the draws of the original."""
    logits, _ = make((64, 32), seed=2)
    stream = PhiloxStream(generator=torch.Generator().manual_seed(3))
    OP(logits, stream=stream)
    saved = stream.state_dict()
    expected = [OP(logits, stream=stream)[0] for _ in range(3)]
    resumed = PhiloxStream(0)
    state = resumed.state
    resumed.load_state_dict(saved)
    assert resumed.state is state  # in place: a captured graph keeps reading the same tensor
    assert all(torch.equal(OP(logits, stream=resumed)[0], e) for e in expected)


def test_stream_with_noise_is_unused():
    logits, noise = make((6, 4))
    stream = stream_at(5, 10)
    sample = OP(logits, noise=noise, stream=stream)[0]
    assert stream.state_dict() == {"key": 5, "offset": 10}
    assert torch.equal(sample, OP(logits, noise=noise)[0])


def test_stream_gradients_equal_the_seed_path():
    """The stream op's C++ autograd gives the gradients of the seed path (same samples, same probs)."""
    logits, _ = make((7, 3, 5), torch.float64, requires_grad=True)
    w, v = torch.randn(7, 3, 5, dtype=torch.float64), torch.randn(7, 3, 5, dtype=torch.float64)
    got = torch.autograd.grad(losses(*OP(logits, 0.2, stream=stream_at(9, 0), backend="fused"), w, v), logits)[0]
    seed_path = torch.ops.dreamer_fast.straight_through_categorical(logits, None, seed_tensor(9), 0.2)
    want = torch.autograd.grad(losses(*seed_path, w, v), logits)[0]
    assert torch.equal(got, want)
    only_probs = torch.autograd.grad(OP(logits, 0.2, stream=stream_at(9, 0))[1].sum(), logits)[0]
    assert only_probs.abs().max() < 1e-12  # probs sum to 1 per row: an unused sample gradient stays absent


def test_philox_stream_arguments():
    with pytest.raises(TypeError, match=literal("`seed` must be an int or None")):
        PhiloxStream(1.5)
    with pytest.raises(ValueError, match=literal("`seed` must be in [-2^63, 2^63)")):
        PhiloxStream(2**63)
    with pytest.raises(ValueError, match=literal("expected a dict with keys 'key' and 'offset'")):
        PhiloxStream(0).load_state_dict({"key": 1})


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def categorical_fused(*args, **kwargs):
    return df.straight_through_categorical(*args, **kwargs, backend="fused")


def categorical_sample(shape, unimix):
    def build(device, dtype):
        logits, noise = make(shape, dtype, device, requires_grad=True)
        return (logits, unimix), {"noise": noise}

    return Sample(f"{'x'.join(map(str, shape))}-u{unimix}", build)


def categorical_values(out, ref, dtype, args, kwargs):
    """probs within tol(dtype); the one-hot samples equal (away from class boundaries in float32)."""
    (sample, probs), (ref_sample, ref_probs) = out, ref
    torch.testing.assert_close(probs, ref_probs, **tol(dtype))
    assert_samples_equal(sample, ref_sample, ref_probs, kwargs["noise"])


def categorical_gradcheck(unimix):
    """gradcheck on probs (the sample's gradient is, by design, not the derivative of its value)."""

    def build(device):
        logits, noise = make((4, 3, 6), torch.float64, device, requires_grad=True)
        return [(lambda x: categorical_fused(x, unimix, noise=noise)[1], (logits,))]

    return Gradcheck(f"probs-u{unimix}", build)


def categorical_opcheck(with_noise):
    def build(device):
        logits, noise = make((5, 3, 8), torch.float32, device, requires_grad=True)
        args = (logits, noise, seed_tensor(0), 0.01) if with_noise else (logits, None, seed_tensor(99), 0.01)
        return [(torch.ops.dreamer_fast.straight_through_categorical.default, args, {})]

    return Opcheck("noise" if with_noise else "seed", build)


def categorical_stream_opcheck():
    """The stream op, whose schema declares the mutation of `stream` (opcheck checks it happens and nothing else
    is mutated)."""

    def build(device):
        logits, _ = make((5, 3, 8), torch.float32, device, requires_grad=True)
        stream = torch.tensor([99, 7], dtype=torch.int64, device=device)
        return [(torch.ops.dreamer_fast.straight_through_categorical_stream.default, (logits, stream, 0.01), {})]

    return Opcheck("stream", build)


def categorical_compile():
    logits, _ = make((64, 32), requires_grad=True)
    w = torch.randn(64, 32)

    def loss(x):
        sample, probs = categorical_fused(x, 0.01)
        return (sample * w).sum() + probs.square().sum()

    return loss, (logits,)


def categorical_bad(mutate):
    def call():
        logits, kwargs = mutate(*make((6, 4)))
        categorical_fused(logits, **kwargs)

    return call


def categorical_cpp(mutate):
    return lambda ns: ns.straight_through_categorical(*mutate(*make((5, 5))))


def categorical_cpp_stream(mutate):
    return lambda ns: ns.straight_through_categorical_stream(*mutate(make((5, 5))[0]))


def categorical_cpp_backward(mutate):
    def call(ns):
        probs = make((5, 4))[0].softmax(-1)
        ns.straight_through_categorical_backward(*mutate(probs))

    return call


CASE = OpCase(
    name="straight_through_categorical",
    op=categorical_fused,
    reference=straight_through_categorical_ref,
    input_names=("logits",),
    output_names=("sample", "probs"),
    samples=[categorical_sample(shape, unimix) for shape in [(1, 1), (7, 2), (4, 5, 32), (3, 40), (2, 3, 70), (33, 32)]
             for unimix in [0.0, 0.01, 0.5]],
    check_values=categorical_values,
    gradchecks=[categorical_gradcheck(unimix) for unimix in [0.0, 0.3]],
    opchecks=[categorical_opcheck(with_noise) for with_noise in [True, False]] + [categorical_stream_opcheck()],
    compile_loss=categorical_compile,
    bad_inputs=[
        Bad("logits not a tensor", categorical_bad(lambda x, n: ([[0.0, 1.0]], {})), TypeError,
            literal("`logits` must be a torch.Tensor")),
        Bad("logits int", categorical_bad(lambda x, n: (x.long(), {})), TypeError,
            literal("`logits` must be float32 or float64")),
        Bad("half on cpu", categorical_bad(lambda x, n: (x.half(), {})), TypeError, literal("CUDA only")),
        Bad("logits 0-dim", categorical_bad(lambda x, n: (x[0, 0], {})), ValueError,
            literal("`logits` must be [..., K]")),
        Bad("K = 0", categorical_bad(lambda x, n: (x[:, :0], {})), ValueError, literal("`logits` must have K >= 1")),
        Bad("noise not a tensor", categorical_bad(lambda x, n: (x, {"noise": 0.5})), TypeError,
            literal("`noise` must be a torch.Tensor")),
        Bad("noise shape", categorical_bad(lambda x, n: (x, {"noise": n[:-1]})), ValueError,
            literal("`noise` must have shape logits.shape[:-1]")),
        Bad("noise with K", categorical_bad(lambda x, n: (x, {"noise": x})), ValueError,
            literal("`noise` must have shape")),
        Bad("noise dtype", categorical_bad(lambda x, n: (x, {"noise": n.double()})), TypeError,
            literal("`noise` has dtype torch.float64")),
        Bad("noise device", categorical_bad(lambda x, n: (x, {"noise": n.to("meta")})), ValueError,
            literal("`noise` is on meta")),
        Bad("unimix < 0", categorical_bad(lambda x, n: (x, {"unimix": -0.1})), ValueError,
            literal("`unimix` must be in [0.0, 1.0]")),
        Bad("unimix > 1", categorical_bad(lambda x, n: (x, {"unimix": 1.5})), ValueError,
            literal("`unimix` must be in")),
        Bad("unimix nan", categorical_bad(lambda x, n: (x, {"unimix": float("nan")})), ValueError,
            literal("`unimix` must be in")),
        Bad("unimix str", categorical_bad(lambda x, n: (x, {"unimix": "0.1"})), TypeError,
            literal("`unimix` must be a number")),
        Bad("generator type", categorical_bad(lambda x, n: (x, {"generator": 3})), TypeError,
            literal("`generator` must be a torch.Generator")),
        Bad("generator device",
            categorical_bad(
                lambda x, n: (x, {"generator": mock.Mock(spec=torch.Generator, device=torch.device("cuda"))})),
            ValueError, literal("`generator` must be a CPU torch.Generator")),
        Bad("stream type", categorical_bad(lambda x, n: (x, {"stream": torch.zeros(2, dtype=torch.int64)})),
            TypeError, literal("`stream` must be a dreamer_fast.PhiloxStream or None")),
        Bad("stream and generator",
            categorical_bad(lambda x, n: (x, {"stream": PhiloxStream(0), "generator": torch.Generator()})),
            ValueError, literal("give `generator` or `stream`, not both")),
        Bad("stream device", categorical_bad(lambda x, n: (x, {"stream": PhiloxStream(0, "meta")})), ValueError,
            literal("`stream` must be on the device of `logits` (cpu), got meta")),
    ],
    cpp_checks=[
        CppCheck("seed dtype", categorical_cpp(lambda x, n: (x, None, torch.tensor(1.0), 0.1)),
                 "`seed` must be a one-element int64 tensor"),
        CppCheck("seed shape", categorical_cpp(lambda x, n: (x, None, torch.tensor([1, 2]), 0.1)),
                 "`seed` must be a one-element int64 tensor"),
        CppCheck("noise shape", categorical_cpp(lambda x, n: (x, n[1:], seed_tensor(), 0.1)),
                 "`noise` must have shape"),
        CppCheck("noise dtype", categorical_cpp(lambda x, n: (x, n.double(), seed_tensor(), 0.1)),
                 "`noise` must have the dtype of `logits`"),
        CppCheck("logits dtype", categorical_cpp(lambda x, n: (x.long(), None, seed_tensor(), 0.1)),
                 "`logits` must be float32 or float64"),
        CppCheck("logits 0-dim", categorical_cpp(lambda x, n: (x[0, 0], None, seed_tensor(), 0.1)),
                 "`logits` must be \\[..., K\\]"),
        CppCheck("K = 0", categorical_cpp(lambda x, n: (x[:, :0].contiguous(), None, seed_tensor(), 0.1)),
                 "`logits` must have K >= 1"),
        CppCheck("non-contiguous", categorical_cpp(lambda x, n: (x.t(), None, seed_tensor(), 0.1)),
                 "`logits` must be contiguous"),
        CppCheck("unimix", categorical_cpp(lambda x, n: (x, None, seed_tensor(), 1.5)),
                 "`unimix` must be in \\[0, 1\\]"),
        CppCheck("backward grad_sample shape", categorical_cpp_backward(lambda p: (p[1:], None, p, 0.1)),
                 "`grad_sample` must have shape"),
        CppCheck("backward grad_probs dtype", categorical_cpp_backward(lambda p: (None, p.double(), p, 0.1)),
                 "`grad_probs` must have the dtype of `probs`"),
        CppCheck("backward probs dtype", categorical_cpp_backward(lambda p: (None, None, p.long(), 0.1)),
                 "`probs` must be float32 or float64"),
        CppCheck("stream dtype", categorical_cpp_stream(lambda x: (x, torch.zeros(2), 0.1)),
                 "`stream` must be a contiguous int64 tensor \\[key, offset\\] of shape \\[2\\]"),
        CppCheck("stream shape", categorical_cpp_stream(lambda x: (x, torch.zeros(3, dtype=torch.int64), 0.1)),
                 "`stream` must be a contiguous int64 tensor"),
        CppCheck("stream unimix", categorical_cpp_stream(lambda x: (x, torch.zeros(2, dtype=torch.int64), 2.0)),
                 "`unimix` must be in \\[0, 1\\]"),
        CppCheck("backward unimix", categorical_cpp_backward(lambda p: (p, None, p, -1.0)), "`unimix` must be in"),
    ],
)
