"""The contract every fused op keeps, checked over one table (OP_CASES, one OpCase per op): values and gradients equal
the reference's, gradcheck, opcheck (schema, fake kernel, autograd registration), torch.compile(fullgraph=True),
the Python wrapper's argument errors, and the C++ kernels' own argument checks (CPU kernels and the CUDA kernels
through the emulator). What only one op has (hand-computed values, special values, sampling, emulation schedules,
backend selection) is in that op's tests/test_<op>.py, which also holds the input makers used here."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA, assert_close_to_scale, cpu_gemm_library, tol
from op_contract import CPU_NS, Bad, CppCheck, Gradcheck, OpCase, Opcheck, Sample, literal
from test_elu import sample as elu_input
from test_kl_balance import make as kl_balance_inputs
from test_lambda_return import make as lambda_return_inputs
from test_linear import GEMMS
from test_linear import make as linear_input
from test_ln_gru import make as ln_gru_inputs
from test_obs_step_inference import flat_args, op_args
from test_observe_sequence import DIFFERENTIABLE, NAMES, raw, requiring_grad
from test_observe_sequence import make as observe_sequence_inputs
from test_straight_through_categorical import assert_samples_equal, seed_tensor
from test_straight_through_categorical import make as categorical_inputs

import dreamer_fast as df
from dreamer_fast.ops.linear import linear
from dreamer_fast.ops.obs_step_inference import obs_step_inference
from dreamer_fast.ops.observe_sequence import observe_sequence
from dreamer_fast.reference import (
    elu_ref,
    kl_balance_ref,
    lambda_return_ref,
    ln_gru_ref,
    observe_sequence_ref,
    straight_through_categorical_ref,
)
from dreamer_fast.reference.linear import linear_ref
from dreamer_fast.reference.obs_step_inference import obs_step_inference_ref

NO_CUDA = "no CUDA device (CUDA kernels are covered by the emulated tests)"


# ---- lambda_return ---------------------------------------------------------------------------------------------------


def lambda_return_fused(*args, **kwargs):
    return df.lambda_return(*args, **kwargs, backend="fused")


def lambda_return_sample(T, B, lam):
    return Sample(f"{T}x{B}-lam{lam}",
                  lambda device, dtype: ((*lambda_return_inputs(T, B, device, dtype, requires_grad=True), lam), {}))


def lambda_return_bad(mutate):
    return lambda: lambda_return_fused(*mutate(*lambda_return_inputs(5, 4, "cpu", torch.float32)))


def lambda_return_cpp(mutate):
    return lambda ns: ns.lambda_return(*mutate(*lambda_return_inputs(5, 4, "cpu", torch.float32)), 0.9)


def lambda_return_compile():
    def loss(*x):
        return lambda_return_fused(*x, 0.95).square().mean()

    return loss, tuple(lambda_return_inputs(15, 64, "cpu", torch.float32, requires_grad=True))


LAMBDA_RETURN = OpCase(
    name="lambda_return",
    op=lambda_return_fused,
    reference=lambda_return_ref,
    input_names=("reward", "value", "discount", "bootstrap"),
    output_names=("return",),
    samples=[lambda_return_sample(T, B, lam)
             for T, B in [(1, 1), (2, 3), (15, 800), (50, 16), (7, 1030)] for lam in [0.0, 0.95, 1.0]],
    gradchecks=[Gradcheck("T5-B4", lambda device: [
        (lambda *x: lambda_return_fused(*x, 0.9), tuple(lambda_return_inputs(5, 4, device, torch.float64, True)))])],
    opchecks=[Opcheck("T6-B5", lambda device: [
        (torch.ops.dreamer_fast.lambda_return.default,
         (*lambda_return_inputs(6, 5, device, torch.float32, requires_grad=True), 0.95), {})])],
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
        *(Bad(f"lam={lam}", lambda lam=lam: df.lambda_return(*lambda_return_inputs(3, 2, "cpu", torch.float32), lam),
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


# ---- straight_through_categorical ------------------------------------------------------------------------------------


def categorical_fused(*args, **kwargs):
    return df.straight_through_categorical(*args, **kwargs, backend="fused")


def categorical_sample(shape, unimix):
    def make(device, dtype):
        logits, noise = categorical_inputs(shape, dtype, device, requires_grad=True)
        return (logits, unimix), {"noise": noise}

    return Sample(f"{'x'.join(map(str, shape))}-u{unimix}", make)


def categorical_values(out, ref, dtype, args, kwargs):
    """probs within tol(dtype); the one-hot samples equal (away from class boundaries in float32)."""
    (sample, probs), (ref_sample, ref_probs) = out, ref
    torch.testing.assert_close(probs, ref_probs, **tol(dtype))
    assert_samples_equal(sample, ref_sample, ref_probs, kwargs["noise"])


def categorical_gradcheck(unimix):
    """gradcheck on probs (the sample's gradient is, by design, not the derivative of its value)."""

    def make(device):
        logits, noise = categorical_inputs((4, 3, 6), torch.float64, device, requires_grad=True)
        return [(lambda x: categorical_fused(x, unimix, noise=noise)[1], (logits,))]

    return Gradcheck(f"probs-u{unimix}", make)


def categorical_opcheck(with_noise):
    def make(device):
        logits, noise = categorical_inputs((5, 3, 8), torch.float32, device, requires_grad=True)
        args = (logits, noise, seed_tensor(0), 0.01) if with_noise else (logits, None, seed_tensor(99), 0.01)
        return [(torch.ops.dreamer_fast.straight_through_categorical.default, args, {})]

    return Opcheck("noise" if with_noise else "seed", make)


def categorical_compile():
    logits, _ = categorical_inputs((64, 32), requires_grad=True)
    w = torch.randn(64, 32)

    def loss(x):
        sample, probs = categorical_fused(x, 0.01)
        return (sample * w).sum() + probs.square().sum()

    return loss, (logits,)


def categorical_bad(mutate):
    def call():
        logits, kwargs = mutate(*categorical_inputs((6, 4)))
        categorical_fused(logits, **kwargs)

    return call


def categorical_cpp(mutate):
    return lambda ns: ns.straight_through_categorical(*mutate(*categorical_inputs((5, 5))))


def categorical_cpp_backward(mutate):
    def call(ns):
        probs = categorical_inputs((5, 4))[0].softmax(-1)
        ns.straight_through_categorical_backward(*mutate(probs))

    return call


STRAIGHT_THROUGH_CATEGORICAL = OpCase(
    name="straight_through_categorical",
    op=categorical_fused,
    reference=straight_through_categorical_ref,
    input_names=("logits",),
    output_names=("sample", "probs"),
    samples=[categorical_sample(shape, unimix) for shape in [(1, 1), (7, 2), (4, 5, 32), (3, 40), (2, 3, 70), (33, 32)]
             for unimix in [0.0, 0.01, 0.5]],
    check_values=categorical_values,
    gradchecks=[categorical_gradcheck(unimix) for unimix in [0.0, 0.3]],
    opchecks=[categorical_opcheck(with_noise) for with_noise in [True, False]],
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
        CppCheck("backward unimix", categorical_cpp_backward(lambda p: (p, None, p, -1.0)), "`unimix` must be in"),
    ],
)


