"""kl_balance beyond the checks every op shares (tests/test_op_contract.py): hand-computed values, the raw kernels (CPU
and emulated CUDA) against the reference, the emulated kernels' schedule independence and half precision, free nats,
balance, unimix, special logits, layouts, empty sizes and backend selection."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import emulator_schedule, kernel_namespaces, tol
from op_contract import Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal

import dreamer_fast as df
from dreamer_fast.reference import kl_balance_ref


def make(shape, device="cpu", dtype=torch.float32, requires_grad=False, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    post = scale * torch.randn(shape, generator=g, dtype=dtype)
    prior = scale * torch.randn(shape, generator=g, dtype=dtype)
    return [t.to(device).requires_grad_(requires_grad) for t in (post, prior)]


def fused(post, prior, *args, **kwargs):
    return df.kl_balance(post, prior, *args, **kwargs, backend="fused")


def grads(outputs, inputs, seed=1):
    """Gradients of (loss, kl) with random upstream gradients for both outputs."""
    loss, kl = outputs
    g = torch.Generator().manual_seed(seed)
    grad_loss = torch.randn((), generator=g, dtype=loss.dtype).to(loss.device)
    grad_kl = torch.randn(kl.shape, generator=g, dtype=kl.dtype).to(kl.device)
    return torch.autograd.grad((loss, kl), inputs, (grad_loss, grad_kl))


def assert_close(got, want, dtype, what):
    for name, a, b in zip(("loss/d post", "kl/d prior"), got, want):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"{what} {n}: {m}")


def test_hand_computed():
    # Position 0: q = (1/2, 1/2), p = softmax(1, 0) -> kl = log(1 + e) - 1/2 - log 2. Position 1: identical -> 0.
    post = torch.tensor([[[0.0, 0.0]], [[2.0, -1.0]]])
    prior = torch.tensor([[[1.0, 0.0]], [[2.0, -1.0]]])
    kl0 = math.log(1 + math.e) - 0.5 - math.log(2)
    loss, kl = fused(post, prior, 0.8, 0.0, True, 0.0)
    torch.testing.assert_close(kl, torch.tensor([kl0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor(kl0 / 2))
    # Free nats per position (not averaged): mean(max(kl0, 0.1), max(0, 0.1)).
    loss, _ = fused(post, prior, 0.8, 0.1, False, 0.0)
    torch.testing.assert_close(loss, torch.tensor((kl0 + 0.1) / 2))
    # d kl0 / d post = σ (a - Σσa) with σ = (1/2, 1/2), a = log(1/2) - log p: antisymmetric, 0.25 * (a0 - a1).
    post.requires_grad_()
    (d_post,) = torch.autograd.grad(fused(post, prior)[1][0], post)
    a0_minus_a1 = -(1.0 - 0.0)  # log p0 - log p1 = logit difference 1
    torch.testing.assert_close(d_post[0, 0], torch.tensor([0.25 * a0_minus_a1, -0.25 * a0_minus_a1]))


# (shape, unimix, free, free_avg): K below and above a warp (lanes stride K), S below and above 8 warps per block.
RAW_CASES = [((4, 3, 7), 0.0, 0.0, True), ((3, 10, 40), 0.1, 0.0, True), ((2, 3, 2, 33), 0.0, 1.5, False)]


@pytest.mark.parametrize("ns", kernel_namespaces())
@pytest.mark.parametrize("case", RAW_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_raw_kernels_match_reference(ns, case, dtype):
    """Each kernel on its own (no autograd): forward and backward against the reference's values and gradients."""
    shape, unimix, free, free_avg = case
    inputs = make(shape, dtype=dtype, requires_grad=True, seed=3)
    ref = kl_balance_ref(*inputs, 0.7, free, free_avg, unimix)
    grad_loss, grad_kl = torch.tensor(1.3, dtype=dtype), torch.randn(shape[:-2], dtype=dtype)
    want = torch.autograd.grad(ref, inputs, (grad_loss, grad_kl))
    plain = [t.detach() for t in inputs]
    loss, kl = ns.kl_balance(*plain, 0.7, free, free_avg, unimix)
    assert_close((loss, kl), [r.detach() for r in ref], dtype, "value")
    got = ns.kl_balance_backward(grad_loss, grad_kl, *plain, kl, 0.7, free, free_avg, unimix)
    assert_close(got, want, dtype, "grad")


