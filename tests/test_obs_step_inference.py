"""obs_step_inference: the one-op acting step (RSSM.obs_step under torch.no_grad, fused backend) against the
reference step: values (f32, f64, unimix, resets), Philox reproducibility, the emulated CUDA kernels, bad inputs."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tol
from test_rssm import D, S, assert_states_close, model, sequence

import dreamer_fast.rssm as rssm_module
from dreamer_fast import RSSMState
from dreamer_fast.ops.obs_step_inference import obs_step_inference
from dreamer_fast.reference.philox import draw_seed


def rollout(m, backend, embed, action, is_first, noise):
    """obs_step over a sequence under no_grad; returns the stacked posteriors and priors."""
    m.backend = backend
    state, posts, priors = m.initial(embed.shape[1]), [], []
    with torch.no_grad():
        for t in range(embed.shape[0]):
            state, prior = m.obs_step(state, action[t], embed[t], is_first[t], noise=None if noise is None else noise[t])
            posts.append(state)
            priors.append(prior)
    return RSSMState.stack(posts), RSSMState.stack(priors)


def op_calls(monkeypatch):
    """Counts the op's calls from RSSM.obs_step (so a test fails if the fast path is silently not taken)."""
    calls = []
    real = rssm_module._obs_step_inference.call

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rssm_module._obs_step_inference, "call", counting)
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


def test_opcheck():
    m, (deter, stoch, action, embed, keep, layers, ln_w, ln_b), noise = op_args()
    flat = [deter, stoch, action, embed, keep, *layers["img_in"], *layers["gru"], ln_w, ln_b, *layers["img_out"],
            *layers["prior_logits"], *layers["obs_out"], *layers["post_logits"]]
    flat = [t.detach() for t in flat]
    torch.library.opcheck(torch.ops.dreamer_fast.obs_step_inference.default,
                          (*flat, noise, torch.zeros((), dtype=torch.int64), 0.0, 1e-3),
                          test_utils=("test_schema", "test_faketensor"))


def _bad_cases():
    def swap(i, value):
        return lambda args: (*args[:i], value(args[i]), *args[i + 1:])

    def layer(name, which, value):
        def f(args):
            layers = dict(args[5])
            pair = list(layers[name])
            pair[which] = value(pair[which])
            layers[name] = tuple(pair)
            return (*args[:5], layers, *args[6:])
        return f

    return [
        ("deter-3d", swap(0, lambda t: t[None]), ValueError, "`deter` must be [B, D]"),
        ("deter-int", swap(0, lambda t: t.long()), TypeError, "`deter` must be float32 or float64"),
        ("stoch-batch", swap(1, lambda t: t[:1]), ValueError, "`stoch` must have shape [B, S, K]"),
        ("action-dtype", swap(2, lambda t: t.float()), TypeError, "`action` has dtype torch.float32"),
        ("embed-batch", swap(3, lambda t: t[:1]), ValueError, "`embed` must have shape [B, E]"),
        ("keep-shape", swap(4, lambda t: t[:, None]), ValueError, "`keep` must have shape [B]"),
        ("layers-missing", swap(5, lambda d: {k: v for k, v in d.items() if k != "gru"}), ValueError,
         "`layers` must map"),
        ("gru-weight", layer("gru", 0, lambda w: w[:, 1:]), ValueError, "`layers['gru'] weight` must have shape"),
        ("post-bias", layer("post_logits", 1, lambda b: b[1:]), ValueError, "`layers['post_logits'] bias`"),
        ("ln_w", swap(6, lambda t: t[1:]), ValueError, "`ln_w` must have shape [3*D]"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs_name_the_argument(case):
    _, make_bad, error, message = case
    m, args, noise = op_args()
    with torch.no_grad(), pytest.raises(error, match=re.escape(message)):
        obs_step_inference(*make_bad(args), noise=noise)


def test_bad_scalars_and_noise():
    m, args, noise = op_args()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"`noise` must have shape \[B, S\]"):
            obs_step_inference(*args, noise=noise[:, 1:])
        with pytest.raises(ValueError, match=r"`unimix` must be in \[0, 1\)"):
            obs_step_inference(*args, unimix=1.0)
        out = obs_step_inference(*args, noise=noise)
    assert out[1].shape == (2, S, m.classes)


def test_cpp_checks_name_the_argument():
    """C++ callers get the op's own checks (the backstop behind the Python wrapper)."""
    m, (deter, stoch, action, embed, keep, layers, ln_w, ln_b), noise = op_args()
    flat = [deter, stoch, action, embed, keep, *layers["img_in"], *layers["gru"], ln_w, ln_b, *layers["img_out"],
            *layers["prior_logits"], *layers["obs_out"], *layers["post_logits"]]
    seed = torch.zeros((), dtype=torch.int64)
    with torch.no_grad():
        bad = list(flat)
        bad[7] = bad[7][:, 1:]  # w_gru
        with pytest.raises(RuntimeError, match=r"`w_gru` must have shape \[3\*D, H \+ D\]"):
            torch.ops.dreamer_fast.obs_step_inference(*bad, noise, seed, 0.0, 1e-3)
        with pytest.raises(RuntimeError, match="`seed` must be a one-element int64 CPU tensor"):
            torch.ops.dreamer_fast.obs_step_inference(*flat, noise, seed.double(), 0.0, 1e-3)
