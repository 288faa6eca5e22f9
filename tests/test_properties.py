"""Property tests (hypothesis): every op against its reference on random inputs with NaN and ±inf sprinkled in, on the
CPU kernels and the CUDA kernels' source run through the emulator; and the sampler's float32 draw against a float64
computation up to K = 4096.

Faithful on non-finite input means: where the reference's value or gradient is NaN, the fused op's is NaN too (never a
finite number that hides it); where the reference's is ±inf, the same infinity (or NaN where an op documents it);
where the reference's is finite, the fused op's is finite and close.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dreamer_fast as df
from dreamer_fast import RSSMState
from dreamer_fast.rssm.reference import Reference
from dreamer_fast.reference import (
    elu_ref,
    kl_balance_ref,
    lambda_return_ref,
    linear_ref,
    ln_gru_ref,
    observe_sequence_ref,
    straight_through_categorical_ref,
)

NAN, INF = float("nan"), float("inf")
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
SEED0 = torch.zeros((), dtype=torch.int64)

# A list of (which input, where in it, what value): placed after the inputs are drawn (see `spoil`).
specials = st.lists(
    st.tuples(st.integers(0, 63), st.floats(0, 1, exclude_max=True), st.sampled_from([NAN, INF, -INF])), max_size=3
)
dtypes = st.sampled_from([torch.float32, torch.float64])


def spoil(tensors: list[torch.Tensor], places) -> list[torch.Tensor]:
    """Copies of `tensors` with each special value written at its place (input index mod len, flat position)."""
    out = [t.clone() for t in tensors]
    for which, where, value in places:
        t = out[which % len(out)]
        if t.numel():
            t.view(-1)[int(where * t.numel())] = value
    return out


def assert_faithful(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float, atol: float,
                    inf_may_be_nan: bool = False) -> None:
    """NaN where the reference has NaN; the reference's infinities (or NaN, where allowed); close where finite."""
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape, f"{what}: shape {list(got.shape)} != {list(want.shape)}"
    nan = want.isnan()
    assert got[nan].isnan().all(), f"{what}: finite where the reference is NaN: {got[nan & ~got.isnan()]}"
    inf = want.isinf()
    same_inf = got[inf] == want[inf]
    if inf_may_be_nan:
        same_inf |= got[inf].isnan()
    assert same_inf.all(), f"{what}: {got[inf]} where the reference is {want[inf]}"
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def weights_like(outputs, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]


def grads_of(outputs, inputs, weights):
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def randn(g, *shape, dtype, scale=1.0):
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


namespaces = pytest.mark.parametrize(
    "ns", [pytest.param("cpu", id="cpu-kernel"), pytest.param("emu", id="emulated-cuda-kernel")]
)


def raw(ns: str):
    return torch.ops.dreamer_fast if ns == "cpu" else torch.ops.dreamer_fast_emu


# ---- lambda_return -------------------------------------------------------------------------------------------------


@namespaces
@settings(max_examples=60, **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 6), B=st.integers(1, 5), dtype=dtypes,
       lam=st.sampled_from([0.0, 0.5, 0.95, 1.0]), places=specials, zero=st.booleans())
def test_lambda_return(ns, seed, T, B, dtype, lam, places, zero):
    g = torch.Generator().manual_seed(seed)
    reward, value = randn(g, T, B, dtype=dtype), randn(g, T, B, dtype=dtype)
    discount = torch.rand(T, B, generator=g, dtype=torch.float64).to(dtype)
    if zero:  # zeros meet the infinities: inf * 0 is where association matters
        discount.view(-1)[0], value.view(-1)[-1] = 0.0, 0.0
    inputs = spoil([reward, value, discount, randn(g, B, dtype=dtype)], places)
    ref_in = leaves(inputs)
    want = lambda_return_ref(*ref_in, lam=lam)
    (w,) = weights_like([want])
    want_grads = grads_of([want], ref_in, [w])
    if ns == "cpu":
        fused_in = leaves(inputs)
        got = df.lambda_return(*fused_in, lam=lam, backend="fused")
        got_grads = grads_of([got], fused_in, [w])
    else:
        got = raw(ns).lambda_return(*inputs, lam)
        dr, dv, dd, db = raw(ns).lambda_return_backward(w, got, inputs[1], inputs[2], inputs[3], lam)
        got_grads = [dr, dv, dd, db]
    t = tol(dtype)
    assert_faithful(got, want, "returns", **t)
    for name, a, b in zip(("reward", "value", "discount", "bootstrap"), got_grads, want_grads):
        assert_faithful(a, b, f"d{name}", **t)