# ---- kl_balance ------------------------------------------------------------------------------------------------------


def kl_balance_fused(post, prior, *args, **kwargs):
    return df.kl_balance(post, prior, *args, **kwargs, backend="fused")


def kl_balance_sample(shape, unimix, free, free_avg):
    def make(device, dtype):
        return (*kl_balance_inputs(shape, device, dtype, requires_grad=True), 0.8, free, free_avg, unimix), {}

    return Sample(f"{'x'.join(map(str, shape))}-u{unimix}-free{free}-{'avg' if free_avg else 'each'}", make)


def kl_balance_values(out, ref, dtype, args, kwargs):
    """A scalar loss and kl of shape [...] (the logits' leading dims), both in the logits' dtype, within tol(dtype)."""
    assert out[0].shape == () and out[1].shape == args[0].shape[:-2]
    assert out[0].dtype == out[1].dtype == dtype
    for name, a, b in zip(("loss", "kl"), out, ref):
        torch.testing.assert_close(a, b, **tol(dtype), msg=lambda m, n=name: f"value {n}: {m}")


def kl_balance_gradcheck(unimix):
    """kl is an ordinary function of both logits. The loss is not (its gradient stops at sg()), except where the
    stopped side is constant: balance 0 is a plain function of post, balance 1 of prior."""

    def make(device):
        post, prior = kl_balance_inputs((4, 2, 3), device, torch.float64, requires_grad=True)
        checks = [(lambda x, y: kl_balance_fused(x, y, 0.8, 0.0, True, unimix)[1], (post, prior))]
        kl = kl_balance_fused(post, prior, unimix=unimix)[1].detach().sort().values
        for free, free_avg in ((0.0, True), (kl.mean().item() - 0.1, True), ((kl[1] + kl[2]).item() / 2, False)):
            args = (free, free_avg, unimix)
            checks.append((lambda x, args=args: kl_balance_fused(x, prior.detach(), 0.0, *args)[0], (post,)))
            checks.append((lambda y, args=args: kl_balance_fused(post.detach(), y, 1.0, *args)[0], (prior,)))
        return checks

    return Gradcheck(f"u{unimix}", make)


