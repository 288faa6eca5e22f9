"""obs_step_inference: the one-op acting step (RSSM.obs_step under torch.no_grad, fused backend) against the
reference step: values (f32, f64, unimix, resets), Philox reproducibility, the emulated CUDA kernels, scalar and noise
checks, prior=False and bfloat16 weight copies. opcheck and the argument checks it shares with the other ops are in
tests/test_op_contract.py."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tol
from op_contract import CPU_NS, Bad, CppCheck, OpCase, Opcheck, Sample, literal
from test_rssm import D, S, assert_states_close, model, sequence

import dreamer_fast.rssm.module as rssm_module
from dreamer_fast import RSSMState
from dreamer_fast.ops import obs_step_inference as obs_step_inference_ops
from dreamer_fast.ops.obs_step_inference import obs_step_inference
from dreamer_fast.reference.obs_step_inference import obs_step_inference_ref
from dreamer_fast.reference.philox import draw_seed


def rollout(m, backend, embed, action, is_first, noise):
    """obs_step over a sequence under no_grad; returns the stacked posteriors and priors."""
    m.backend = backend
    state, posts, priors = m.initial(embed.shape[1]), [], []
    with torch.no_grad():
        for t in range(embed.shape[0]):
            step_noise = None if noise is None else noise[t]
            state, prior = m.obs_step(state, action[t], embed[t], is_first[t], noise=step_noise)
            posts.append(state)
            priors.append(prior)
    return RSSMState.stack(posts), RSSMState.stack(priors)


def op_calls(monkeypatch):
    """Counts the op's calls from RSSM.obs_step (so a test fails if the fast path is silently not taken)."""
    calls = []
    real = obs_step_inference_ops.call

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(obs_step_inference_ops, "call", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("unimix", [0.0, 0.01])
@pytest.mark.parametrize("B", [2, 3])
def test_matches_reference_with_noise(dtype, unimix, B, monkeypatch):
    m = model(dtype, unimix=unimix)
    embed, action, is_first, noise = (x.detach() for x in sequence(40, B, dtype))  # resets at t = 0, 17, 31
    is_first[5, 0] = True  # a reset of one row only
    expected = rollout(m, "reference", embed, action, is_first, noise)
    calls = op_calls(monkeypatch)
    got = rollout(m, "fused", embed, action, is_first, noise)
    assert len(calls) == 40
    for a, b in zip(got, expected):
        assert_states_close(a, b, **tol(dtype))
    assert not any(x.requires_grad for state in got for x in state)


def test_philox_reproducible_and_equal_to_reference(monkeypatch):
    m = model(torch.float32)
    embed, action, is_first, _ = (x.detach().float() for x in sequence(6, 1))  # B = 1: the acting case
    torch.manual_seed(7)
    ref = rollout(m, "reference", embed, action, is_first, None)
    calls = op_calls(monkeypatch)
    torch.manual_seed(7)
    a = rollout(m, "fused", embed, action, is_first, None)
    torch.manual_seed(7)
    b = rollout(m, "fused", embed, action, is_first, None)
    assert len(calls) == 12  # 2 fused rollouts x 6 steps
    for x, y, r in zip(a, b, ref):
        assert_states_close(x, y, rtol=0, atol=0)
        assert_states_close(x, r, **tol(torch.float32))
    torch.manual_seed(8)
    c = rollout(m, "fused", embed, action, is_first, None)
    assert not torch.equal(c[0].stoch, a[0].stoch)  # another seed, other samples


def test_not_used_with_grad_or_autocast(monkeypatch):
    """With gradients on (training through a step) or under autocast the Python step runs instead."""
    m = model(torch.float32, backend="fused")
    embed, action, is_first, noise = (x.detach().float() for x in sequence(1, 2))
    calls = op_calls(monkeypatch)
    post, _ = m.obs_step(m.initial(2), action[0], embed[0], is_first[0], noise=noise[0])
    assert post.deter.requires_grad and not calls
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m.obs_step(m.initial(2), action[0], embed[0], is_first[0], noise=noise[0])
    assert not calls


def layers_of(m):
    return {name: (mod.weight, mod.bias) for name, mod in m.named_children() if name != "gru_norm"}


def op_args(B=2, dtype=torch.float64):
    m = model(dtype)
    g = torch.Generator().manual_seed(3)
    state = m.initial(B)
    state = RSSMState(torch.randn(B, D, generator=g, dtype=dtype), state.stoch + 0.5, state.logits)
    embed, action, _, noise = (x.detach() for x in sequence(1, B, dtype))
    return m, (state.deter, state.stoch, action[0], embed[0], torch.ones(B, dtype=dtype), layers_of(m),
               m.gru_norm.weight.detach(), m.gru_norm.bias.detach()), noise[0]


def test_emulated_cuda_kernels_agree():
    """The op on dreamer_fast_emu runs the CUDA kernels of ln_gru and the sampler (emulated): same results."""
    m, (deter, stoch, action, embed, keep, layers, ln_w, ln_b), noise = op_args()
    flat = [deter, stoch, action, embed, keep, *layers["img_in"], *layers["gru"], ln_w, ln_b, *layers["img_out"],
            *layers["prior_logits"], *layers["obs_out"], *layers["post_logits"]]
    seed = draw_seed()
    with torch.no_grad():
        real = torch.ops.dreamer_fast.obs_step_inference(*flat, noise, seed, 0.01, 1e-3)
        emu = torch.ops.dreamer_fast_emu.obs_step_inference(*flat, noise, seed, 0.01, 1e-3)
    for a, b in zip(real, emu):
        torch.testing.assert_close(a, b, **tol(torch.float64))


def test_bad_scalars_and_noise():
    m, args, noise = op_args()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"`noise` must have shape \[B, S\]"):
            obs_step_inference(*args, noise=noise[:, 1:])
        with pytest.raises(ValueError, match=r"`unimix` must be in \[0, 1\)"):
            obs_step_inference(*args, unimix=1.0)
        out = obs_step_inference(*args, noise=noise)
    assert out[1].shape == (2, S, m.classes)