@pytest.mark.parametrize("free_avg", [True, False])
def test_emulated_cuda_kernels_are_schedule_independent(free_avg):
    """Under the emulator's reverse schedule (a warp runs ahead of the others until it waits at __syncthreads()) the
    kernels give the same bits as in order: no warp overwrites shared memory that another has yet to read. 80
    positions: each of the emulator's 2 blocks loops over 40 of them with S = 3 warps (forward), and the one-block
    loss sums two values per thread over 3 busy warps; free nats at the median KL clamp half the positions."""
    post, prior = make((80, 3, 5), dtype=torch.float64, seed=5)
    emu = torch.ops.dreamer_fast_emu
    free = emu.kl_balance(post, prior, 0.8, 0.0, True, 0.01)[1].median().item()
    args = (0.8, free, free_avg, 0.01)
    grad_loss, grad_kl = torch.tensor(1.3, dtype=torch.float64), torch.randn(80, dtype=torch.float64)

    def run():
        loss, kl = emu.kl_balance(post, prior, *args)
        return (loss, kl, *emu.kl_balance_backward(grad_loss, grad_kl, post, prior, kl, *args))

    want = run()
    ref = kl_balance_ref(post, prior, *args)
    assert_close(want[:2], ref, torch.float64, "value")
    with emulator_schedule("reverse"):
        got = run()
    for name, a, b in zip(("loss", "kl", "d post", "d prior"), got, want):
        assert torch.equal(a, b), f"{name} depends on the emulator's schedule"


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_emulated_cuda_half_precision(half):
    """The CUDA kernels' half/bf16 path (float32 accumulation) against the float32 reference, through the emulator."""
    post, prior = make((3, 5, 36), requires_grad=True, seed=4)
    ref = kl_balance_ref(post, prior, 0.8, 0.0, True, 0.01)
    grad_kl = torch.randn(3)
    want = torch.autograd.grad(ref, (post, prior), (torch.tensor(1.0), grad_kl))
    ph, qh = post.detach().to(half), prior.detach().to(half)
    loss, kl = torch.ops.dreamer_fast_emu.kl_balance(ph, qh, 0.8, 0.0, True, 0.01)
    assert loss.dtype == kl.dtype == half
    got = torch.ops.dreamer_fast_emu.kl_balance_backward(
        torch.tensor(1.0, dtype=half), grad_kl.to(half), ph, qh, kl, 0.8, 0.0, True, 0.01
    )
    # Inputs rounded to half move the result by ~1e-2 relative; the accumulation itself is float32.
    loose = dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(kl.float(), ref[1].detach(), **loose)
    torch.testing.assert_close(loss.float(), ref[0].detach(), **loose)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, **loose)


def test_cuda_half_precision():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (the half path is covered by the emulated test)")
    post, prior = make((16, 32, 32), "cuda", requires_grad=True)
    ref = kl_balance_ref(post, prior)
    want = torch.autograd.grad(ref[0], (post, prior))
    for half in (torch.float16, torch.bfloat16):
        ph, qh = (t.detach().to(half).requires_grad_() for t in (post, prior))
        out = fused(ph, qh)
        got = torch.autograd.grad(out[0], (ph, qh))
        torch.testing.assert_close(out[1].float(), ref[1].detach(), **tol(half))
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=1e-4)


def test_kl_equals_torch_distributions(device, dtype):
    """An independent check of the kl output: torch.distributions' categorical KL, summed over the S variables."""
    post, prior = make((4, 6, 5, 9), device, dtype)
    want = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=post), torch.distributions.Categorical(logits=prior)
    ).sum(-1)
    torch.testing.assert_close(fused(post, prior)[1], want, **tol(dtype))