def kl_balance_opcheck(device):
    post, prior = kl_balance_inputs((4, 3, 5), device, torch.float32, requires_grad=True)
    op = torch.ops.dreamer_fast.kl_balance.default
    return [(op, (post, prior, 0.8, 0.0, True, 0.0), {}), (op, (post, prior, 0.3, 0.5, False, 0.01), {})]


def kl_balance_compile():
    def loss(x, y):
        value, kl = df.kl_balance(x, y, 0.8, 0.1, True, 0.01, backend="fused")
        return value + 0.1 * kl.square().mean()

    return loss, tuple(kl_balance_inputs((6, 4, 8, 16), requires_grad=True))


def kl_balance_bad(mutate):
    return lambda: kl_balance_fused(*mutate(*kl_balance_inputs((3, 4, 5))))


def kl_balance_bad_scalar(name, value):
    def call():
        kwargs = dict(balance=0.8, free=0.0, free_avg=True, unimix=0.0)
        kwargs[name] = value
        kl_balance_fused(*kl_balance_inputs((3, 4, 5)), **kwargs)

    return Bad(f"{name}={value}", call, (ValueError, TypeError), f"`{name}`")


def kl_balance_cpp(mutate, *scalars):
    return lambda ns: ns.kl_balance(*mutate(*kl_balance_inputs((3, 4, 5))), *(scalars or (0.8, 0.0, True, 0.0)))


def kl_balance_cpp_backward(mutate):
    def call(ns):
        x, y = kl_balance_inputs((3, 4, 5))
        _, kl = ns.kl_balance(x, y, 0.8, 0.0, True, 0.0)
        ns.kl_balance_backward(*mutate(torch.tensor(1.0), kl, x, y), 0.8, 0.0, True, 0.0)

    return call