# ---- straight_through_categorical ----------------------------------------------------------------------------------


def sampler_fused(ns, logits, noise, unimix, w, v):
    if ns == "cpu":
        x = logits.detach().clone().requires_grad_()
        sample, probs = df.straight_through_categorical(x, unimix, noise=noise, backend="fused")
        (grad,) = grads_of([sample, probs], [x], [w, v])
        return sample, probs, grad
    sample, probs = raw(ns).straight_through_categorical(logits, noise, SEED0, unimix)
    grad = raw(ns).straight_through_categorical_backward(w, v, probs, unimix)
    return sample, probs, grad


@namespaces
@settings(max_examples=60, **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 5), K=st.integers(1, 70), dtype=dtypes,
       unimix=st.sampled_from([0.0, 0.01, 0.5, 1.0]), places=specials)
def test_straight_through_categorical(ns, seed, N, K, dtype, unimix, places):
    g = torch.Generator().manual_seed(seed)
    (logits,) = spoil([randn(g, N, K, dtype=dtype, scale=3.0)], places)
    noise = torch.rand(N, generator=g, dtype=torch.float64).to(dtype)
    x = logits.clone().requires_grad_()
    want_sample, want_probs = straight_through_categorical_ref(x, unimix, noise=noise)
    w, v = weights_like([want_sample, want_probs])
    (want_grad,) = grads_of([want_sample, want_probs], [x], [w, v])
    sample, probs, grad = sampler_fused(ns, logits, noise, unimix, w, v)
    t = tol(dtype)
    assert_faithful(probs, want_probs, "probs", **t)
    assert_faithful(grad, want_grad, "dlogits", **t)
    # Samples: NaN rows exactly as the reference's; elsewhere the same one-hot away from class boundaries.
    nan_rows = want_sample.detach().isnan().any(-1)
    assert sample[nan_rows].isnan().all(), "a NaN row's sample is not NaN"
    assert sample[~nan_rows].isfinite().all()
    cdf = want_probs.detach().double().cumsum(-1)
    clear = ((cdf - noise.double()[:, None]).abs() > 1e-5).all(-1) & ~nan_rows
    assert torch.equal(sample[clear], want_sample.detach()[clear])


@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 8), K=st.integers(1, 70), dtype=dtypes,
       unimix=st.sampled_from([0.0, 0.01, 0.5]), places=specials)
def test_straight_through_categorical_cpu_equals_emulated(seed, N, K, dtype, unimix, places):
    """Bit for bit, NaN rows included, with Philox draws."""
    g = torch.Generator().manual_seed(seed)
    (logits,) = spoil([randn(g, N, K, dtype=dtype, scale=3.0)], places)
    seed_t = torch.tensor(seed, dtype=torch.int64)
    a = torch.ops.dreamer_fast.straight_through_categorical(logits, None, seed_t, unimix)
    b = torch.ops.dreamer_fast_emu.straight_through_categorical(logits, None, seed_t, unimix)
    for x, y in zip(a, b):
        assert torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0)) and torch.equal(x.isnan(), y.isnan())


@namespaces
@settings(max_examples=25, **SETTINGS)
@given(seed=st.integers(0, 2**31), K=st.integers(2, 4096), scale=st.sampled_from([0.0, 0.01, 1.0, 3.0, 10.0]),
       unimix=st.sampled_from([0.0, 0.01, 0.5, 0.84, 0.99]),
       offset=st.floats(3e-6, 1e-4) | st.floats(-1e-4, -3e-6))