def test_free_nats_above_mean_kl(device):
    post, prior = make((6, 4, 5), device, torch.float64, requires_grad=True)
    _, kl = fused(post, prior)
    free = kl.mean().item() + 0.5
    loss, _ = fused(post, prior, 0.8, free, True)
    assert loss.item() == free
    d_post, d_prior = torch.autograd.grad(loss, (post, prior))
    assert (d_post == 0).all() and (d_prior == 0).all()


def test_free_nats_per_position(device):
    """free_avg=False clamps each position: gradient only where kl >= free, and there it is the unclamped one."""
    post, prior = make((8, 4, 5), device, torch.float64, requires_grad=True, seed=2)
    kl = fused(post, prior)[1].detach()
    free = kl.median().item() + 1e-6  # about half the positions clamped, none at the threshold
    clamped = kl < free
    assert 0 < clamped.sum() < len(kl)
    loss, _ = fused(post, prior, 0.8, free, False)
    torch.testing.assert_close(loss, kl.clamp(min=free).mean())
    got = torch.autograd.grad(loss, (post, prior))
    want = torch.autograd.grad(kl_balance_ref(post, prior, 0.8, free, False)[0], (post, prior))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        assert (g[clamped] == 0).all() and (g[~clamped].abs().sum((-2, -1)) > 0).all()


@pytest.mark.parametrize("balance", [0.0, 0.5, 0.8, 1.0])
def test_balance_splits_the_gradient(balance, device):
    """d post from the loss alone is mix * d mean(kl) / d post, d prior is (1 - mix) * d mean(kl) / d prior."""
    post, prior = make((5, 3, 6), device, torch.float64, requires_grad=True)
    mix = 1 - balance
    got = torch.autograd.grad(fused(post, prior, balance)[0], (post, prior))
    want = torch.autograd.grad(kl_balance_ref(post, prior, balance)[0], (post, prior))
    d_mean = torch.autograd.grad(fused(post, prior)[1].mean(), (post, prior))
    for g, w, d, scale in zip(got, want, d_mean, (mix, 1 - mix)):
        torch.testing.assert_close(g, w)
        torch.testing.assert_close(g, scale * d)
        assert (g == 0).all() == (scale == 0)


def test_only_one_output_used(device):
    """Autograd passes no gradient for the unused output; the backward treats it as zero."""
    post, prior = make((4, 3, 5), device, torch.float64, requires_grad=True)
    ref_in = [t.detach().clone().requires_grad_() for t in (post, prior)]
    for pick in (0, 1):
        got = torch.autograd.grad(fused(post, prior, 0.6)[pick].sum(), (post, prior))
        want = torch.autograd.grad(kl_balance_ref(*ref_in, 0.6)[pick].sum(), ref_in)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("unimix", [0.01, 0.3, 1.0])
def test_unimix(unimix, device, dtype):
    post, prior = make((3, 4, 37), device, dtype, requires_grad=True, scale=6.0)  # some probabilities far below u/K
    out = fused(post, prior, 0.8, 0.0, False, unimix)
    ref = kl_balance_ref(post, prior, 0.8, 0.0, False, unimix)
    assert_close(out, ref, dtype, "value")
    assert_close(grads(out, (post, prior)), grads(ref, (post, prior)), dtype, "grad")
    if unimix == 1.0:  # both distributions are uniform
        assert (out[1] == 0).all()
    else:  # mixing pulls both towards uniform, so the divergence shrinks
        assert (out[1] < fused(post, prior)[1]).all()


def test_k_equals_one(device):
    post, prior = make((3, 4, 1), device, torch.float64, requires_grad=True)
    loss, kl = fused(post, prior, 0.8, 0.0, True, 0.1)
    assert (kl == 0).all() and loss == 0
    assert all((g == 0).all() for g in grads((loss, kl), (post, prior)))