KL_BALANCE = OpCase(
    name="kl_balance",
    op=kl_balance_fused,
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


# ---- elu -------------------------------------------------------------------------------------------------------------


def elu_fused(x):
    return df.elu(x, backend="fused")


def elu_gradcheck(device):
    x = elu_input((6, 5), device, torch.float64, requires_grad=True)
    x = x.detach().masked_fill(x.detach().abs() < 1e-3, 0.5).requires_grad_()  # away from the kink at 0
    return [(elu_fused, (x,))]


def elu_opcheck(device):
    x = elu_input((4, 7), device, torch.float32)
    return [(torch.ops.dreamer_fast.elu.default, (elu_input((4, 7), device, torch.float32, True),), {}),
            (torch.ops.dreamer_fast.elu_backward.default, (torch.randn_like(x), F.elu(x)), {})]


def elu_compile():
    def loss(t):
        return elu_fused(t).square().mean()

    return loss, (elu_input((16, 33), "cpu", torch.float32, requires_grad=True),)


def elu_bad(mutate):
    return lambda: elu_fused(mutate(torch.randn(3, 4)))


def elu_cpp_backward(mutate):
    def call(ns):
        out = F.elu(torch.randn(4, 6))
        ns.elu_backward(*mutate(out))

    return call


ELU = OpCase(
    name="elu",
    op=elu_fused,
    reference=elu_ref,
    input_names=("x",),
    output_names=("y",),
    samples=[Sample("x".join(map(str, shape)),
                    lambda device, dtype, shape=shape: ((elu_input(shape, device, dtype, requires_grad=True),), {}))
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
    marks=(pytest.mark.skipif(not df.has_kernel("elu", "cpu"), reason="the compiled extension is not loaded"),),
)


# ---- linear ----------------------------------------------------------------------------------------------------------


def linear_fused(*args):
    return linear(*args, backend="fused")


def linear_close(got, want, **kw):
    """The tolerance scales with the values (a dW summed over 800 rows is ~30 here)."""
    assert_close_to_scale(got, want, **kw)


def linear_sample(gemm, M, K, N, with_bias):
    def make(device, dtype):
        bias = linear_input((N,), device, dtype, 2) if with_bias else None
        return (linear_input((M, K), device, dtype, 0), linear_input((N, K), device, dtype, 1), bias), {}

    return Sample(f"{gemm}-{M}x{K}x{N}-{'bias' if with_bias else 'no-bias'}", make,
                  lambda: cpu_gemm_library(gemm))


def linear_gradcheck(device):
    args = (linear_input((5, 7), device, torch.float64, 0), linear_input((4, 7), device, torch.float64, 1),
            linear_input((4,), device, torch.float64, 2))
    return [(linear_fused, args)]


def linear_opcheck(gemm):
    def make(device):
        x, w, b = (linear_input((8, 5), device, torch.float32, 0), linear_input((3, 5), device, torch.float32, 1),
                   linear_input((3,), device, torch.float32, 2))
        views = (linear_input((5, 8), device, torch.float32, 3).t(), linear_input((5, 3), device, torch.float32, 4).t(),
                 None)  # the backward's transposed operands
        return [(torch.ops.dreamer_fast.linear.default, (x, w, b), {}),
                (torch.ops.dreamer_fast.linear.default, views, {})]

    return Opcheck(gemm, make, lambda: cpu_gemm_library(gemm))


def linear_compile():
    def loss(*a):
        return linear_fused(*a).square().mean()

    return loss, (linear_input((16, 33), "cpu", torch.float32, 0), linear_input((8, 33), "cpu", torch.float32, 1),
                  linear_input((8,), "cpu", torch.float32, 2))


def linear_bad(**change):
    def call():
        args = dict(x=torch.randn(4, 6), weight=torch.randn(3, 6), bias=torch.randn(3))
        args.update({name: make() for name, make in change.items()})
        linear_fused(args["x"], args["weight"], args["bias"])

    return call


def linear_cpp(x, weight, bias):
    return lambda ns: ns.linear(x(), weight(), bias())


LINEAR = OpCase(
    name="linear",
    op=linear_fused,
    reference=linear_ref,
    input_names=("x", "weight", "bias"),
    output_names=("y",),
    # Rows 1 and 6: our GEMV; 7: the GEMM library below oneDNN's sizes; 800 x 290 -> 270: oneDNN where selected. Odd
    # sizes give the GEMV's block tails.
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
    marks=(pytest.mark.skipif(not df.has_kernel("linear", "cpu"), reason="the compiled extension is not loaded"),),
)


# ---- ln_gru ----------------------------------------------------------------------------------------------------------


def ln_gru_fused(*args):
    return df.ln_gru(*args, backend="fused")


def ln_gru_compile():
    def loss(*x):
        return ln_gru_fused(*x).square().mean()

    return loss, tuple(ln_gru_inputs(16, 12, "cpu", torch.float32, requires_grad=True))


def ln_gru_bad(mutate):
    return lambda: ln_gru_fused(*mutate(*ln_gru_inputs(5, 4, "cpu", torch.float32)))


def ln_gru_cpp(mutate):
    return lambda ns: ns.ln_gru(*mutate(*ln_gru_inputs(5, 4, "cpu", torch.float32)), 1e-3)


def ln_gru_cpp_backward(mutate):
    def call(ns):
        g, h, w, b = ln_gru_inputs(5, 4, "cpu", torch.float32)
        out, mean, rstd = ns.ln_gru(g, h, w, b, 1e-3)
        ns.ln_gru_backward(*mutate(out, g, h, w, b, mean, rstd))

    return call


LN_GRU = OpCase(
    name="ln_gru",
    op=ln_gru_fused,
    reference=ln_gru_ref,
    input_names=("gates", "deter", "weight", "bias"),
    output_names=("deter",),
    samples=[Sample(f"{B}x{D}", lambda device, dtype, B=B, D=D: (tuple(ln_gru_inputs(B, D, device, dtype, True)), {}))
             for B, D in [(1, 1), (3, 16), (16, 600), (70, 5), (0, 4)]],
    gradchecks=[Gradcheck("B4-D5", lambda device: [
        (ln_gru_fused, tuple(ln_gru_inputs(4, 5, device, torch.float64, requires_grad=True)))])],
    opchecks=[Opcheck("B6-D5", lambda device: [
        (torch.ops.dreamer_fast.ln_gru.default, (*ln_gru_inputs(6, 5, device, torch.float32, True), 1e-3), {})])],
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
        *(Bad(f"eps={eps}", lambda eps=eps: df.ln_gru(*ln_gru_inputs(3, 2, "cpu", torch.float32), eps),
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


# ---- observe_sequence ------------------------------------------------------------------------------------------------


def observe_sequence_fused(*args, **kwargs):
    return observe_sequence(*args, **kwargs, backend="fused")


def observe_sequence_sample(unimix):
    def make(device, dtype):
        inputs, noise = observe_sequence_inputs(T=12, B=4, dtype=dtype, device=device)
        return tuple(requiring_grad(inputs).values()), {"noise": noise, "unimix": unimix}

    return Sample(f"T12-B4-u{unimix}", make)


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

    def make(device):
        inputs, noise = observe_sequence_inputs(T=5, B=2, D=3, H=2, S=2, K=1, device=device, resets=resets)
        fixed = {n: t for n, t in inputs.items() if n not in DIFFERENTIABLE}

        def f(*xs):
            return observe_sequence_fused(**fixed, **dict(zip(DIFFERENTIABLE, xs)), noise=noise)

        return [(f, tuple(inputs[n].requires_grad_() for n in DIFFERENTIABLE))]

    return Gradcheck(f"through-time-{'resets' if resets else 'no-resets'}", make)


def observe_sequence_gradcheck_one_step_categorical(device):
    """K > 1, one step: deters and logits do not depend on the sample drawn, so their gradients are exact."""
    inputs, noise = observe_sequence_inputs(T=1, B=3, D=3, H=2, S=2, K=3, device=device, resets=False)
    fixed = {n: t for n, t in inputs.items() if n not in DIFFERENTIABLE}

    def f(*xs):
        deters, _, logits = observe_sequence_fused(**fixed, **dict(zip(DIFFERENTIABLE, xs)), noise=noise, unimix=0.1)
        return deters, logits

    return [(f, tuple(inputs[n].requires_grad_() for n in DIFFERENTIABLE))]


def observe_sequence_opcheck(device):
    inputs, noise = observe_sequence_inputs(T=4, B=2, D=3, H=2, S=2, K=3, device=device)
    args = tuple(requiring_grad(inputs).values())
    seeds = torch.arange(4, dtype=torch.int64)
    op = torch.ops.dreamer_fast.observe_sequence.default
    return [(op, (*args, noise, seeds, 0.01, 1e-3, None), {}), (op, (*args, None, seeds, 0.0, 1e-3, None), {})]


def observe_sequence_small():
    return observe_sequence_inputs(T=4, B=2, D=3, H=2, S=2, K=3)


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
        inputs, noise = observe_sequence_inputs(T=4, B=2)
        ns.observe_sequence(*inputs.values(), noise, seeds(), unimix, 1e-3, gemm_dtype)

    return call


def observe_sequence_cpp_backward(ns):
    inputs, noise = observe_sequence_inputs(T=3, B=2)
    fwd = ns.observe_sequence_forward(*inputs.values(), noise, torch.zeros(3, dtype=torch.int64), 0.0, 1e-3, None)
    deters, samples, logits, x, gates, mean, rstd, y, probs = fwd
    i = inputs
    ns.observe_sequence_backward(
        torch.zeros_like(deters), torch.zeros_like(samples)[:, :1], torch.zeros_like(logits), i["keep"],
        i["deter0"], i["stoch0"], i["w_stoch_in"], i["w_gru"], i["ln_w"], i["ln_b"], i["w_deter_out"],
        i["w_post"], deters, samples, x, gates, mean, rstd, y, probs, 0.0)


def observe_sequence_bad_gemm_dtype():
    inputs, noise = observe_sequence_inputs(T=4, B=2)
    observe_sequence_fused(*inputs.values(), noise=noise, gemm_dtype=torch.int32)


def int64(*shape):
    return lambda: torch.zeros(*shape, dtype=torch.int64)


OBSERVE_SEQUENCE = OpCase(
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


# ---- obs_step_inference ----------------------------------------------------------------------------------------------


def obs_step_on(device, args, noise):
    """op_args' (args, noise) on `device` (the layers' weights and biases included)."""
    move = lambda t: t.to(device)  # noqa: E731
    layers = {name: (move(w), move(b)) for name, (w, b) in args[5].items()}
    return (*map(move, args[:5]), layers, *map(move, args[6:])), move(noise)


def obs_step_sample(B, unimix, with_prior):
    def make(device, dtype):
        _, args, noise = op_args(B=B, dtype=dtype)
        args, noise = obs_step_on(device, args, noise)
        keep = torch.ones(B, dtype=dtype, device=device)
        keep[0] = 0  # the first row starts from the initial state
        return (*args[:4], keep, *args[5:]), dict(noise=noise, unimix=unimix, with_prior=with_prior)

    return Sample(f"B{B}-u{unimix}-{'prior' if with_prior else 'posterior'}", make, torch.no_grad)


def obs_step_opcheck(device):
    _, args, noise = op_args()
    flat = [t.detach() for t in flat_args(args)]
    return [(torch.ops.dreamer_fast.obs_step_inference.default,
             (*flat, noise, torch.zeros((), dtype=torch.int64), 0.0, 1e-3),
             dict(test_utils=("test_schema", "test_faketensor")))]


def obs_step_swap(i, value):
    return lambda args: (*args[:i], value(args[i]), *args[i + 1:])


def obs_step_layer(name, which, value):
    def change(args):
        layers = dict(args[5])
        pair = list(layers[name])
        pair[which] = value(pair[which])
        layers[name] = tuple(pair)
        return (*args[:5], layers, *args[6:])

    return change


def obs_step_bad(change):
    def call():
        _, args, noise = op_args()
        with torch.no_grad():
            obs_step_inference(*change(args), noise=noise)

    return call


def obs_step_cpp(change_flat, seed):
    def call(ns):
        _, args, noise = op_args()
        with torch.no_grad():
            ns.obs_step_inference(*change_flat(flat_args(args)), noise, seed(), 0.0, 1e-3)

    return call


def obs_step_bad_w_gru(flat):
    flat = list(flat)
    flat[7] = flat[7][:, 1:]  # w_gru
    return flat


def int64_scalar():
    return torch.zeros((), dtype=torch.int64)


OBS_STEP_INFERENCE = OpCase(
    name="obs_step_inference",
    op=obs_step_inference,
    reference=obs_step_inference_ref,
    input_names=(),
    output_names=("deter", "post sample", "post logits", "prior probs", "prior logits"),
    samples=[obs_step_sample(B, unimix, with_prior) for B in (1, 3) for unimix in (0.0, 0.01)
             for with_prior in (True, False)],
    gradchecks=[],  # an inference op: no autograd
    opchecks=[Opcheck("schema-and-fake", obs_step_opcheck)],
    opcheck_devices=("cpu",),
    bad_inputs=[
        Bad("deter-3d", obs_step_bad(obs_step_swap(0, lambda t: t[None])), ValueError,
            literal("`deter` must be [B, D]")),
        Bad("deter-int", obs_step_bad(obs_step_swap(0, lambda t: t.long())), TypeError,
            literal("`deter` must be float32 or float64")),
        Bad("stoch-batch", obs_step_bad(obs_step_swap(1, lambda t: t[:1])), ValueError,
            literal("`stoch` must have shape [B, S, K]")),
        Bad("action-dtype", obs_step_bad(obs_step_swap(2, lambda t: t.float())), TypeError,
            literal("`action` has dtype torch.float32")),
        Bad("embed-batch", obs_step_bad(obs_step_swap(3, lambda t: t[:1])), ValueError,
            literal("`embed` must have shape [B, E]")),
        Bad("keep-shape", obs_step_bad(obs_step_swap(4, lambda t: t[:, None])), ValueError,
            literal("`keep` must have shape [B]")),
        Bad("layers-missing", obs_step_bad(obs_step_swap(5, lambda d: {k: v for k, v in d.items() if k != "gru"})),
            ValueError, literal("`layers` must map")),
        Bad("gru-weight", obs_step_bad(obs_step_layer("gru", 0, lambda w: w[:, 1:])), ValueError,
            literal("`layers['gru'] weight` must have shape")),
        Bad("post-bias", obs_step_bad(obs_step_layer("post_logits", 1, lambda b: b[1:])), ValueError,
            literal("`layers['post_logits'] bias`")),
        Bad("ln_w", obs_step_bad(obs_step_swap(6, lambda t: t[1:])), ValueError,
            literal("`ln_w` must have shape [3*D]")),
    ],
    cpp_checks=[
        CppCheck("w_gru shape", obs_step_cpp(obs_step_bad_w_gru, int64_scalar),
                 r"`w_gru` must have shape \[3\*D, H \+ D\]", (CPU_NS,)),
        CppCheck("seed dtype", obs_step_cpp(list, lambda: int64_scalar().double()),
                 "`seed` must be a one-element int64 CPU tensor", (CPU_NS,)),
    ],
)


OP_CASES = [LAMBDA_RETURN, STRAIGHT_THROUGH_CATEGORICAL, KL_BALANCE, ELU, LINEAR, LN_GRU, OBSERVE_SEQUENCE,
            OBS_STEP_INFERENCE]


# ---- parametrisation -------------------------------------------------------------------------------------------------


def device_param(device: str):
    marks = [pytest.mark.skipif(not CUDA, reason=NO_CUDA)] if device == "cuda" else []
    return device, marks


def table(kind: str, *, devices: bool = False, namespaces: bool = False) -> list:
    """pytest params (case, item[, device | ns]) for every item of the table's `kind` column, with ids
    "<op>-<item id>[-<device | namespace>]"."""
    params = []
    for case in OP_CASES:
        for item in getattr(case, kind):
            base = f"{case.name}-{item.id}"
            if devices:
                for device in case.opcheck_devices if kind == "opchecks" else ("cpu", "cuda"):
                    name, marks = device_param(device)
                    params.append(pytest.param(case, item, name, id=f"{base}-{name}", marks=[*case.marks, *marks]))
            elif namespaces:
                for ns in item.namespaces:
                    params.append(pytest.param(case, item, ns.values[0], id=f"{base}-{ns.id}", marks=case.marks))
            else:
                params.append(pytest.param(case, item, id=base, marks=case.marks))
    return params


def fresh_leaf(x):
    """x again as a new leaf (for the reference's own graph); anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.requires_grad:
        return x.detach().clone().requires_grad_()
    return x


def as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def weighted_sum(outputs, weights):
    """A loss that reaches every output with a different weight per element (so mixed-up rows show)."""
    return sum((o * w).sum() for o, w in zip(outputs, weights))


# ---- the checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case,sample", table("samples"))
def test_values_and_grads_match_reference(case: OpCase, sample: Sample, device, dtype):
    """Fused vs reference on the same inputs: every output, and the gradient of every input that requires one under a
    random upstream gradient for every output."""
    with sample.context():
        args, kwargs = sample.make(device, dtype)
        ref_args = tuple(fresh_leaf(a) for a in args)
        out, ref = as_tuple(case.op(*args, **kwargs)), as_tuple(case.reference(*ref_args, **kwargs))
        if case.check_values is not None:
            case.check_values(out, ref, dtype, args, kwargs)
        else:
            for name, a, b in zip(case.output_names, out, ref):
                case.close(a, b, **tol(dtype), msg=lambda m, n=name: f"{n}: {m}")
        g = torch.Generator().manual_seed(5)
        weights = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in out]
        picked = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
        got = torch.autograd.grad(weighted_sum(out, weights), [args[i] for i in picked])
        want = torch.autograd.grad(weighted_sum(ref, weights), [ref_args[i] for i in picked])
    for i, a, b in zip(picked, got, want):
        name = case.input_names[i]
        if case.grads_nonzero:
            assert b.abs().sum() > 0, f"d{name} is zero: the test would not see a wrong gradient"
        case.close(a, b, **case.grad_tol(dtype), msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("case,check,device", table("gradchecks", devices=True))
def test_gradcheck(case: OpCase, check: Gradcheck, device):
    for fn, inputs in check.make(device):
        assert torch.autograd.gradcheck(fn, inputs)
        if check.gradgrad:
            assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("case,check,device", table("opchecks", devices=True))
def test_opcheck(case: OpCase, check: Opcheck, device):
    with check.context():
        for op, args, kwargs in check.make(device):
            torch.library.opcheck(op, args, **kwargs)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in OP_CASES if c.compile_loss])
def test_compile_fullgraph(case: OpCase):
    """The loss and its input gradients, compiled with fullgraph=True (no graph break) and eager. Both start from the
    same default generator state, for ops that draw a seed from it inside the graph."""
    loss, inputs = case.compile_loss()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    torch.manual_seed(3)
    want = loss(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case,bad", table("bad_inputs"))
def test_bad_inputs(case: OpCase, bad: Bad):
    """The Python wrapper rejects the input with an error that names the argument."""
    with pytest.raises(bad.exc, match=bad.match):
        bad.call()


@pytest.mark.parametrize("case,check,ns", table("cpp_checks", namespaces=True))
def test_cpp_checks_name_the_argument(case: OpCase, check: CppCheck, ns):
    """The C++ kernels check too (for callers who skip the Python wrapper)."""
    with pytest.raises(RuntimeError, match=check.match):
        check.call(ns)