def test_straight_through_categorical_large_k_float32_agrees_with_float64(ns, seed, K, scale, unimix, offset):
    """Noise a few 1e-6 from a class boundary: the float32 draw must pick the float64 computation's class. (A float32
    running sum drifts by up to ~3e-5 at K = 3000 with equal probs.)"""
    g = torch.Generator().manual_seed(seed)
    N = 16
    logits = randn(g, N, K, dtype=torch.float32, scale=scale)
    probs64 = (1 - unimix) * torch.softmax(logits.double(), -1) + unimix / K
    cdf64 = probs64.cumsum(-1)
    boundary = torch.randint(0, K - 1, (N,), generator=g)
    noise = (cdf64.gather(1, boundary[:, None])[:, 0] + offset).clamp(0, 1 - 2**-24).float()
    want = (cdf64[:, :-1] <= noise.double()[:, None]).sum(-1)
    # Only rows whose noise is clear of every boundary by more than the float32 probs' own rounding.
    clear = ((cdf64 - noise.double()[:, None]).abs() > 2e-6).all(-1)
    assert clear.sum() >= N // 2
    sample, _ = raw(ns).straight_through_categorical(logits, noise, SEED0, unimix)
    assert torch.equal(sample.argmax(-1)[clear], want[clear])


# ---- kl_balance ----------------------------------------------------------------------------------------------------


@namespaces
@settings(max_examples=50, **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 4), S=st.integers(1, 3), K=st.integers(1, 40), dtype=dtypes,
       balance=st.sampled_from([0.0, 0.8, 1.0]), free=st.sampled_from([0.0, 1.0]), free_avg=st.booleans(),
       unimix=st.sampled_from([0.0, 0.01, 1.0]), places=specials)
def test_kl_balance(ns, seed, N, S, K, dtype, balance, free, free_avg, unimix, places):
    g = torch.Generator().manual_seed(seed)
    inputs = spoil([randn(g, N, S, K, dtype=dtype, scale=2.0), randn(g, N, S, K, dtype=dtype, scale=2.0)], places)
    args = (balance, free, free_avg, unimix)
    ref_in = leaves(inputs)
    want = kl_balance_ref(*ref_in, *args)
    weights = weights_like(want)
    want_grads = grads_of(want, ref_in, weights)
    if ns == "cpu":
        fused_in = leaves(inputs)
        got = df.kl_balance(*fused_in, *args, backend="fused")
        got_grads = grads_of(got, fused_in, weights)
    else:
        got = raw(ns).kl_balance(*inputs, *args)
        got_grads = raw(ns).kl_balance_backward(weights[0], weights[1], *inputs, got[1], *args)
    t = tol(dtype)
    for name, a, b in zip(("loss", "kl", "dpost", "dprior"), [*got, *got_grads], [*want, *want_grads]):
        assert_faithful(a, b, name, **t)


# ---- ln_gru --------------------------------------------------------------------------------------------------------


@namespaces
@settings(max_examples=60, **SETTINGS)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 4), D=st.integers(1, 9), dtype=dtypes, places=specials)
def test_ln_gru(ns, seed, B, D, dtype, places):
    g = torch.Generator().manual_seed(seed)
    inputs = spoil([randn(g, B, 3 * D, dtype=dtype), randn(g, B, D, dtype=dtype).tanh(),
                    1 + randn(g, 3 * D, dtype=dtype, scale=0.1), randn(g, 3 * D, dtype=dtype, scale=0.1)], places)
    ref_in = leaves(inputs)
    want = ln_gru_ref(*ref_in, 1e-3)
    (w,) = weights_like([want])
    want_grads = grads_of([want], ref_in, [w])
    if ns == "cpu":
        fused_in = leaves(inputs)
        got = df.ln_gru(*fused_in, 1e-3, backend="fused")
        got_grads = grads_of([got], fused_in, [w])
    else:
        got, mean, rstd = raw(ns).ln_gru(*inputs, 1e-3)
        got_grads = raw(ns).ln_gru_backward(w, *inputs, mean, rstd)
    t = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else tol(dtype)
    assert_faithful(got, want, "deter'", **t)
    # The gates' gradient of a row with non-finite LayerNorm-gradient means is NaN (the reference's: NaN or ±inf);
    # the weight and bias gradients sum over such rows.
    for name, a, b in zip(("dgates", "ddeter", "dweight", "dbias"), got_grads, want_grads):
        assert_faithful(a, b, name, **t, inf_may_be_nan=name != "ddeter")


