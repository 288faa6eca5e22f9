"""observe_sequence, the whole-sequence RSSM observe op (C++ loops forward and backward), beyond the checks every op
shares (tests/test_op_contract.py: values and gradients, gradcheck through time, opcheck, the wrapper's and the C++
kernels' argument checks): training sizes on each GEMM library, the raw kernels (CPU and emulated CUDA) against the
reference, one seed per step, resets, the gradient of one output, empty sequences and gemm_dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_scale, cpu_gemm_library, tol
from op_contract import CPU_NS, Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal

from dreamer_fast.ops.observe_sequence import observe_sequence
from dreamer_fast.reference import observe_sequence_ref
from dreamer_fast.reference.philox import draw_seed

NAMES = ("act_proj", "emb_proj", "keep", "deter0", "stoch0", "w_stoch_in", "w_gru", "b_gru", "ln_w", "ln_b",
         "w_deter_out", "w_post", "b_post")
DIFFERENTIABLE = [n for n in NAMES if n != "keep"]


def make(T=7, B=3, D=5, H=4, S=3, K=4, dtype=torch.float64, device="cpu", seed=0, resets=True):
    """The op's inputs (a dict in schema order) and noise; keep resets one row at t = 2 and all rows at t = 4 (not
    t = 0, so the start state gets gradients)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).to(device)

    keep = torch.ones(T, B, dtype=dtype)
    if resets:
        if T > 2:
            keep[2, B - 1] = 0
        if T > 4:
            keep[4] = 0
    stoch0 = torch.softmax(rand(B, S, K), -1)
    inputs = dict(
        act_proj=rand(T, B, H), emb_proj=rand(T, B, H), keep=keep.to(device), deter0=rand(B, D).tanh(),
        stoch0=stoch0, w_stoch_in=rand(H, S * K, scale=0.5), w_gru=rand(3 * D, H + D, scale=0.5),
        b_gru=rand(3 * D, scale=0.1), ln_w=1 + rand(3 * D, scale=0.1), ln_b=rand(3 * D, scale=0.1),
        w_deter_out=rand(H, D, scale=0.5), w_post=rand(S * K, H, scale=0.5), b_post=rand(S * K, scale=0.1),
    )
    noise = torch.rand(T, B, S, generator=g, dtype=dtype).to(device)
    return inputs, noise


def requiring_grad(inputs):
    return {n: (t.detach().clone().requires_grad_(n != "keep")) for n, t in inputs.items()}


def loss_of(outputs, seed=5):
    """A loss that reaches every output with a different weight per element (so mixed-up rows show)."""
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device)).sum() for o in outputs)


def raw(ns, inputs, noise, unimix=0.0, eps=1e-3, seeds=None, gemm_dtype=None):
    T = inputs["act_proj"].shape[0]
    seeds = torch.zeros(T, dtype=torch.int64) if seeds is None else seeds
    return ns.observe_sequence(*inputs.values(), noise, seeds, unimix, eps, gemm_dtype)


def namespaces():
    return [pytest.param(torch.ops.dreamer_fast, id="cpu-kernel"),
            pytest.param(torch.ops.dreamer_fast_emu, id="emulated-cuda-kernels")]


@pytest.mark.parametrize("gemm", ["mkl", "onednn", "aten"])
def test_weight_gradients_at_training_sizes_on_each_gemm_library(gemm):
    """T·B = 320 rows and 256-wide layers: the weight gradients' GEMMs reach oneDNN's sizes (cpu_gemm::linear) when
    it is selected; float32 values and gradients against the reference either way."""
    inputs, noise = make(T=16, B=20, D=256, H=256, S=8, K=8, dtype=torch.float32)
    fused_in, ref_in = requiring_grad(inputs), requiring_grad(inputs)
    with cpu_gemm_library(gemm):
        out = observe_sequence(*fused_in.values(), noise=noise, backend="fused")
        got = torch.autograd.grad(loss_of(out), [fused_in[n] for n in DIFFERENTIABLE])
    ref = observe_sequence_ref(*ref_in.values(), noise=noise)
    want = torch.autograd.grad(loss_of(ref), [ref_in[n] for n in DIFFERENTIABLE])
    for name, a, b in zip(DIFFERENTIABLE, got, want):
        assert_close_to_scale(a, b, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("ns", namespaces())
def test_raw_kernels_agree(ns):
    """The op on the CPU kernels and on the emulated CUDA kernels: forward and backward against the reference."""
    inputs, noise = make(T=6, B=3)
    fused_in, ref_in = requiring_grad(inputs), requiring_grad(inputs)
    out = raw(ns, fused_in, noise, 0.01)
    ref = observe_sequence_ref(*ref_in.values(), noise=noise, unimix=0.01)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **tol(torch.float64))
    got = torch.autograd.grad(loss_of(out), [fused_in[n] for n in DIFFERENTIABLE])
    want = torch.autograd.grad(loss_of(ref), [ref_in[n] for n in DIFFERENTIABLE])
    for name, a, b in zip(DIFFERENTIABLE, got, want):
        torch.testing.assert_close(a, b, **tol(torch.float64), msg=lambda m, n=name: f"d{n}: {m}")


