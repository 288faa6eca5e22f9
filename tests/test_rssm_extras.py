"""RSSM beyond eager equality: torch.compile(fullgraph=True) and float64 gradcheck of the fused backend.

Straight-through samples and finite differences: a sample is one-hot, so its value is locally constant in the
logits while its (straight-through) gradient is that of the probabilities. gradcheck's numerical Jacobian therefore
never sees the straight-through path. The step checks leave the sample out of the outputs (nothing inside a step
reads it) and check its gradient separately; the sequence check replays each step's one-hot with the fused op's
probabilities added, ``onehot0 + probs - probs0`` (the same value at the point, and a derivative equal to the
straight-through gradient), so finite differences and autograd mean the same function.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dreamer_fast import RSSM, RSSMState

pytestmark = pytest.mark.skipif(
    not __import__("dreamer_fast").has_kernel("ln_gru", "cpu"), reason="the compiled extension is not loaded"
)


# ---- torch.compile(fullgraph=True) --------------------------------------------------------------------------------

CA, CE, CD, CH, CS, CK = 3, 5, 32, 32, 4, 4  # action, embed, deter, hidden, stoch, classes
CT, CB = 6, 3


def compile_model() -> RSSM:
    torch.manual_seed(0)
    return RSSM(CA, CE, deter=CD, hidden=CH, stoch=CS, classes=CK, backend="fused")


def compile_data():
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(CT, CB, CE, generator=g).requires_grad_()
    action = F.one_hot(torch.randint(CA, (CT, CB), generator=g), CA).float().requires_grad_()
    is_first = torch.zeros(CT, CB, dtype=torch.bool)
    is_first[0] = True
    is_first[3, 1] = True  # a reset inside the sequence
    noise = torch.rand(CT, CB, CS, generator=g)
    return embed, action, is_first, noise


def compiled_equals_eager(fn, args, wrt, compile_backend):
    """fn compiled with fullgraph=True (raises on any graph break) gives eager's value and gradients."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend=compile_backend)
    got = compiled(*args)
    want = fn(*args)
    # aot_eager runs the same kernels, but a compiled loop's weight gradients are autograd's per-step sums (no
    # SequenceLinear); inductor also fuses the elementwise chains: float32 summation-order tolerances
    tol = dict(rtol=1e-5, atol=1e-6) if compile_backend == "aot_eager" else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"compiled value differs from eager: {m}")
    got_grads = torch.autograd.grad(got, wrt)
    want_grads = torch.autograd.grad(want, wrt)
    assert any(g.abs().sum() > 0 for g in want_grads), "the loss reaches no input: the gradient check is vacuous"
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"gradient {i}: compiled differs from eager: {m}")


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_observe_compiles_fullgraph_and_matches_eager(compile_backend):
    """The whole fused observe (the C++ observe_sequence op, its fake kernel, the prior head) in one graph."""
    m = compile_model()
    embed, action, is_first, noise = compile_data()

    def loss_fn(embed, action, is_first, noise):
        post, prior = m.observe(embed, action, is_first, noise=noise)
        loss, kl = m.kl_loss(post, prior)
        return loss + kl.mean() + m.get_feat(post).square().mean() + prior.stoch.square().mean()

    compiled_equals_eager(loss_fn, (embed, action, is_first, noise), [embed, action, *m.parameters()],
                          compile_backend)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_steps_compile_fullgraph_and_match_eager(compile_backend):
    """obs_step, img_step (its SequenceLinear GEMMs) and kl_loss: the fused ops' fake kernels and autograd formulas
    trace without graph breaks."""
    m = compile_model()
    embed, action, is_first, noise = compile_data()
    state = m.observe(embed, action, is_first, noise=noise)[0].at(2).detach()
    state = state._replace(deter=state.deter.requires_grad_())

    def loss_fn(deter, stoch, logits, action, embed, is_first, noise):
        post, prior = m.obs_step(RSSMState(deter, stoch, logits), action, embed, is_first, noise=noise)
        img = m.img_step(post, action, noise=noise)
        loss, kl = m.kl_loss(post, prior)
        return loss + kl.mean() + img.deter.square().mean() + (img.stoch * img.logits.detach()).mean()

    args = (*state, action[3], embed[3], is_first[3], noise[3])
    compiled_equals_eager(loss_fn, args, [state.deter, embed, *m.parameters()], compile_backend)


# ---- gradcheck (float64) ------------------------------------------------------------------------------------------

A, E, D, H, S, K = 2, 3, 4, 4, 2, 3
B = 2


def tiny_model() -> RSSM:
    torch.manual_seed(0)
    m = RSSM(A, E, deter=D, hidden=H, stoch=S, classes=K, backend="fused").double()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so every parameter's gradient is exercised
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