# ---- elu and linear ------------------------------------------------------------------------------------------------


@namespaces
@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 100), dtype=dtypes, places=specials)
def test_elu(ns, seed, n, dtype, places):
    g = torch.Generator().manual_seed(seed)
    (x,) = spoil([randn(g, n, dtype=dtype, scale=3.0)], places)
    xr = x.clone().requires_grad_()
    want = elu_ref(xr)
    (w,) = weights_like([want])
    (want_grad,) = grads_of([want], [xr], [w])
    if ns == "cpu":
        xf = x.clone().requires_grad_()
        got = df.elu(xf, backend="fused")
        (got_grad,) = grads_of([got], [xf], [w])
    else:
        got = raw(ns).elu(x)
        got_grad = raw(ns).elu_backward(w, got)
    t = tol(dtype)
    assert_faithful(got, want, "elu", **t)
    # At a NaN input torch's gradient is NaN or the incoming one, depending on its vectorisation; the op's is NaN.
    nan = x.isnan()
    assert got_grad[nan].isnan().all()
    assert_faithful(got_grad[~nan], want_grad[~nan], "delu", **t)


@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 2**31), M=st.integers(1, 40), K=st.integers(1, 20), N=st.integers(1, 20), dtype=dtypes,
       bias=st.booleans(), places=specials, zeros=st.booleans())
def test_linear(seed, M, K, N, dtype, bias, places, zeros):
    """The CPU op (GEMV, oneDNN or MKL by size): a composite of ATen and BLAS calls, the same on every backend."""
    g = torch.Generator().manual_seed(seed)
    x, w, b = randn(g, M, K, dtype=dtype), randn(g, N, K, dtype=dtype), randn(g, N, dtype=dtype)
    if zeros:  # a NaN or inf weight times an exact zero must still give NaN
        x[:, 0] = 0.0
    inputs = spoil([x, w, b] if bias else [x, w], places)
    ref_in = leaves(inputs)
    want = linear_ref(*ref_in)
    (gw,) = weights_like([want])
    want_grads = grads_of([want], ref_in, [gw])
    fused_in = leaves(inputs)
    got = df.linear(*fused_in, backend="fused")
    got_grads = grads_of([got], fused_in, [gw])
    t = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else tol(dtype)
    assert_faithful(got, want, "linear", **t)
    for name, a, c in zip(("dx", "dweight", "dbias"), got_grads, want_grads):
        assert_faithful(a, c, name, **t)


# ---- observe_sequence and obs_step_inference -----------------------------------------------------------------------

OBS_NAMES = ("act_proj", "emb_proj", "keep", "deter0", "stoch0", "w_stoch_in", "w_gru", "b_gru", "ln_w", "ln_b",
             "w_deter_out", "w_post", "b_post")


def observe_inputs(g, T, B, D, H, S, K, dtype, keep_values):
    def r(*shape, scale=1.0):
        return randn(g, *shape, dtype=dtype, scale=scale)

    keep = torch.tensor(keep_values, dtype=torch.float64)[torch.randint(len(keep_values), (T, B), generator=g)]
    return dict(
        act_proj=r(T, B, H), emb_proj=r(T, B, H), keep=keep.to(dtype), deter0=r(B, D).tanh(),
        stoch0=torch.softmax(r(B, S, K), -1), w_stoch_in=r(H, S * K, scale=0.5), w_gru=r(3 * D, H + D, scale=0.5),
        b_gru=r(3 * D, scale=0.1), ln_w=1 + r(3 * D, scale=0.1), ln_b=r(3 * D, scale=0.1),
        w_deter_out=r(H, D, scale=0.5), w_post=r(S * K, H, scale=0.5), b_post=r(S * K, scale=0.1),
    )


@namespaces
@settings(max_examples=20, **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 5), B=st.integers(1, 3), dtype=dtypes,
       unimix=st.sampled_from([0.0, 0.01]), keep_values=st.sampled_from([[1.0], [0.0, 1.0], [0.5, 1.0], [0.0, 0.5]]),
       places=st.lists(st.tuples(st.sampled_from([0, 1, 3, 5, 6, 8]), st.floats(0, 1, exclude_max=True),
                                 st.sampled_from([NAN, INF, -INF])), max_size=2))