def test_identical_logits(device):
    post, _ = make((5, 4, 33), device, torch.float32)
    for unimix in (0.0, 0.2):
        loss, kl = fused(post, post.clone(), 0.8, 0.0, True, unimix)
        assert (kl == 0).all() and loss == 0


def test_extreme_logits(device):
    """A prior class far below the rest (its probability underflows) keeps the KL and its gradient finite."""
    post, prior = make((2, 3, 4), device, torch.float64, requires_grad=True)
    with torch.no_grad():
        prior[..., 0] -= 800.0
        post[..., 1] += 500.0
    out = fused(post, prior)
    ref = kl_balance_ref(post, prior)
    assert torch.isfinite(out[1]).all()
    assert_close(out, ref, torch.float64, "value")
    got = grads(out, (post, prior))
    assert all(torch.isfinite(g).all() for g in got)
    assert_close(got, grads(ref, (post, prior)), torch.float64, "grad")


def test_nan_propagates():
    post, prior = make((4, 3, 5))
    post[2, 1, 3] = float("nan")
    loss, kl = fused(post, prior)
    assert torch.isnan(kl[2]) and not torch.isnan(kl[[0, 1, 3]]).any() and torch.isnan(loss)


def test_non_contiguous_inputs(device):
    post, prior = make((5, 7, 3), device, torch.float64)
    post_t = post.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()  # same values, other strides
    prior_s = torch.cat([prior, prior], -1)[..., :3].requires_grad_()
    assert not post_t.is_contiguous() and not prior_s.is_contiguous()
    out = fused(post_t, prior_s, 0.8, 0.0, True, 0.05)
    ref = kl_balance_ref(post_t, prior_s, 0.8, 0.0, True, 0.05)
    assert_close(out, ref, torch.float64, "value")
    assert_close(grads(out, (post_t, prior_s)), grads(ref, (post_t, prior_s)), torch.float64, "grad")


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 3, 5), (3, 0, 5)], ids=str)
def test_empty(shape, device):
    """No positions: kl empty and loss NaN (mean of nothing), as the reference. No variables (S = 0): kl = 0."""
    post, prior = make(shape, device, torch.float32, requires_grad=True)
    for free_avg in (True, False):
        loss, kl = fused(post, prior, 0.8, 0.0, free_avg)
        ref_loss, ref_kl = kl_balance_ref(post, prior, 0.8, 0.0, free_avg)
        assert kl.shape == ref_kl.shape == shape[:-2]
        torch.testing.assert_close(kl, ref_kl)
        torch.testing.assert_close(loss, ref_loss, equal_nan=True)
        assert torch.isnan(loss) == (kl.numel() == 0)
        d_post, d_prior = torch.autograd.grad(loss + kl.sum(), (post, prior))
        assert d_post.shape == d_prior.shape == shape


def test_backend_selection(monkeypatch):
    post, prior = make((4, 3, 5))
    with pytest.raises(ValueError, match="backend must be one of"):
        df.kl_balance(post, prior, backend="fast")
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    post.requires_grad_()
    ref = df.kl_balance(post, prior)
    assert type(ref[1].grad_fn).__name__.startswith("Sum")  # the reference's last op, not the fused op's node
    assert_close(ref, fused(post, prior), torch.float32, "value")


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def kl_balance_sample(shape, unimix, free, free_avg):
    def build(device, dtype):
        return (*make(shape, device, dtype, requires_grad=True), 0.8, free, free_avg, unimix), {}

    return Sample(f"{'x'.join(map(str, shape))}-u{unimix}-free{free}-{'avg' if free_avg else 'each'}", build)


def kl_balance_values(out, ref, dtype, args, kwargs):
    """A scalar loss and kl of shape [...] (the logits' leading dims), both in the logits' dtype, within tol(dtype)."""
    assert out[0].shape == () and out[1].shape == args[0].shape[:-2]
    assert out[0].dtype == out[1].dtype == dtype
    for name, a, b in zip(("loss", "kl"), out, ref):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"value {n}: {m}")