def test_noise_none_draws_one_seed_per_step_like_the_sampler():
    """Without noise, step t samples from the Philox stream under the t-th seed drawn from the generator: the same
    samples as the reference's per-step sampler under the same generator state."""
    inputs, _ = make(T=5, B=2)
    out = observe_sequence(*inputs.values(), generator=torch.Generator().manual_seed(9), backend="fused")
    ref = observe_sequence_ref(*inputs.values(), generator=torch.Generator().manual_seed(9))
    assert torch.equal(out[1], ref[1])
    torch.testing.assert_close(out[0], ref[0], **tol(torch.float64))
    g = torch.Generator().manual_seed(9)
    seeds = torch.stack([draw_seed(g) for _ in range(5)])
    assert torch.equal(raw(torch.ops.dreamer_fast, inputs, None, seeds=seeds)[1], out[1])
    other = observe_sequence(*inputs.values(), generator=torch.Generator().manual_seed(10), backend="fused")
    assert not torch.equal(other[1], out[1])


def test_reset_restarts_the_sequence():
    """Where keep is 0 for every row, the rest of the sequence is a fresh sequence from the zero state."""
    inputs, noise = make(T=8, B=3)
    out = raw(torch.ops.dreamer_fast, inputs, noise)
    tail = {n: (t[4:] if n in ("act_proj", "emb_proj", "keep") else t) for n, t in inputs.items()}
    tail["deter0"] = torch.randn_like(inputs["deter0"])  # ignored: keep[4] = 0
    fresh = raw(torch.ops.dreamer_fast, tail, noise[4:])
    for a, b in zip(out, fresh):
        torch.testing.assert_close(a[4:], b, rtol=0, atol=1e-14)


def test_gradient_of_one_output_leaves_the_rest_of_the_graph():
    """autograd.grad for `logits` alone must not run (and free) what hangs off `deters` (e.g. the prior head)."""
    inputs, noise = make(T=4, B=2)
    fused_in = requiring_grad(inputs)
    deters, _, logits = observe_sequence(*fused_in.values(), noise=noise, backend="fused")
    head = deters.tanh().square().sum()
    torch.autograd.grad(head + logits.sum(), [logits])
    (d_w_gru,) = torch.autograd.grad(head, [fused_in["w_gru"]])  # head's graph is still there
    assert d_w_gru.abs().sum() > 0


def test_empty_sequence():
    inputs, noise = make(T=0, B=2)
    fused_in = requiring_grad(inputs)
    deters, samples, logits = observe_sequence(*fused_in.values(), noise=noise, backend="fused")
    assert deters.shape == (0, 2, 5) and samples.shape == (0, 2, 3, 4) and logits.shape == (0, 2, 3, 4)
    grads = torch.autograd.grad(deters.sum() + fused_in["deter0"].sum(), [fused_in["deter0"], fused_in["w_gru"]],
                                allow_unused=True)
    assert torch.equal(grads[0], torch.ones_like(grads[0])) and (grads[1] is None or grads[1].abs().sum() == 0)