def test_observe_sequence(ns, seed, T, B, dtype, unimix, keep_values, places):
    """Values and gradients, NaN or inf in the embedding's projection (the report's t = 0 case), the action's, the start
    state or a weight; keep of 0, 0.5 and 1."""
    g = torch.Generator().manual_seed(seed)
    inputs = observe_inputs(g, T, B, D=4, H=5, S=2, K=3, dtype=dtype, keep_values=keep_values)
    names = list(inputs)
    for which, where, value in places:
        t = inputs[names[which]]
        t.view(-1)[int(where * t.numel())] = value
    noise = torch.rand(T, B, 2, generator=g, dtype=torch.float64).to(dtype)
    diff = [n for n in names if n != "keep"]
    ref_in = {n: (t.clone().requires_grad_() if n != "keep" else t) for n, t in inputs.items()}
    want = observe_sequence_ref(*ref_in.values(), noise=noise, unimix=unimix)
    weights = weights_like(want)
    want_grads = grads_of(want, [ref_in[n] for n in diff], weights)
    fused_in = {n: (t.clone().requires_grad_() if n != "keep" else t) for n, t in inputs.items()}
    seeds = torch.zeros(T, dtype=torch.int64)
    got = raw(ns).observe_sequence(*fused_in.values(), noise, seeds, unimix, 1e-3, None)
    got_grads = grads_of(got, [fused_in[n] for n in diff], weights)
    t = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-10)
    for name, a, b in zip(("deters", "samples", "logits"), got, want):
        assert_faithful(a, b, name, **t, inf_may_be_nan=True)
    for name, a, b in zip(diff, got_grads, want_grads):
        if b is None:
            continue
        assert_faithful(a, b, f"d{name}", **t, inf_may_be_nan=True)


def test_observe_sequence_nan_embedding_reaches_later_steps():
    """A NaN in the embedding at t = 0 reaches every later deter through the sample, on both kernels."""
    g = torch.Generator().manual_seed(0)
    inputs = observe_inputs(g, 4, 2, D=4, H=5, S=2, K=3, dtype=torch.float32, keep_values=[1.0])
    inputs["emb_proj"][0, 0, 0] = NAN
    noise = torch.rand(4, 2, 2, generator=g)
    want = observe_sequence_ref(*inputs.values(), noise=noise)
    assert want[0][1:, 0].isnan().all()
    for ns in ("cpu", "emu"):
        deters, samples, _ = raw(ns).observe_sequence(*inputs.values(), noise, torch.zeros(4, dtype=torch.int64),
                                                      0.0, 1e-3, None)
        assert deters[1:, 0].isnan().all() and samples[:, 0].isnan().all(), ns
        assert deters[:, 1].isfinite().all(), ns  # the other row is untouched


@pytest.mark.parametrize("keep", [0.5, 2.0])
def test_observe_sequence_scales_by_any_keep(keep):
    g = torch.Generator().manual_seed(1)
    inputs = observe_inputs(g, 3, 2, D=4, H=5, S=2, K=3, dtype=torch.float64, keep_values=[1.0])
    inputs["keep"][1, 0] = keep
    noise = torch.rand(3, 2, 2, generator=g, dtype=torch.float64)
    want = observe_sequence_ref(*inputs.values(), noise=noise)
    ones = dict(inputs, keep=torch.ones_like(inputs["keep"]))
    assert not torch.allclose(want[0], observe_sequence_ref(*ones.values(), noise=noise)[0])
    for ns in ("cpu", "emu"):
        got = raw(ns).observe_sequence(*inputs.values(), noise, torch.zeros(3, dtype=torch.int64), 0.0, 1e-3, None)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **tol(torch.float64))