def kl_balance_gradcheck(unimix):
    """kl is an ordinary function of both logits. The loss is not (its gradient stops at sg()), except where the
    stopped side is constant: balance 0 is a plain function of post, balance 1 of prior."""

    def build(device):
        post, prior = make((4, 2, 3), device, torch.float64, requires_grad=True)
        checks = [(lambda x, y: fused(x, y, 0.8, 0.0, True, unimix)[1], (post, prior))]
        kl = fused(post, prior, unimix=unimix)[1].detach().sort().values
        for free, free_avg in ((0.0, True), (kl.mean().item() - 0.1, True), ((kl[1] + kl[2]).item() / 2, False)):
            args = (free, free_avg, unimix)
            checks.append((lambda x, args=args: fused(x, prior.detach(), 0.0, *args)[0], (post,)))
            checks.append((lambda y, args=args: fused(post.detach(), y, 1.0, *args)[0], (prior,)))
        return checks

    return Gradcheck(f"u{unimix}", build)


def kl_balance_opcheck(device):
    post, prior = make((4, 3, 5), device, torch.float32, requires_grad=True)
    op = torch.ops.dreamer_fast.kl_balance.default
    return [(op, (post, prior, 0.8, 0.0, True, 0.0), {}), (op, (post, prior, 0.3, 0.5, False, 0.01), {})]


def kl_balance_compile():
    def loss(x, y):
        value, kl = df.kl_balance(x, y, 0.8, 0.1, True, 0.01, backend="fused")
        return value + 0.1 * kl.square().mean()

    return loss, tuple(make((6, 4, 8, 16), requires_grad=True))


def kl_balance_bad(mutate):
    return lambda: fused(*mutate(*make((3, 4, 5))))


def kl_balance_bad_scalar(name, value):
    def call():
        kwargs = dict(balance=0.8, free=0.0, free_avg=True, unimix=0.0)
        kwargs[name] = value
        fused(*make((3, 4, 5)), **kwargs)

    return Bad(f"{name}={value}", call, (ValueError, TypeError), f"`{name}`")


def kl_balance_cpp(mutate, *scalars):
    return lambda ns: ns.kl_balance(*mutate(*make((3, 4, 5))), *(scalars or (0.8, 0.0, True, 0.0)))


def kl_balance_cpp_backward(mutate):
    def call(ns):
        x, y = make((3, 4, 5))
        _, kl = ns.kl_balance(x, y, 0.8, 0.0, True, 0.0)
        ns.kl_balance_backward(*mutate(torch.tensor(1.0), kl, x, y), 0.8, 0.0, True, 0.0)

    return call