def test_gemm_dtype_rounds_the_gemms_only():
    """gemm_dtype=bfloat16 (autocast's): close to float32, states stay float32, and differs from it (so it is used)."""
    inputs, noise = make(T=3, B=2, dtype=torch.float32)
    full = raw(torch.ops.dreamer_fast, inputs, noise)
    low = raw(torch.ops.dreamer_fast, inputs, noise, gemm_dtype=torch.bfloat16)
    ref = observe_sequence_ref(*inputs.values(), noise=noise, gemm_dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in low)
    assert not torch.equal(low[0], full[0])
    torch.testing.assert_close(low[0][0], full[0][0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(low[0][0], ref[0][0], rtol=0.02, atol=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast itself does not reach inside the op
        inside = raw(torch.ops.dreamer_fast, inputs, noise)
    assert all(torch.equal(a, b) for a, b in zip(inside, full))


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def observe_sequence_fused(*args, **kwargs):
    return observe_sequence(*args, **kwargs, backend="fused")


def observe_sequence_sample(unimix):
    def build(device, dtype):
        inputs, noise = make(T=12, B=4, dtype=dtype, device=device)
        return tuple(requiring_grad(inputs).values()), {"noise": noise, "unimix": unimix}

    return Sample(f"T12-B4-u{unimix}", build)


def observe_sequence_values(out, ref, dtype, args, kwargs):
    """The same samples (the same categorical draws), and deters, samples and logits within tol(dtype)."""
    assert torch.equal(out[1].detach(), ref[1].detach()), "samples differ"
    for name, a, b in zip(("deters", "samples", "logits"), out, ref):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"{n}: {m}")


def observe_sequence_grad_tol(dtype):
    """float32 gradients summed over T steps of the recurrence: looser than tol(float32)."""
    return dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else tol(dtype)


def observe_sequence_gradcheck_through_time(resets):
    """K = 1: the sample is constant (its straight-through gradient is zero, the true one), so finite differences
    check the whole recurrence over T steps, resets included."""

    def build(device):
        inputs, noise = make(T=5, B=2, D=3, H=2, S=2, K=1, device=device, resets=resets)
        fixed = {n: t for n, t in inputs.items() if n not in DIFFERENTIABLE}

        def f(*xs):
            return observe_sequence_fused(**fixed, **dict(zip(DIFFERENTIABLE, xs)), noise=noise)

        return [(f, tuple(inputs[n].requires_grad_() for n in DIFFERENTIABLE))]

    return Gradcheck(f"through-time-{'resets' if resets else 'no-resets'}", build)


def observe_sequence_gradcheck_one_step_categorical(device):
    """K > 1, one step: deters and logits do not depend on the sample drawn, so their gradients are exact."""
    inputs, noise = make(T=1, B=3, D=3, H=2, S=2, K=3, device=device, resets=False)
    fixed = {n: t for n, t in inputs.items() if n not in DIFFERENTIABLE}

    def f(*xs):
        deters, _, logits = observe_sequence_fused(**fixed, **dict(zip(DIFFERENTIABLE, xs)), noise=noise, unimix=0.1)
        return deters, logits

    return [(f, tuple(inputs[n].requires_grad_() for n in DIFFERENTIABLE))]


def observe_sequence_opcheck(device):
    inputs, noise = make(T=4, B=2, D=3, H=2, S=2, K=3, device=device)
    args = tuple(requiring_grad(inputs).values())
    seeds = torch.arange(4, dtype=torch.int64)
    op = torch.ops.dreamer_fast.observe_sequence.default
    return [(op, (*args, noise, seeds, 0.01, 1e-3, None), {}), (op, (*args, None, seeds, 0.0, 1e-3, None), {})]


def observe_sequence_small():
    return make(T=4, B=2, D=3, H=2, S=2, K=3)


# The wrapper's and the C++ kernel's messages for the same bad input: (id, changed inputs, Python exception, message).
OBSERVE_SEQUENCE_BAD = [
    ("w_gru shape", lambda i, n: dict(w_gru=i["w_gru"][:, 1:]), ValueError,
     "`w_gru` must have shape [3*D, H+D] = [9, 5], got [9, 4]"),
    ("emb_proj T", lambda i, n: dict(emb_proj=i["emb_proj"][1:]), ValueError,
     "`emb_proj` must have shape [T, B, H] = [4, 2, 2], got [3, 2, 2]"),
    ("keep shape", lambda i, n: dict(keep=i["keep"][:, :1]), ValueError,
     "`keep` must have shape [T, B] = [4, 2], got [4, 1]"),
    ("b_post shape", lambda i, n: dict(b_post=i["b_post"][1:]), ValueError,
     "`b_post` must have shape [S*K] = [6], got [5]"),
    ("ln_w dtype", lambda i, n: dict(ln_w=i["ln_w"].float()), TypeError, "`ln_w`"),
    ("w_post dtype", lambda i, n: dict(w_post=i["w_post"].float()), TypeError, "`w_post`"),
    ("noise shape", lambda i, n: dict(noise=n[..., :1]), ValueError,
     "`noise` must have shape [T, B, S] = [4, 2, 2], got [4, 2, 1]"),
    ("deter0 int", lambda i, n: dict(deter0=i["deter0"].long()), TypeError, "`deter0` must be float32"),
    ("act_proj 2d", lambda i, n: dict(act_proj=i["act_proj"][0]), ValueError, "`act_proj` must be [T, B, H]"),
]


def observe_sequence_bad(change):
    def call():
        inputs, noise = observe_sequence_small()
        observe_sequence_fused(**{**inputs, "noise": noise, **change(inputs, noise)})

    return call


def observe_sequence_cpp(change):
    def call(ns):
        inputs, noise = observe_sequence_small()
        args = {**inputs, "noise": noise, **change(inputs, noise)}
        noise = args.pop("noise")
        raw(ns, args, noise)

    return call


def observe_sequence_cpp_scalars(seeds, unimix, gemm_dtype):
    def call(ns):
        inputs, noise = make(T=4, B=2)
        ns.observe_sequence(*inputs.values(), noise, seeds(), unimix, 1e-3, gemm_dtype)

    return call


def observe_sequence_cpp_backward(ns):
    inputs, noise = make(T=3, B=2)
    fwd = ns.observe_sequence_forward(*inputs.values(), noise, torch.zeros(3, dtype=torch.int64), 0.0, 1e-3, None)
    deters, samples, logits, x, gates, mean, rstd, y, probs = fwd
    i = inputs
    ns.observe_sequence_backward(
        torch.zeros_like(deters), torch.zeros_like(samples)[:, :1], torch.zeros_like(logits), i["keep"],
        i["deter0"], i["stoch0"], i["w_stoch_in"], i["w_gru"], i["ln_w"], i["ln_b"], i["w_deter_out"],
        i["w_post"], deters, samples, x, gates, mean, rstd, y, probs, 0.0)


def observe_sequence_bad_gemm_dtype():
    inputs, noise = make(T=4, B=2)
    observe_sequence_fused(*inputs.values(), noise=noise, gemm_dtype=torch.int32)


def int64(*shape):
    return lambda: torch.zeros(*shape, dtype=torch.int64)


CASE = OpCase(
    name="observe_sequence",
    op=observe_sequence_fused,
    reference=observe_sequence_ref,
    input_names=NAMES,
    output_names=("deters", "samples", "logits"),
    samples=[observe_sequence_sample(unimix) for unimix in [0.0, 0.01]],
    check_values=observe_sequence_values,
    grad_tol=observe_sequence_grad_tol,
    grads_nonzero=True,
    gradchecks=[*(observe_sequence_gradcheck_through_time(resets) for resets in [True, False]),
                Gradcheck("one-step-categorical", observe_sequence_gradcheck_one_step_categorical)],
    opchecks=[Opcheck("noise-and-seeds", observe_sequence_opcheck)],
    bad_inputs=[
        *(Bad(name, observe_sequence_bad(change), exc, "observe_sequence: " + literal(message))
          for name, change, exc, message in OBSERVE_SEQUENCE_BAD),
        Bad("gemm_dtype int", observe_sequence_bad_gemm_dtype, TypeError,
            literal("observe_sequence: `gemm_dtype` must be a floating-point torch.dtype")),
    ],
    cpp_checks=[
        *(CppCheck(name, observe_sequence_cpp(change), "observe_sequence: " + literal(message), (CPU_NS,))
          for name, change, _, message in OBSERVE_SEQUENCE_BAD),
        CppCheck("seeds dtype", observe_sequence_cpp_scalars(lambda: torch.zeros(4), 0.0, None),
                 "observe_sequence: `seeds` must be an int64 CPU tensor", (CPU_NS,)),
        CppCheck("seeds shape", observe_sequence_cpp_scalars(int64(3), 0.0, None),
                 r"observe_sequence: `seeds` must have shape \[T\] = \[4\], got \[3\]", (CPU_NS,)),
        CppCheck("unimix", observe_sequence_cpp_scalars(int64(4), 2.0, None),
                 r"observe_sequence: `unimix` must be in \[0, 1\], got 2", (CPU_NS,)),
        CppCheck("gemm_dtype int", observe_sequence_cpp_scalars(int64(4), 0.0, torch.int32),
                 "observe_sequence: `gemm_dtype` must be a floating-point dtype", (CPU_NS,)),
        CppCheck("backward grad_samples shape", observe_sequence_cpp_backward,
                 "observe_sequence_backward: `grad_samples` must have shape", (CPU_NS,)),
    ],
)