def obs_step_setup(seed, B, dtype):
    from test_rssm import A, D, E, K, S, model

    m = model(dtype, seed=seed % 1000)
    g = torch.Generator().manual_seed(seed)
    state = RSSMState(randn(g, B, D, dtype=dtype).tanh(), torch.softmax(randn(g, B, S, K, dtype=dtype), -1),
                      torch.zeros(B, S, K, dtype=dtype))
    action = F.one_hot(torch.randint(A, (B,), generator=g), A).to(dtype)
    embed = randn(g, B, E, dtype=dtype)
    noise = torch.rand(B, S, generator=g, dtype=torch.float64).to(dtype)
    return m, state, action, embed, noise


@namespaces
@settings(max_examples=20, **SETTINGS)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 3), dtype=dtypes, unimix=st.sampled_from([0.0, 0.01]),
       keep=st.sampled_from([0.0, 0.5, 1.0]), places=specials)
def test_obs_step_inference(ns, seed, B, dtype, unimix, keep, places):
    """NaN or inf in the state, the action, the embedding or a weight; keep of 0, 0.5 and 1."""
    m, state, action, embed, noise = obs_step_setup(seed, B, dtype)
    m.unimix = unimix
    keep_t = torch.full((B,), keep, dtype=dtype)
    layers = {n: (mod.weight.detach(), mod.bias.detach()) for n, mod in m.named_children() if n != "gru_norm"}
    flat_w = [t for pair in layers.values() for t in pair]
    deter, stoch, action, embed, *flat_w = spoil([state.deter, state.stoch, action, embed, *flat_w], places)
    with torch.no_grad():
        for (name, mod), (wt, bs) in zip(
            [(n, mod) for n, mod in m.named_children() if n != "gru_norm"], zip(flat_w[::2], flat_w[1::2])
        ):
            mod.weight.copy_(wt)
            mod.bias.copy_(bs)
        reference = Reference(m._impl.layers, unimix, deter.device)
        post, prior = reference.obs_step(RSSMState(deter, stoch, state.logits), action, embed, keep_t, noise)
        layers = {n: (mod.weight, mod.bias) for n, mod in m.named_children() if n != "gru_norm"}
        got = raw(ns).obs_step_inference(
            deter, stoch, action, embed, keep_t, *layers["img_in"], *layers["gru"], m.gru_norm.weight,
            m.gru_norm.bias, *layers["img_out"], *layers["prior_logits"], *layers["obs_out"],
            *layers["post_logits"], noise, SEED0, unimix, 1e-3,
        )
    t = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-10)
    for name, a, b in zip(("deter", "sample", "post logits", "prior probs", "prior logits"), got,
                          (post.deter, post.stoch, post.logits, prior.stoch, prior.logits)):
        assert_faithful(a, b, name, **t, inf_may_be_nan=True)


def test_assert_faithful_rejects_a_hidden_nan():
    """The comparison itself: a finite value where the reference is NaN, or the wrong infinity, fails."""
    want = torch.tensor([NAN, INF, 1.0])
    assert_faithful(torch.tensor([NAN, INF, 1.0]), want, "same", rtol=0, atol=0)
    for got in (torch.tensor([0.0, INF, 1.0]), torch.tensor([NAN, -INF, 1.0]), torch.tensor([NAN, INF, NAN])):
        with pytest.raises(AssertionError):
            assert_faithful(got, want, "bad", rtol=0, atol=0)


@namespaces
@pytest.mark.parametrize("K", [2172, 3000])
def test_straight_through_categorical_equal_probs_large_k(ns, K):
    """Equal logits: every float32 add rounds the same way, so a float32 running sum drifts steadily (~3e-5 by
    K = 3000); noise 1e-5 either side of a boundary must still give the float64 computation's class."""
    unimix = 0.84
    boundary = torch.linspace(K // 2, K - 2, 32).long()
    cdf64 = ((1 - unimix) * torch.full((K,), 1 / K, dtype=torch.float64) + unimix / K).cumsum(0)
    noise = torch.cat([cdf64[boundary] + 1e-5, cdf64[boundary] - 1e-5]).float()
    want = (cdf64[:-1] <= noise.double()[:, None]).sum(-1)
    sample, _ = raw(ns).straight_through_categorical(torch.zeros(64, K), noise, SEED0, unimix)
    assert torch.equal(sample.argmax(-1), want)