CASE = OpCase(
    name="kl_balance",
    op=fused,
    reference=kl_balance_ref,
    input_names=("post", "prior"),
    output_names=("loss", "kl"),
    samples=[kl_balance_sample(shape, unimix, free, free_avg)
             for shape in [(1, 1, 1), (3, 4, 5), (2, 3, 8, 32), (5, 9, 40)] for unimix in [0.0, 0.01]
             for free, free_avg in [(0.0, True), (1.0, True), (2.0, False)]],
    check_values=kl_balance_values,
    gradchecks=[kl_balance_gradcheck(unimix) for unimix in [0.0, 0.1]],
    opchecks=[Opcheck("balance-free-unimix", kl_balance_opcheck)],
    compile_loss=kl_balance_compile,
    bad_inputs=[
        Bad("1-dim", kl_balance_bad(lambda x, y: (x[0, 0], y[0, 0])), ValueError,
            literal("`post_logits` must be [..., S, K] (at least 2 dims)")),
        Bad("prior shape", kl_balance_bad(lambda x, y: (x, y[:, :, :-1])), ValueError,
            literal("`prior_logits` must have shape")),
        Bad("K = 0", kl_balance_bad(lambda x, y: (x[..., :0], y[..., :0])), ValueError,
            literal("`post_logits` must have at least one class")),
        Bad("int dtype", kl_balance_bad(lambda x, y: (x.long(), y.long())), TypeError,
            literal("`post_logits` must be float32 or float64")),
        Bad("half on cpu", kl_balance_bad(lambda x, y: (x.half(), y.half())), TypeError, literal("CUDA only")),
        Bad("mixed dtype", kl_balance_bad(lambda x, y: (x, y.double())), TypeError,
            literal("`prior_logits` has dtype torch.float64")),
        Bad("mixed device", kl_balance_bad(lambda x, y: (x, y.to("meta"))), ValueError,
            literal("`prior_logits` is on meta")),
        Bad("post not a tensor", kl_balance_bad(lambda x, y: (x.tolist(), y)), TypeError,
            literal("`post_logits` must be a torch.Tensor")),
        Bad("prior not a tensor", kl_balance_bad(lambda x, y: (x, 0.0)), TypeError,
            literal("`prior_logits` must be a torch.Tensor")),
        *(kl_balance_bad_scalar(name, value) for name, value in [
            ("balance", -0.1), ("balance", 1.5), ("balance", float("nan")), ("balance", "0.8"),
            ("free", -1.0), ("free", float("inf")), ("free", float("nan")), ("free", None),
            ("unimix", -0.01), ("unimix", 1.01), ("unimix", float("nan")),
            ("free_avg", 1), ("free_avg", "yes"),
        ]),
    ],
    cpp_checks=[
        CppCheck("prior shape", kl_balance_cpp(lambda x, y: (x, y[:2])), "`prior_logits` must have shape"),
        CppCheck("prior dtype", kl_balance_cpp(lambda x, y: (x, y.double())), "`prior_logits` must have the dtype"),
        CppCheck("1-dim", kl_balance_cpp(lambda x, y: (x[0, 0], y[0, 0])), "`post_logits` must be \\[..., S, K\\]"),
        CppCheck("K = 0", kl_balance_cpp(lambda x, y: (x[..., :0], y[..., :0])),
                 "`post_logits` must have at least one class"),
        CppCheck("int dtype", kl_balance_cpp(lambda x, y: (x.long(), y.long())),
                 "`post_logits` must be float32 or float64"),
        CppCheck("non-contiguous", kl_balance_cpp(lambda x, y: (x.transpose(0, 1), y.transpose(0, 1))),
                 "`post_logits` must be contiguous"),
        CppCheck("balance", kl_balance_cpp(lambda x, y: (x, y), 1.2, 0.0, True, 0.0), "`balance` must be"),
        CppCheck("free inf", kl_balance_cpp(lambda x, y: (x, y), 0.8, math.inf, True, 0.0), "`free` must be"),
        CppCheck("free < 0", kl_balance_cpp(lambda x, y: (x, y), 0.8, -1.0, True, 0.0), "`free` must be"),
        CppCheck("unimix", kl_balance_cpp(lambda x, y: (x, y), 0.8, 0.0, True, -0.5), "`unimix` must be"),
        CppCheck("backward grad_loss shape", kl_balance_cpp_backward(lambda g, kl, x, y: (g[None], kl, x, y, kl)),
                 "`grad_loss` must have shape"),
        CppCheck("backward grad_kl shape", kl_balance_cpp_backward(lambda g, kl, x, y: (g, kl[:2], x, y, kl)),
                 "`grad_kl` must have shape"),
        CppCheck("backward kl dtype", kl_balance_cpp_backward(lambda g, kl, x, y: (g, kl, x, y, kl.double())),
                 "`kl` must have the dtype"),
        CppCheck("backward grad_loss dtype", kl_balance_cpp_backward(lambda g, kl, x, y: (g.double(), kl, x, y, kl)),
                 "`grad_loss` must have the dtype"),
    ],
)