class Method(torch.nn.Module):
    """``forward`` = one of the RSSM's methods, so that torch.func.functional_call can run it on given parameters."""

    def __init__(self, rssm: RSSM, method: str) -> None:
        super().__init__()
        self.rssm, self.method = rssm, method

    def forward(self, *args, **kwargs):
        return getattr(self.rssm, self.method)(*args, **kwargs)


def call(m: RSSM, method: str, params: dict[str, torch.Tensor], *args, **kwargs):
    """``m.<method>(*args, **kwargs)`` with ``params`` (name -> tensor) in place of the module's parameters."""
    return functional_call(Method(m, method), {f"rssm.{k}": v for k, v in params.items()}, args, kwargs, strict=True)


def leaves(m: RSSM, *inputs: torch.Tensor):
    """Names of the parameters, and float64 leaves requiring grad: the inputs, then every parameter."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    return names, [x.detach().clone().requires_grad_() for x in inputs] + params


def assert_noise_clear_of_boundaries(logits: torch.Tensor, noise: torch.Tensor, margin: float = 1e-3) -> None:
    cdf = logits.detach().softmax(-1).cumsum(-1)[..., :-1]
    gap = (cdf - noise[..., None]).abs().min().item()
    assert gap > margin, f"noise within {gap:.1e} of a cdf boundary: a finite-difference step could flip a sample"


def step_data():
    g = torch.Generator().manual_seed(2)
    deter = torch.randn(B, D, generator=g, dtype=torch.float64)
    stoch = torch.rand(B, S, K, generator=g, dtype=torch.float64)  # soft, so d/dstoch is checked at a generic point
    action = torch.randn(B, A, generator=g, dtype=torch.float64)
    embed = torch.randn(B, E, generator=g, dtype=torch.float64)
    noise = torch.rand(B, S, generator=g, dtype=torch.float64)
    return deter, stoch, action, embed, noise


IS_FIRST = torch.tensor([0.0, 1.0], dtype=torch.float64)  # one row continues, one resets


def test_gradcheck_obs_step():
    """Every output but the sample (nothing inside the step reads it), w.r.t. state, action, embed, parameters."""
    m = tiny_model()
    deter, stoch, action, embed, noise = step_data()
    names, inputs = leaves(m, deter, stoch, action, embed)

    def obs_step(deter, stoch, action, embed, *params):
        state = RSSMState(deter, stoch, torch.zeros_like(stoch))
        post, prior = call(m, "obs_step", dict(zip(names, params)), state, action, embed, IS_FIRST, noise=noise)
        return post.deter, post.logits, prior.logits, prior.stoch

    assert_noise_clear_of_boundaries(obs_step(*inputs)[1], noise)
    assert torch.autograd.gradcheck(obs_step, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_img_step():
    m = tiny_model()
    deter, stoch, action, _, noise = step_data()
    names, inputs = leaves(m, deter, stoch, action)
    used = {"img_in", "gru", "gru_norm", "img_out", "prior_logits"}
    grad_names = [n for n in names if n.split(".")[0] in used]
    fixed = {n: p.detach() for n, p in m.named_parameters() if n not in grad_names}
    inputs = inputs[:3] + [x for n, x in zip(names, inputs[3:]) if n in grad_names]

    def img_step(deter, stoch, action, *params):
        state = RSSMState(deter, stoch, torch.zeros_like(stoch))
        out = call(m, "img_step", {**fixed, **dict(zip(grad_names, params))}, state, action, noise=noise)
        return out.deter, out.logits

    assert_noise_clear_of_boundaries(img_step(*inputs)[1], noise)
    assert torch.autograd.gradcheck(img_step, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("method", ["obs_step", "img_step"])
def test_sample_gradient_is_the_probabilities_gradient(method):
    """The piece gradcheck cannot see: d sample = d probs (straight-through), through the whole fused step."""
    m = tiny_model()
    deter, stoch, action, embed, noise = step_data()
    names, inputs = leaves(m, deter, stoch, action)
    deter, stoch, action = inputs[:3]
    state = RSSMState(deter, stoch, torch.zeros_like(stoch))
    if method == "obs_step":
        out, _ = m.obs_step(state, action, embed, IS_FIRST, noise=noise)
    else:
        out = m.img_step(state, action, noise=noise)
    w = torch.randn(out.stoch.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    wrt = [deter, stoch, action, *m.parameters()]
    got = torch.autograd.grad((out.stoch * w).sum(), wrt, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad((out.logits.softmax(-1) * w).sum(), wrt, allow_unused=True)
    assert torch.equal(out.stoch.detach(), F.one_hot(out.stoch.detach().argmax(-1), K).double()), "not one-hot"
    assert sum(g.abs().sum() for g in got if g is not None) > 0
    for name, a, b in zip(["deter", "stoch", "action", *names], got, want):
        if a is None or b is None:
            assert a is None and b is None, f"d{name}: one of the two gradients is missing"
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda msg, n=name: f"d{n}: {msg}")


class FrozenSamples:
    """Replaces ``sample`` on an RSSM's backend object. ``record``: the fused op's samples as they are. ``replay``: each
    step's recorded one-hot plus the fused op's probabilities minus the recorded ones, ``onehot0 + probs - probs0``:
    the recorded value at the recorded point, and a derivative equal to the straight-through gradient, so that
    finite differences see the straight-through path too."""

    def __init__(self, m: RSSM) -> None:
        self.m, self.original = m, m._impl.sample
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mode, self.step = "record", 0

    def __call__(self, logits, noise):
        sample, probs = self.original(logits, noise)
        if self.mode == "record":
            self.recorded.append((sample.detach(), probs.detach()))
            return sample, probs
        onehot0, probs0 = self.recorded[self.step % len(self.recorded)]
        self.step += 1
        assert torch.equal(sample.detach(), onehot0), "a finite-difference step flipped a sample"
        return onehot0 + probs - probs0, probs


def test_gradcheck_observe():
    """A short observe (T=3, a reset in one row at t=1) w.r.t. embed, action, the start state, parameters. The fused
    observe samples inside the C++ observe_sequence op, out of FrozenSamples' reach, so: gradcheck the reference
    observe with its samples frozen, then require the fused observe's gradients to equal the reference's."""
    T = 3
    m = tiny_model()
    g = torch.Generator().manual_seed(4)
    embed = torch.randn(T, B, E, generator=g, dtype=torch.float64)
    action = torch.randn(T, B, A, generator=g, dtype=torch.float64)
    noise = torch.rand(T, B, S, generator=g, dtype=torch.float64)
    is_first = torch.tensor([[0, 0], [0, 1], [0, 0]], dtype=torch.bool)
    deter0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    stoch0 = torch.rand(B, S, K, generator=g, dtype=torch.float64)
    names, inputs = leaves(m, embed, action, deter0, stoch0)
    m.backend = "reference"
    frozen = FrozenSamples(m)
    m._impl.sample = frozen

    def observe(embed, action, deter0, stoch0, *params):
        state = RSSMState(deter0, stoch0, torch.zeros_like(stoch0))
        post, prior = call(m, "observe", dict(zip(names, params)), embed, action, is_first, state=state, noise=noise)
        return post.deter, post.stoch, post.logits, prior.logits, prior.stoch

    post_logits = observe(*inputs)[2]
    assert len(frozen.recorded) == T, (
        f"the reference observe drew {len(frozen.recorded)} samples through its backend's sample, expected {T}: it "
        f"samples some other way now; update FrozenSamples")
    assert_noise_clear_of_boundaries(post_logits, noise)
    frozen.mode = "replay"
    assert torch.autograd.gradcheck(observe, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)

    del m._impl.sample  # the class's sampler again
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in observe(*inputs)]
    grads = {}
    for backend in ("reference", "fused"):
        m.backend = backend
        outs = observe(*inputs)
        grads[backend] = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), inputs)
    for name, a, b in zip(["embed", "action", "deter0", "stoch0", *names], grads["fused"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("used", ["both", "left", "right"])
def test_split_columns_gradient_matches_slicing(used):
    """observe's column split of img_in/obs_out: values are views of the weight; the gradient is autograd's."""
    from dreamer_fast.rssm.fused import split_columns as _split_columns

    torch.manual_seed(0)
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    grads = []
    for split in (_split_columns, lambda w, at: (w[:, :at], w[:, at:])):
        left, right = split(w, 3)
        assert left.shape == (5, 3) and right.shape == (5, 4)
        assert torch.equal(left, w[:, :3]) and torch.equal(right, w[:, 3:])
        loss = 0.0
        if used in ("both", "left"):
            loss = loss + left.square().sum()
        if used in ("both", "right"):
            loss = loss + (x @ right.t()).sin().sum()
        grads.append(torch.autograd.grad(loss, w)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda w: sum(p.sin().sum() for p in _split_columns(w, 2)), (w,))


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
def test_imagine_names_the_policy_output_of_a_wrong_dtype(backend, dtype):
    """A policy that returns actions of another dtype than the RSSM's is reported as the policy's output."""
    m = RSSM(action_dim=3, embed_dim=8, deter=16, hidden=16, stoch=4, classes=4, backend=backend)
    with pytest.raises(TypeError, match=r"policy\(feat\)` has dtype torch\." + str(dtype).split(".")[1]):
        m.imagine(lambda feat: torch.zeros(feat.shape[0], 3, dtype=dtype), m.initial(5), 2)
