"""RSSM: fused backend against the reference backend (states, samples, gradients), API, bad input, autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tol

from dreamer_fast import RSSM, RSSMState

A, E, D, H, S, K = 3, 7, 16, 16, 4, 5  # small sizes: action, embed, deter, hidden, stoch, classes
KEYS = [
    f"{layer}.{p}"
    for layer in ("img_in", "gru", "gru_norm", "img_out", "prior_logits", "obs_out", "post_logits")
    for p in ("weight", "bias")
]


def model(dtype=torch.float64, device="cpu", unimix=0.0, seed=0, backend=None) -> RSSM:
    torch.manual_seed(seed)
    m = RSSM(A, E, deter=D, hidden=H, stoch=S, classes=K, unimix=unimix, backend=backend).to(device, dtype)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so their gradients are checked for real
        m.gru_norm.weight.add_(0.1 * torch.randn_like(m.gru_norm.weight))
        m.gru_norm.bias.add_(0.1 * torch.randn_like(m.gru_norm.bias))
    return m


def sequence(T, B, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(T, B, E, generator=g, dtype=dtype).to(device).requires_grad_()
    action = F.one_hot(torch.randint(A, (T, B), generator=g), A).to(device, dtype).requires_grad_()
    is_first = torch.zeros(T, B, dtype=torch.bool, device=device)
    is_first[0] = True
    if T > 30:
        is_first[17, 1] = True
        is_first[31, :] = True
    noise = torch.rand(T, B, S, generator=g, dtype=dtype).to(device)
    return embed, action, is_first, noise


def run_observe(m, backend, embed, action, is_first, noise, state=None):
    """observe + a loss touching every output; returns the states and the gradients of every input/parameter."""
    m.backend = backend
    post, prior = m.observe(embed, action, is_first, state=state, noise=noise)
    loss, kl = m.kl_loss(post, prior)
    feat = m.get_feat(post)
    total = loss + kl.mean() + (feat * torch.linspace(-1, 1, feat.shape[-1], dtype=feat.dtype, device=feat.device)).sum() / 100
    total = total + (prior.stoch * prior.logits.detach()).sum() / 100
    inputs = [embed, action, *m.parameters()]
    if state is not None:
        inputs += [t for t in state if t.requires_grad]
    return post, prior, torch.autograd.grad(total, inputs)


def assert_states_close(a: RSSMState, b: RSSMState, **kw):
    for name, x, y in zip(RSSMState._fields, a, b):
        torch.testing.assert_close(x, y, **kw, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("unimix", [0.0, 0.01])
def test_observe_fused_matches_reference(dtype, unimix, device):
    m = model(dtype, device, unimix)
    data = sequence(50, 4, dtype, device)
    post_r, prior_r, grads_r = run_observe(m, "reference", *data)
    post_f, prior_f, grads_f = run_observe(m, "fused", *data)
    assert torch.equal(post_f.stoch.detach().round(), post_r.stoch.detach().round()), "samples differ"
    assert_states_close(post_f, post_r, **tol(dtype))
    assert_states_close(prior_f, prior_r, **tol(dtype))
    names = ["embed", "action", *(n for n, _ in m.named_parameters())]
    loose = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else tol(dtype)
    for name, a, b in zip(names, grads_f, grads_r):
        torch.testing.assert_close(a, b, **loose, msg=lambda msg, n=name: f"d{n}: {msg}")


def test_observe_from_a_given_state_with_gradient():
    m = model()
    embed, action, is_first, noise = sequence(6, 3)
    is_first[0] = False
    start = model(seed=5).observe(embed, action, is_first)[0].at(-1).detach()
    state = start._replace(deter=start.deter.requires_grad_(), stoch=start.stoch.requires_grad_())  # logits: unused
    post_r, _, grads_r = run_observe(m, "reference", embed, action, is_first, noise, state)
    post_f, _, grads_f = run_observe(m, "fused", embed, action, is_first, noise, state)
    assert_states_close(post_f, post_r, **tol(torch.float64))
    assert grads_r[-1].abs().sum() > 0 and grads_r[-2].abs().sum() > 0  # the start state gets gradients
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b, **tol(torch.float64))


def test_samples_follow_the_noise():
    """stoch is the one-hot of the smallest k with noise < cumsum(probs)[k]."""
    m = model(backend="fused")
    embed, action, is_first, noise = sequence(8, 5)
    post, _ = m.observe(embed, action, is_first, noise=noise)
    cdf = post.logits.softmax(-1).cumsum(-1)
    want = (noise[..., None] >= cdf).sum(-1).clamp(max=K - 1)
    assert torch.equal(post.stoch.detach().argmax(-1), want)
    torch.testing.assert_close(post.stoch.detach().sum(-1), torch.ones(8, 5, S, dtype=torch.float64))


def test_is_first_resets_state_and_action():
    """A sequence with a reset at t continues exactly as a fresh sequence started at t."""
    m = model(backend="fused")
    embed, action, is_first, noise = sequence(12, 2)
    is_first[7] = True
    post, prior = m.observe(embed, action, is_first, noise=noise)
    action2 = action.detach().clone()
    action2[7] = 123.0  # the action before a reset is ignored
    fresh_post, fresh_prior = m.observe(embed[7:], action2[7:], is_first[7:], noise=noise[7:])
    assert_states_close(post.at(slice(7, None)), fresh_post, rtol=0, atol=1e-14)
    assert_states_close(prior.at(slice(7, None)), fresh_prior, rtol=0, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_steps_equal_observe(backend):
    """observe is obs_step in a loop; the prior's deter/logits are img_step's."""
    m = model(backend=backend)
    embed, action, is_first, noise = sequence(6, 3)
    post, prior = m.observe(embed, action, is_first, noise=noise)
    state = m.initial(3)
    for t in range(6):
        p, q = m.obs_step(state, action[t], embed[t], is_first[t], noise=noise[t])
        assert_states_close(p, post.at(t), rtol=0, atol=1e-13)
        assert_states_close(q, prior.at(t), rtol=0, atol=1e-13)
        if t > 0:
            img = m.img_step(state, action[t], noise=noise[t])
            torch.testing.assert_close(img.deter, prior.deter[t], rtol=0, atol=1e-13)
            torch.testing.assert_close(img.logits, prior.logits[t], rtol=0, atol=1e-13)
        state = p


def act_steps(m: RSSM, backend: str, steps: int = 5, prior: bool = True) -> RSSMState:
    """``steps`` acting steps at B = 1 under no_grad on one backend; the posteriors stacked over time."""
    embed, action, is_first, noise = (x.detach().float() for x in sequence(steps, 1))
    m.backend = backend
    state, states = m.initial(1), []
    with torch.no_grad():
        for t in range(steps):
            state, prior_state = m.obs_step(state, action[t], embed[t], is_first[t], noise=noise[t], prior=prior)
            assert (prior_state is None) != prior
            states.append(state)
    assert not any(x.requires_grad for x in state)
    return RSSMState.stack(states)


def test_policy_step_no_grad_b1():
    """The acting path: B = 1, no autograd; both backends agree and nothing requires grad."""
    m = model(torch.float32)
    assert_states_close(act_steps(m, "fused"), act_steps(m, "reference"), **tol(torch.float32))


class Policy(torch.nn.Module):
    """feat -> straight-through one-hot action, deterministic given its noise."""

    def __init__(self, dtype):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(D + S * K, 8), torch.nn.ELU(), torch.nn.Linear(8, A)).to(dtype)
        self.noise = iter(())

    def forward(self, feat):
        probs = self.net(feat).softmax(-1)
        u = next(self.noise)
        index = (u[:, None] >= probs.cumsum(-1)).sum(-1).clamp(max=A - 1)
        return F.one_hot(index, A).to(probs.dtype) + probs - probs.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_imagine_fused_matches_reference(dtype):
    m = model(dtype)
    policy = Policy(dtype)
    embed, action, is_first, noise = sequence(3, 4, dtype)
    start = m.observe(embed, action, is_first, noise=noise)[0]  # [3, 4]: flattened to 12 starts
    g = torch.Generator().manual_seed(3)
    horizon = 6
    img_noise = torch.rand(horizon, 12, S, generator=g, dtype=dtype)
    act_noise = torch.rand(horizon, 12, generator=g, dtype=dtype)
    results = {}
    for backend in ("reference", "fused"):
        m.backend = backend
        policy.noise = iter(act_noise)
        states, actions = m.imagine(policy, start, horizon, noise=img_noise, return_actions=True)
        assert states.batch_shape == (horizon + 1, 12) and actions.shape == (horizon, 12, A)
        feat = m.get_feat(states)
        loss = (feat * torch.linspace(-1, 1, feat.shape[-1], dtype=dtype)).sum()
        params = [*m.parameters(), *policy.parameters()]
        results[backend] = (states, torch.autograd.grad(loss, [embed, *params], retain_graph=True))
    assert_states_close(results["fused"][0], results["reference"][0], **tol(dtype))
    loose = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else tol(dtype)
    for a, b in zip(results["fused"][1], results["reference"][1]):
        torch.testing.assert_close(a, b, **loose)
    # the start is state 0, and the policy's gradient path reaches the world model (dynamics backprop)
    assert_states_close(results["fused"][0].at(0), start.flatten(), rtol=0, atol=0)
    assert results["fused"][1][0].abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_imagine_with_action_is_img_step_in_a_loop(backend):
    m = model(backend=backend)
    embed, action, is_first, noise = sequence(4, 3)
    start = m.observe(embed, action, is_first, noise=noise)[0].at(-1)
    acts = action.detach()
    states = m.imagine_with_action(acts, start, noise=noise)
    assert states.batch_shape == (4, 3)
    state = start
    for t in range(4):
        state = m.img_step(state, acts[t], noise=noise[t])
        assert_states_close(states.at(t), state, rtol=0, atol=1e-13)


def test_imagine_with_action_backends_agree():
    m = model()
    embed, action, is_first, noise = sequence(5, 3)
    start = m.observe(embed, action, is_first, noise=noise)[0].at(-1)
    m.backend = "reference"
    ref = m.imagine_with_action(action, start, noise=noise)
    m.backend = "fused"
    fused = m.imagine_with_action(action, start, noise=noise)
    assert_states_close(fused, ref, **tol(torch.float64))


def test_state_dict_round_trip_between_backends():
    fused = model(torch.float32, backend="fused")
    assert sorted(fused.state_dict()) == sorted(KEYS)
    ref = RSSM(A, E, deter=D, hidden=H, stoch=S, classes=K, backend="reference")
    ref.load_state_dict(fused.state_dict())
    embed, action, is_first, noise = (x.detach().float() for x in sequence(10, 2))
    assert_states_close(
        ref.observe(embed, action, is_first, noise=noise)[0],
        fused.observe(embed, action, is_first, noise=noise)[0],
        **tol(torch.float32),
    )


def test_noise_none_is_reproducible_across_backends():
    m = model()
    embed, action, is_first, _ = sequence(7, 2)
    out = {}
    for backend in ("reference", "fused"):
        m.backend = backend
        torch.manual_seed(42)
        out[backend] = m.observe(embed, action, is_first)[0]
    assert_states_close(out["fused"], out["reference"], **tol(torch.float64))


def test_default_sizes_shapes_and_init():
    m = RSSM(18, 1536)
    assert (m.deter_size, m.hidden_size, m.stoch_size, m.classes, m.unimix) == (600, 600, 32, 32, 0.0)
    assert m.feat_size == 1624 and m.gru.weight.shape == (1800, 1200) and m.img_in.weight.shape == (600, 1042)
    for name, p in m.named_parameters():
        if name.startswith("gru_norm"):
            continue
        if name.endswith("bias"):
            assert torch.equal(p, torch.zeros_like(p)), name
        else:
            bound = (6 / (p.shape[0] + p.shape[1])) ** 0.5  # Xavier-uniform
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, name
    T, B = 2, 3
    with torch.no_grad():
        post, prior = m.observe(torch.randn(T, B, 1536), torch.zeros(T, B, 18), torch.ones(T, B, dtype=torch.bool))
        assert post.deter.shape == (T, B, 600) and post.stoch.shape == (T, B, 32, 32)
        assert prior.logits.shape == (T, B, 32, 32)
        assert m.get_feat(post).shape == (T, B, 1624)
        states = m.imagine(lambda f: torch.zeros(f.shape[0], 18), post, 4)
        assert states.batch_shape == (5, T * B)
        assert m.img_step(m.initial(B), torch.zeros(B, 18)).stoch.shape == (B, 32, 32)


def test_empty_sequence_and_horizon():
    m = model(backend="fused")
    post, prior = m.observe(torch.zeros(0, 2, E, dtype=torch.float64), torch.zeros(0, 2, A, dtype=torch.float64),
                            torch.zeros(0, 2, dtype=torch.bool))
    assert post.deter.shape == (0, 2, D) and prior.stoch.shape == (0, 2, S, K)
    states, actions = m.imagine(lambda f: f[:, :A], m.initial(2), 0, return_actions=True)
    assert states.batch_shape == (1, 2) and actions.shape == (0, 2, A)
    assert m.imagine_with_action(torch.zeros(0, 2, A, dtype=torch.float64), m.initial(2)).batch_shape == (0, 2)


def test_kl_loss_is_dreamerv2s():
    m = model()
    embed, action, is_first, noise = sequence(5, 3)
    post, prior = m.observe(embed, action, is_first, noise=noise)
    loss, kl = m.kl_loss(post, prior, balance=0.8, free=0.0)
    q = torch.distributions.Categorical(logits=post.logits)
    p = torch.distributions.Categorical(logits=prior.logits)
    want = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl, want)
    torch.testing.assert_close(loss, want.mean())
    big_free, _ = m.kl_loss(post, prior, free=1e6)
    assert big_free.item() == 1e6
    # balance: the prior gets balance, the posterior 1 - balance of the gradient
    d_post, d_prior = torch.autograd.grad(m.kl_loss(post, prior, balance=0.8)[0], [post.logits, prior.logits])
    d_post_kl, d_prior_kl = torch.autograd.grad(want.mean(), [post.logits, prior.logits])
    torch.testing.assert_close(d_prior, 0.8 * d_prior_kl)


def test_state_helpers():
    m = model()
    embed, action, is_first, noise = sequence(4, 3)
    post, _ = m.observe(embed, action, is_first, noise=noise)
    assert post.batch_shape == (4, 3)
    assert post.at(2).batch_shape == (3,) and post.at((slice(None), 1)).batch_shape == (4,)
    assert_states_close(RSSMState.stack([post.at(t) for t in range(4)]), post, rtol=0, atol=0)
    assert_states_close(RSSMState.cat([post.at(slice(0, 1)), post.at(slice(1, None))]), post, rtol=0, atol=0)
    assert post.flatten().batch_shape == (12,)
    assert not any(x.requires_grad for x in post.detach())
    assert post.to(torch.float32).deter.dtype == torch.float32
    deter, stoch, logits = post  # still a tuple
    assert stoch.shape == (4, 3, S, K)


def test_autocast_bf16_cpu_runs_and_stays_close():
    m = model(torch.float32)
    embed, action, is_first, noise = (x.detach().float() for x in sequence(6, 3))
    for backend in ("reference", "fused"):
        m.backend = backend
        want = m.observe(embed, action, is_first, noise=noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m.observe(embed, action, is_first, noise=noise)
            loss, _ = m.kl_loss(*got)
            imagined = m.imagine(lambda f: f[:, :A].softmax(-1), got[0], 3, noise=noise[:3].repeat(1, 6, 1))
            loss = loss + m.get_feat(imagined).float().square().mean()
        loss.backward()
        assert imagined.deter.dtype == torch.float32
        for state in got:  # states and distributions stay float32 (LayerNorm-GRU and logits in float32)
            assert all(x.dtype == torch.float32 and torch.isfinite(x).all() for x in state)
        # the first step, before samples can differ: bf16 GEMMs, loose tolerance
        torch.testing.assert_close(got[0].deter[0], want[0].deter[0], rtol=0.05, atol=0.05)
        torch.testing.assert_close(got[0].logits[0], want[0].logits[0], rtol=0.1, atol=0.1)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        m.zero_grad()


def test_backend_selection(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        RSSM(A, E, backend="fast")
    m = model()
    with pytest.raises(ValueError, match="backend must be one of"):
        m.backend = "gpu"
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "reference")
    m.backend = None  # $DREAMER_FAST_BACKEND is read when the backend is resolved
    assert type(m._impl).__name__ == "Reference"
    embed, action, is_first, noise = sequence(3, 2)
    m.observe(embed, action, is_first, noise=noise)
    monkeypatch.setenv("DREAMER_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="DREAMER_FAST_BACKEND"):
        m.backend = None
    with pytest.raises(ValueError, match="DREAMER_FAST_BACKEND"):
        model()
    assert type(m._impl).__name__ == "Reference"  # the failed assignment changed nothing
    m.observe(embed, action, is_first, noise=noise)


def _f64(*shape, **kw):
    return torch.zeros(*shape, dtype=kw.pop("dtype", torch.float64), **kw)


def _bad_observe_cases():
    T, B = 5, 2
    ok = dict(embed=_f64(T, B, E), action=_f64(T, B, A), is_first=torch.zeros(T, B, dtype=torch.bool))
    bad_state = RSSMState(_f64(B, D + 1), _f64(B, S, K), _f64(B, S, K))
    cases = [
        ("embed size", dict(embed=_f64(T, B, E + 1)), ValueError,
         "`embed` must be [T, B, embed_dim] with embed_dim = 7"),
        ("embed 2d", dict(embed=_f64(T, E)), ValueError, "`embed` must be [T, B, embed_dim]"),
        ("action size", dict(action=_f64(T, B, A + 2)), ValueError,
         "`action` must have shape [T, B, action_dim] = [5, 2, 3], got [5, 2, 5]"),
        ("T mismatch", dict(action=_f64(T - 1, B, A)), ValueError,
         "`action` must have shape [T, B, action_dim] = [5, 2, 3], got [4, 2, 3]"),
        ("is_first", dict(is_first=torch.zeros(T, B + 1, dtype=torch.bool)), ValueError,
         "`is_first` must have shape [T, B]"),
        ("dtype", dict(embed=_f64(T, B, E, dtype=torch.float32)), TypeError,
         "`embed` has dtype torch.float32 but the RSSM's parameters are torch.float64"),
        ("int action", dict(action=_f64(T, B, A, dtype=torch.long)), TypeError, "`action` has dtype torch.int64"),
        ("not a tensor", dict(action=[[0.0]]), TypeError, "`action` must be a torch.Tensor"),
        ("embed not a tensor", dict(embed=None), TypeError, "`embed` must be a torch.Tensor"),
        ("noise", dict(noise=_f64(T, B, S + 1)), ValueError, "`noise` must have shape [T, B, S] = [5, 2, 4]"),
        ("state", dict(state=bad_state), ValueError, "`state.deter` must have shape [B, D] = [2, 16]"),
        ("device", dict(embed=_f64(T, B, E, device="meta")), ValueError, "`embed` is on meta"),
    ]
    return ok, cases


@pytest.mark.parametrize("case", _bad_observe_cases()[1], ids=[c[0] for c in _bad_observe_cases()[1]])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_bad_observe_inputs(case, backend):
    ok, _ = _bad_observe_cases()
    _, change, exc, match = case
    args = {**ok, **change}
    m = model(backend=backend)
    escaped = match.replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(exc, match=f"RSSM.observe: {escaped}"):
        m.observe(**args)


def test_bad_step_inputs():
    m = model()
    state, act, emb, first = m.initial(2), _f64(2, A), _f64(2, E), torch.zeros(2)
    with pytest.raises(ValueError, match=r"RSSM.obs_step: `embed` must have shape \[B, embed_dim\]"):
        m.obs_step(state, act, emb[:, 1:], first)
    with pytest.raises(ValueError, match=r"RSSM.obs_step: `prev_state.stoch` must have shape \[B, S, K\]"):
        m.obs_step(state._replace(stoch=state.stoch[:1]), act, emb, first)
    with pytest.raises(ValueError, match=r"RSSM.img_step: `prev_action` must be \[B, action_dim\]"):
        m.img_step(state, act[0])
    with pytest.raises(ValueError, match=r"RSSM.img_step: `noise` must have shape \[B, S\]"):
        m.img_step(state, act, noise=torch.rand(2, S + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"RSSM.imagine: `policy` must return a \[N, action_dim\]"):
        m.imagine(lambda f: f, state, 2)
    with pytest.raises(ValueError, match="`horizon` must be an int >= 0"):
        m.imagine(lambda f: f[:, :A], state, -1)
    with pytest.raises(ValueError, match=r"RSSM.imagine_with_action: `action` must be a \[H, B, action_dim\]"):
        m.imagine_with_action(act, state)
    with pytest.raises(TypeError, match="`start` must be an RSSMState"):
        m.imagine_with_action(act[None], "state")
    with pytest.raises(ValueError, match="`deter` must be a positive int"):
        RSSM(A, E, deter=0)
    with pytest.raises(ValueError, match="`unimix` must be a number in"):
        RSSM(A, E, unimix=1.5)


def test_fused_weight_gradients_over_part_of_the_sequence_and_twice():
    """The fused backend sums each loop weight's gradient over the steps in one GEMM: steps the loss does not reach
    contribute nothing, and a second backward (retain_graph) gives the same gradients."""
    m = model()
    embed, action, is_first, noise = sequence(9, 3)
    grads = {}
    for backend in ("reference", "fused"):
        m.backend = backend
        post, _ = m.observe(embed, action, is_first, noise=noise)
        loss = m.get_feat(post)[:5].square().sum() + post.logits[2].sum()
        first = torch.autograd.grad(loss, [embed, *m.parameters()], retain_graph=True, allow_unused=True)
        second = torch.autograd.grad(loss, [embed, *m.parameters()], allow_unused=True)
        for a, b in zip(first, second):
            assert (a is None and b is None) or torch.equal(a, b)
        grads[backend] = first
    for a, b in zip(grads["fused"], grads["reference"]):
        if a is None and b is None:
            continue
        if a is None or b is None:  # a zero gradient where the other has none
            assert (a if a is not None else b).abs().sum() == 0
        else:
            torch.testing.assert_close(a, b, **tol(torch.float64))



@pytest.mark.parametrize("rows", [5, 300])
def test_sequence_linear_under_autocast_matches_autocast_addmm(rows):
    """Under bf16 autocast: bf16 GEMMs forward and backward (as autocast's addmm), the weight cast once, the
    per-step weight gradients summed in float32 -- the same numbers as autograd through autocast's addmm."""
    from dreamer_fast.rssm.sequence_linear import SequenceLinear

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, generator=g, requires_grad=True)
    bias = torch.randn(6, generator=g, requires_grad=True)
    x0 = torch.randn(rows, 4, generator=g, requires_grad=True)

    want = torch.autograd.grad(_autocast_unroll(lambda: lambda b, x: torch.addmm(b, x, weight.t()), bias, x0),
                               [weight, bias, x0])
    got = torch.autograd.grad(_autocast_unroll(lambda: SequenceLinear(weight), bias, x0), [weight, bias, x0])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def _autocast_unroll(make_linear, bias, x0):
    """Four steps of a recurrent Linear (made under bf16 autocast by ``make_linear()``, called as ``linear(bias, x)``)
    fed with tanh of its own output; a loss on the first three (the last step reaches no loss)."""
    width = x0.shape[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear = make_linear()
        x, outs = x0, []
        for _ in range(4):
            y = linear(bias, x)
            assert y.dtype == torch.bfloat16
            outs.append(y.float())
            x = y.float().tanh().repeat(1, width // y.shape[1] + 1)[:, :width]
    return sum((o * (i + 1)).sum() for i, o in enumerate(outs[:3]))


@pytest.mark.parametrize("shape", [(16, 24), (6, 4)], ids=["tiled", "untiled"])
@pytest.mark.parametrize("rows", [8, 5])
def test_sequence_linear_transposed_weight_gradient_under_autocast(monkeypatch, shape, rows):
    """The large-weight path under autocast (forced here on small shapes): each step's backward writes its output
    gradient transposed into one buffer (tile by tile where the sizes allow) and the sink runs one bf16 GEMM over all
    the steps. Against autograd through autocast's addmm (which rounds each step's product instead)."""
    from dreamer_fast.rssm import sequence_linear as _sequence_linear
    from dreamer_fast.rssm.sequence_linear import SequenceLinear

    monkeypatch.setattr(_sequence_linear, "_TRANSPOSED_MIN_NUMEL", 0)
    g = torch.Generator().manual_seed(1)
    out, inp = shape
    weight = torch.randn(out, inp, generator=g, requires_grad=True)
    bias = torch.randn(out, generator=g, requires_grad=True)
    x0 = torch.randn(rows, inp, generator=g, requires_grad=True)

    linear = None

    def make():
        nonlocal linear
        linear = SequenceLinear(weight)
        return linear

    got = torch.autograd.grad(_autocast_unroll(make, bias, x0), [weight, bias, x0])
    assert linear._record.transposed and linear._record.dyt is None  # used, and freed by the sink
    want = torch.autograd.grad(_autocast_unroll(lambda: lambda b, x: torch.addmm(b, x, weight.t()), bias, x0),
                               [weight, bias, x0])
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == torch.float32
        # One bf16 rounding of the per-step products apart: relative to the gradient's scale (sums cancel).
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2 * b.abs().max().item())


@pytest.mark.parametrize("rows", [5, 300], ids=["concatenated", "accumulated"])
def test_sequence_linear_weight_gradient(rows):
    """The fused loop's Linear: one weight gradient for all steps, equal to autograd's per-step sum."""
    from dreamer_fast.rssm.sequence_linear import SequenceLinear

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(rows, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def unroll(linear):
        x, outs = x0, []
        for _ in range(4):
            y = linear(bias, x)
            outs.append(y)
            x = y[:, :4].tanh()
        return sum((o * (i + 1)).sum() for i, o in enumerate(outs[:3]))  # the last step reaches no loss

    want = torch.autograd.grad(unroll(lambda b, x: torch.addmm(b, x, weight.t())), [weight, bias, x0])
    got = torch.autograd.grad(unroll(SequenceLinear(weight)), [weight, bias, x0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