# ---- prior=False and bfloat16 weight copies (RSSM.inference_dtype) ------------------------------------------------

# Sizes whose GEMV rows have whole 32-value blocks and a tail, and whose outputs are not a multiple of 4 (the bf16
# GEMV kernel's unroll): img_in reads 47 values, gru 82, obs_out 107; outputs 45, 111, 42.
ODD = dict(action_dim=5, embed_dim=70, deter=37, hidden=45, stoch=6, classes=7)


def odd_model(seed=0, unimix=0.0):
    torch.manual_seed(seed)
    m = rssm_module.RSSM(**ODD, unimix=unimix, backend="fused")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or name.startswith("gru_norm"):
                p.add_(0.1 * torch.randn_like(p))
    return m


def odd_sequence(T, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(T, B, ODD["embed_dim"], generator=g)
    action = torch.nn.functional.one_hot(torch.randint(ODD["action_dim"], (T, B), generator=g), ODD["action_dim"])
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[0] = True
    if T > 7:
        is_first[7, 0] = True  # a reset of one row only
    noise = torch.rand(T, B, ODD["stoch"], generator=g)
    return embed, action.float(), is_first, noise


def rounded_copy(m):
    """m with its six weight matrices rounded to bfloat16 (and back to float32): what the bf16 path computes."""
    r = odd_model(unimix=m.unimix)
    r.load_state_dict(m.state_dict())
    with torch.no_grad():
        for name in rssm_module.RSSM._LINEARS:
            w = getattr(r, name).weight
            w.copy_(w.bfloat16().float())
    return r


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("unimix", [0.0, 0.01])
def test_bf16_weights_equal_the_rssm_with_rounded_weights(B, unimix, monkeypatch):
    m = odd_model(unimix=unimix)
    embed, action, is_first, noise = odd_sequence(12, B)
    exact = rollout(m, "fused", embed, action, is_first, noise)
    expected = rollout(rounded_copy(m), "reference", embed, action, is_first, noise)
    m.inference_dtype = torch.bfloat16
    calls = op_calls(monkeypatch)
    got = rollout(m, "fused", embed, action, is_first, noise)
    assert len(calls) == 12
    for a, b in zip(got, expected):
        assert_states_close(a, b, rtol=1e-5, atol=1e-5)
    # The copies were really used: float32 weights give visibly other states.
    assert (got[0].deter - exact[0].deter).abs().max() > 1e-4


@pytest.mark.parametrize("B", [1, 6, 7])
@pytest.mark.parametrize("unimix", [0.0, 0.01])
def test_f32_odd_sizes_match_reference(B, unimix, monkeypatch):
    """Float32 weights: up to 6 rows the op's layers are our GEMV kernel (cpu/gemv.h; its 32-value blocks, the rows'
    tails and the outputs past the last 4-row unroll at these sizes), from 7 rows the GEMM library."""
    m = odd_model(unimix=unimix)
    embed, action, is_first, noise = odd_sequence(12, B)
    expected = rollout(m, "reference", embed, action, is_first, noise)
    calls = op_calls(monkeypatch)
    got = rollout(m, "fused", embed, action, is_first, noise)
    assert len(calls) == 12
    for a, b in zip(got, expected):
        assert_states_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_weight_copies_follow_the_parameters(monkeypatch):
    m = odd_model()
    m.inference_dtype = torch.bfloat16
    embed, action, is_first, noise = odd_sequence(3, 1)

    def step(model):
        return model.obs_step(model.initial(1), action[1], embed[1], is_first[1], noise=noise[1])[0]

    with torch.no_grad():
        step(m)
        copies = m._impl._inference_cache[1]
        step(m)
        assert m._impl._inference_cache[1] is copies  # unchanged weights: the copies are reused
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # in place: the weights' version counters move
    with torch.no_grad():
        got = step(m)
        assert m._impl._inference_cache[1] is not copies
        expected = step(rounded_copy(m))  # float32 weights, rounded
    assert_states_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`inference_dtype` must be None or torch.bfloat16"):
        m.inference_dtype = torch.float16


@pytest.mark.parametrize("path", ["op", "grad", "reference"])
def test_prior_false_returns_the_same_posterior(path, monkeypatch):
    m = odd_model()
    m.backend = "reference" if path == "reference" else "fused"
    embed, action, is_first, noise = odd_sequence(2, 2)
    state = m.initial(2)
    calls = op_calls(monkeypatch)
    with torch.set_grad_enabled(path == "grad"):
        post, prior = m.obs_step(state, action[1], embed[1], is_first[1], noise=noise[1])
        post_only, none = m.obs_step(state, action[1], embed[1], is_first[1], noise=noise[1], prior=False)
    assert none is None and prior is not None
    assert_states_close(post_only, post, rtol=0, atol=0)
    assert len(calls) == (2 if path == "op" else 0)


def bf16_op_args(with_noise=True):
    m = odd_model()
    embed, action, is_first, noise = odd_sequence(1, 2)
    state = m.initial(2)
    g = torch.Generator().manual_seed(3)
    deter = torch.randn(2, ODD["deter"], generator=g)
    layers = {name: (getattr(m, name).weight.detach().bfloat16(), getattr(m, name).bias.detach())
              for name in rssm_module.RSSM._LINEARS}
    return (deter, state.stoch + 0.1, action[0], embed[0], torch.ones(2), layers, m.gru_norm.weight.detach(),
            m.gru_norm.bias.detach()), noise[0]


def flat_args(args):
    deter, stoch, action, embed, keep, layers, ln_w, ln_b = args
    return [deter, stoch, action, embed, keep, *layers["img_in"], *layers["gru"], ln_w, ln_b, *layers["img_out"],
            *layers["prior_logits"], *layers["obs_out"], *layers["post_logits"]]


@pytest.mark.parametrize("with_prior", [True, False])
def test_bf16_weights_opcheck_and_emulated(with_prior):
    args, noise = bf16_op_args()
    flat = flat_args(args)
    seed = draw_seed()
    torch.library.opcheck(torch.ops.dreamer_fast.obs_step_inference.default,
                          (*flat, noise, seed, 0.0, 1e-3, with_prior), test_utils=("test_schema", "test_faketensor"))
    with torch.no_grad():
        real = torch.ops.dreamer_fast.obs_step_inference(*flat, noise, seed, 0.01, 1e-3, with_prior)
        emu = torch.ops.dreamer_fast_emu.obs_step_inference(*flat, noise, seed, 0.01, 1e-3, with_prior)
    for a, b in zip(real, emu):
        torch.testing.assert_close(a, b, **tol(torch.float32))
    assert real[0].dtype == torch.float32
    assert real[3].shape == ((2, ODD["stoch"], ODD["classes"]) if with_prior else (0,))


def test_bf16_weights_bad_inputs():
    args, noise = bf16_op_args()
    deter, stoch, action, embed, keep, layers, ln_w, ln_b = args
    mixed = dict(layers, gru=(layers["gru"][0].float(), layers["gru"][1]))  # one weight not bfloat16
    with torch.no_grad():
        with pytest.raises(TypeError, match=re.escape("`layers['gru'] weight` has dtype torch.float32")):
            obs_step_inference(deter, stoch, action, embed, keep, mixed, ln_w, ln_b, noise=noise)
        f64 = [t.double() for t in (deter, stoch, action, embed, keep, ln_w, ln_b)]
        f64_layers = {k: (w, b.double()) for k, (w, b) in layers.items()}  # bf16 weights need a float32 state
        with pytest.raises(TypeError, match=re.escape("`layers['img_in'] weight` has dtype torch.bfloat16")):
            obs_step_inference(*f64[:5], f64_layers, *f64[5:], noise=noise.double())
        flat = flat_args((deter, stoch, action, embed, keep, mixed, ln_w, ln_b))
        with pytest.raises(RuntimeError, match="`w_gru` must be bfloat16 like `w_img_in`"):
            torch.ops.dreamer_fast.obs_step_inference(*flat, noise, torch.zeros((), dtype=torch.int64), 0.0, 1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the CPU kernel of "
                    "the bf16-weight GEMV is tested above; the CUDA path is an ATen addmm)")
@pytest.mark.parametrize("with_prior", [True, False])
def test_bf16_weights_cuda_equals_cpu(with_prior):
    args, noise = bf16_op_args()
    flat = flat_args(args)
    seed = torch.zeros((), dtype=torch.int64)
    with torch.no_grad():
        cpu = torch.ops.dreamer_fast.obs_step_inference(*flat, noise, seed, 0.0, 1e-3, with_prior)
        cuda = torch.ops.dreamer_fast.obs_step_inference(*[t.cuda() for t in flat], noise.cuda(), seed, 0.0, 1e-3,
                                                         with_prior)
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b.cpu(), a, **tol(torch.float32))


