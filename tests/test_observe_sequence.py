"""observe_sequence, the whole-sequence RSSM observe op (C++ loops forward and backward), beyond the checks every op
shares (tests/test_op_contract.py: values and gradients, gradcheck through time, opcheck, the wrapper's and the C++
kernels' argument checks): training sizes on each GEMM library, the raw kernels (CPU and emulated CUDA) against the
reference, one seed per step, resets, the gradient of one output, empty sequences and gemm_dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_to_scale, cpu_gemm_library, tol

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