@pytest.mark.parametrize("with_prior", [True, False])
def test_philox_and_bf16_weights_equal_the_reference_twin(with_prior):
    """The op and dreamer_fast.reference.obs_step_inference_ref draw the same Philox seed from equally seeded
    generators, and read bfloat16 weight copies as the same rounded values."""
    _, args, _ = op_args(B=3, dtype=torch.float32)
    layers = {name: (w.detach().to(torch.bfloat16), b.detach()) for name, (w, b) in args[5].items()}
    args = (*args[:5], layers, *args[6:])
    with torch.no_grad():
        got = obs_step_inference(*args, unimix=0.01, generator=torch.Generator().manual_seed(11),
                                 with_prior=with_prior)
        want = obs_step_inference_ref(*args, unimix=0.01, generator=torch.Generator().manual_seed(11),
                                      with_prior=with_prior)
    assert torch.equal(got[1], want[1])  # the one-hot samples: the same draws
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol(torch.float32))


# ---- the op contract row (checked by tests/test_op_contract.py) ------------------------------------------------------


def obs_step_on(device, args, noise):
    """op_args' (args, noise) on `device` (the layers' weights and biases included)."""
    move = lambda t: t.to(device)  # noqa: E731
    layers = {name: (move(w), move(b)) for name, (w, b) in args[5].items()}
    return (*map(move, args[:5]), layers, *map(move, args[6:])), move(noise)


def obs_step_sample(B, unimix, with_prior):
    def build(device, dtype):
        _, args, noise = op_args(B=B, dtype=dtype)
        args, noise = obs_step_on(device, args, noise)
        keep = torch.ones(B, dtype=dtype, device=device)
        keep[0] = 0  # the first row starts from the initial state
        return (*args[:4], keep, *args[5:]), dict(noise=noise, unimix=unimix, with_prior=with_prior)

    return Sample(f"B{B}-u{unimix}-{'prior' if with_prior else 'posterior'}", build, torch.no_grad)


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


CASE = OpCase(
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
