"""The agent's networks, world model, actor-critic and Agent: shapes, losses against hand-computed values, gradient
paths, slow critic, training steps, acting and checkpoints (tiny configs: these run on a shared 2-core machine)."""

from __future__ import annotations

import copy
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dreamer_fast as df
from conftest import assert_close_to_scale
from dreamer_fast.agent.agent import Agent
from dreamer_fast.agent.behavior import ActorCritic, actor_objective, critic_objective, return_weights
from dreamer_fast.config import load_config
from dreamer_fast.agent.nets import ELU, MLP, ActionHead, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, OneHotDist, \
    TruncNormalDist, conv2d_as_gemm
from dreamer_fast.agent.world_model import WorldModel, gaussian_loss, soft_bce_with_logits, symexp, symlog

IMAGE_SPACE = {"image": ((1, 64, 64), np.uint8)}
VECTOR_SPACE = {"vector": ((3,), np.float32)}
DISCRETE = SimpleNamespace(discrete=True, dim=3)
CONTINUOUS = SimpleNamespace(discrete=False, dim=1)
CASES = {
    "image-discrete": (IMAGE_SPACE, DISCRETE, "reinforce"),
    "vector-continuous": (VECTOR_SPACE, CONTINUOUS, "dynamics"),
}


def tiny_config(**overrides):
    values = dict(batch_size=2, batch_length=4, horizon=3)
    values.update(overrides)
    return load_config("debug", values)


def random_batch(obs_space, act_space, T=4, B=2, seed=0, terminal=True):
    rng = np.random.default_rng(seed)
    key = next(iter(obs_space))
    shape = obs_space[key][0]
    if key == "image":
        obs = rng.integers(0, 256, (T, B, *shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(T, B, *shape)).astype(np.float32)
    if act_space.discrete:
        action = np.eye(act_space.dim, dtype=np.float32)[rng.integers(0, act_space.dim, (T, B))]
    else:
        action = rng.uniform(-1, 1, (T, B, act_space.dim)).astype(np.float32)
    is_first = np.zeros((T, B), bool)
    is_first[0] = True
    action[is_first] = 0
    is_terminal = np.zeros((T, B), bool)
    if terminal:
        is_terminal[-1, 0] = True
    return {key: obs, "action": action, "reward": rng.normal(size=(T, B)).astype(np.float32) * 3,
            "is_first": is_first, "is_last": is_terminal.copy(), "is_terminal": is_terminal}


def make_agent(case, seed=0, **overrides):
    obs_space, act_space, actor_grad = CASES[case]
    torch.manual_seed(seed)
    return Agent(obs_space, act_space, tiny_config(actor_grad=actor_grad, **overrides)), obs_space, act_space


def params_of(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, module):
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())]


# ---- nets -----------------------------------------------------------------------------------------------------------


def test_conv_encoder_shape_and_init():
    enc = ConvEncoder(1, depth=48)
    assert enc.out_dim == 1536
    out = enc(torch.rand(2, 3, 1, 64, 64))
    assert out.shape == (2, 3, 1536)
    conv = enc.net[0]
    assert torch.count_nonzero(conv.bias) == 0
    fan_in, fan_out = 1 * 16, 48 * 16
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.8 * bound  # Xavier-uniform, not PyTorch's default (much smaller here)


def test_conv_decoder_shape():
    dec = ConvDecoder(20, out_channels=3, depth=4)
    out = dec(torch.randn(5, 2, 20))
    assert out.shape == (5, 2, 3, 64, 64)
    assert torch.count_nonzero(dec.linear.bias) == 0




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stride,bias", [(2, True), (1, False)])
@pytest.mark.parametrize("n,layout", [(1, "nchw"), (1, "channels_last"), (6, "nchw"), (6, "channels_last")])
def test_conv2d_as_gemm_matches_conv2d(stride, bias, dtype, n, layout):
    """n = 1: fewer patch rows (9 or 30) than output channels (40), the patches in the weight's order; n = 6: more
    (54 or 180), the channels-last patches and the permuted weight. Either from an NCHW or a channels-last input."""
    torch.manual_seed(0)
    x = torch.randn(n, 5, 9, 8, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(40, 5, 4, 4, dtype=dtype, requires_grad=True)
    b = torch.randn(40, dtype=dtype, requires_grad=True) if bias else None
    out, ref = conv2d_as_gemm(x, w, b, stride), F.conv2d(x, w, b, stride=stride)
    # Sums of up to 180 products of unit-variance values (magnitudes ~10), in another order than oneDNN's.
    close = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **close)
    g = torch.randn_like(ref)
    leaves = [x, w] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, r, **close)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_conv_encoder_matches_plain_convs(backend, channels, dtype):
    """The last conv runs as a GEMM (and on the fused backend the convs run channels-last, from 1 channel too); the
    encoder must equal its nn.Sequential of convs, values and gradients."""
    torch.manual_seed(0)
    enc = ConvEncoder(channels, depth=4, backend=backend).to(dtype)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    image = torch.rand(3, 2, channels, 64, 64, dtype=dtype)
    out = enc(image)
    ref = enc.forward_plain(image)
    assert ref.shape == (3, 2, enc.out_dim)
    close = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref, **close)
    g = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, list(enc.parameters()), g),
                    torch.autograd.grad(ref, list(enc.parameters()), g)):
        if dtype == torch.float64:
            torch.testing.assert_close(a, r)
        else:  # weight gradients sum thousands of products, in an order that depends on the conv kernel ISA picks
            assert_close_to_scale(a, r, **close)

def test_conv_decoder_matches_transposed_convs():
    """The first layer runs as a GEMM; it must equal the module's ConvTranspose2d applied to the 1x1 map, values
    and gradients (float64), with random biases so that the bias layout is checked too."""
    torch.manual_seed(0)
    dec = ConvDecoder(20, out_channels=3, depth=4).double()
    for p in dec.parameters():
        torch.nn.init.normal_(p, std=0.3)
    feat = torch.randn(5, 2, 20, dtype=torch.float64, requires_grad=True)
    out, ref = dec(feat), dec.forward_plain(feat)
    assert ref.shape == (5, 2, 3, 64, 64)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [feat, *dec.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [feat, *dec.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)

def test_mlps():
    mlp = MLP(7, 2, layers=3, units=16)
    assert mlp(torch.randn(4, 5, 7)).shape == (4, 5, 2)
    assert sum(isinstance(m, ELU) for m in mlp.modules()) == 3
    enc = MLPEncoder(7, layers=2, units=16)
    assert enc(torch.randn(3, 7)).shape == (3, enc.out_dim) == (3, 16)
    assert MLPDecoder(9, 7, 1, 8)(torch.randn(2, 9)).shape == (2, 7)


def test_onehot_dist():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    dist = OneHotDist(logits)
    sample = dist.sample()
    assert torch.equal(sample.detach().sum(-1), torch.ones(2))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    (sample * torch.tensor([1.0, 2.0])).sum().backward()  # straight-through: gradient of the probabilities
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    torch.testing.assert_close(dist.log_prob(torch.tensor([[0.0, 1.0], [1.0, 0.0]])),
                               torch.tensor([math.log(0.75), math.log(0.5)]))
    torch.testing.assert_close(dist.entropy()[1], torch.tensor(math.log(2.0)))
    assert torch.equal(dist.mode().detach(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_trunc_normal_density_entropy_and_samples():
    loc = torch.tensor([[0.3], [-0.8]], requires_grad=True)
    scale = torch.tensor([[0.5], [1.5]])
    dist = TruncNormalDist(loc, scale)
    grid = torch.linspace(-1, 1, 20001)[:, None, None].expand(-1, 2, 1)
    density = dist.log_prob(grid).exp()  # [G, 2]
    dx = 2 / 20000
    torch.testing.assert_close(torch.trapezoid(density, dx=dx, dim=0), torch.ones(2), atol=1e-3, rtol=0)
    numeric_entropy = torch.trapezoid(-density * density.log(), dx=dx, dim=0)
    torch.testing.assert_close(dist.entropy().detach(), numeric_entropy.detach(), atol=1e-3, rtol=0)
    torch.manual_seed(0)
    x = TruncNormalDist(loc.expand(2, 4000), scale.expand(2, 4000)).rsample()
    assert x.min() >= -1 and x.max() <= 1
    x.sum().backward()
    assert loc.grad is not None and loc.grad.abs().sum() > 0
    # Sample mean against the numeric mean of the density.
    mean = torch.trapezoid(density * grid[..., 0], dx=dx, dim=0)
    torch.testing.assert_close(x.detach().mean(-1), mean.detach(), atol=0.05, rtol=0)
    assert torch.equal(dist.mode().detach(), loc.detach())


def test_action_head_init_std():
    head = ActionHead(4, 2, "trunc_normal", 1, 8, min_std=0.1, init_std=1.0)
    dist = head.dist(torch.zeros(3, 4))
    torch.testing.assert_close(dist.scale, torch.full((3, 2), 1.0))
    torch.testing.assert_close(dist.loc, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="dist"):
        ActionHead(4, 2, "gaussian", 1, 8)


# ---- loss functions on hand-computed numbers ------------------------------------------------------------------------


def test_gaussian_loss_hand_computed():
    mean = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    # image 0: 0.5 * (1 + 4 + 0 + 1) = 3; image 1: 0.5 * 4 * 0.25 = 0.5; mean 1.75
    assert gaussian_loss(mean, target, event_dims=3).item() == pytest.approx(1.75)
    assert gaussian_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), 0).item() == pytest.approx(1.25)


def test_soft_bce_hand_computed():
    logits = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    target = torch.tensor([0.999, 0.5])
    expected = (math.log(2.0) + -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))) / 2
    assert soft_bce_with_logits(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_lambda_return_and_weights_hand_computed():
    reward = torch.tensor([[1.0], [2.0]])
    value = torch.tensor([[3.0], [4.0]])
    disc = torch.tensor([[0.5], [0.5]])
    # R1 = 2 + 0.5 * (0.5 * 5 + 0.5 * 5) = 4.5; R0 = 1 + 0.5 * (0.5 * 4 + 0.5 * 4.5) = 3.125
    ret = df.lambda_return(reward, value, disc, torch.tensor([5.0]), 0.5)
    torch.testing.assert_close(ret, torch.tensor([[3.125], [4.5]]))
    disc = torch.tensor([[0.5], [0.8], [0.9]], requires_grad=True)
    w = return_weights(disc)
    torch.testing.assert_close(w, torch.tensor([[1.0], [0.5], [0.4]]))
    assert not w.requires_grad


def _actor_inputs():
    log_prob = torch.tensor([[-1.0], [-2.0]], requires_grad=True)
    entropy = torch.tensor([[0.5], [0.25]])
    returns = torch.tensor([[3.0], [1.0]], requires_grad=True)
    baseline = torch.tensor([[1.0], [2.0]])
    weights = torch.tensor([[1.0], [0.5]])
    return log_prob, entropy, returns, baseline, weights


def test_actor_loss_reinforce_hand_computed():
    log_prob, entropy, returns, baseline, weights = _actor_inputs()
    loss = actor_objective(log_prob, entropy, returns, baseline, weights, rho=1.0, ent_scale=0.1)
    # t0: -1 * (3 - 1) + 0.1 * 0.5 = -1.95; t1: (-2 * (1 - 2) + 0.1 * 0.25) * 0.5 = 1.0125; -mean = 0.46875
    assert loss.item() == pytest.approx(0.46875)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-1.0], [0.25]]))  # -w * adv / 2
    assert returns.grad is None  # the advantage is stop-gradient


def test_actor_loss_dynamics_hand_computed():
    log_prob, entropy, returns, baseline, weights = _actor_inputs()
    loss = actor_objective(log_prob, entropy, returns, baseline, weights, rho=0.0, ent_scale=0.1)
    # t0: 3 + 0.05 = 3.05; t1: (1 + 0.025) * 0.5 = 0.5125; -mean = -1.78125
    assert loss.item() == pytest.approx(-1.78125)
    loss.backward()
    torch.testing.assert_close(returns.grad, torch.tensor([[-0.5], [-0.25]]))
    assert log_prob.grad is None


@pytest.mark.parametrize("rho", [1.0, 0.0])
def test_actor_loss_scaled_hand_computed(rho):
    """A return scale S divides the advantage (REINFORCE) or the return (dynamics), not the entropy bonus."""
    log_prob, entropy, returns, baseline, weights = _actor_inputs()
    loss = actor_objective(log_prob, entropy, returns, baseline, weights, rho=rho, ent_scale=0.1,
                           scale=torch.tensor(4.0))
    if rho:  # t0: -1 * 2 / 4 + 0.05 = -0.45; t1: (-2 * -1 / 4 + 0.025) * 0.5 = 0.2625; -mean = 0.09375
        assert loss.item() == pytest.approx(0.09375)
    else:  # t0: 3 / 4 + 0.05 = 0.8; t1: (1 / 4 + 0.025) * 0.5 = 0.1375; -mean = -0.46875
        assert loss.item() == pytest.approx(-0.46875)
    unscaled = actor_objective(*_actor_inputs(), rho=rho, ent_scale=0.1, scale=1.0)
    assert unscaled.item() == pytest.approx(0.46875 if rho else -1.78125)


def test_return_scale_percentile_ema():
    config = tiny_config(return_norm="percentile", return_norm_decay=0.9)
    ac = ActorCritic(10, DISCRETE, config)
    assert "return_range" in ac.state_dict()
    returns = torch.arange(101.0)  # 5th percentile 5, 95th 95
    scale = ac.return_scale(returns)
    torch.testing.assert_close(ac.return_range, torch.tensor([0.5, 9.5]))
    assert scale.item() == pytest.approx(9.0)
    scale = ac.return_scale(returns * 0.0)  # range shrinks by the decay only
    torch.testing.assert_close(ac.return_range, torch.tensor([0.45, 8.55]))
    assert scale.item() == pytest.approx(8.1)
    restored = ActorCritic(10, DISCRETE, config)
    restored.load_state_dict(ac.state_dict())  # checkpoints carry the running range
    assert restored.return_scale().item() == pytest.approx(8.1)
    small = ActorCritic(10, DISCRETE, config)
    assert small.return_scale(torch.linspace(0, 1, 50)).item() == 1.0  # never below 1: small returns stay as they are
    plain = ActorCritic(10, DISCRETE, tiny_config())
    assert plain.return_scale(returns) == 1.0 and "return_range" not in plain.state_dict()


def test_actor_critic_return_norm_in_loss():
    torch.manual_seed(0)
    config = tiny_config(return_norm="percentile")
    wm = WorldModel(VECTOR_SPACE, DISCRETE, config)
    ac = ActorCritic(wm.feat_size, DISCRETE, config)
    with torch.no_grad():
        ac.return_range.copy_(torch.tensor([-10.0, 30.0]))
    data = wm.preprocess(random_batch(VECTOR_SPACE, DISCRETE))
    _, post, _ = wm.loss(data)
    torch.manual_seed(1)
    _, _, metrics = ac.loss(wm, post.detach().flatten(), data["is_terminal"].reshape(-1))
    low, high = ac.return_range.tolist()
    assert metrics["actor/return_scale"] == pytest.approx(high - low, rel=1e-6)
    assert 0.99 * 40 - 1 < high - low < 0.99 * 40 + 1  # one EMA step from 40 with returns of a small range


def test_actor_unimix_floors_the_probabilities():
    config = tiny_config(actor_unimix=0.1)
    ac = ActorCritic(10, DISCRETE, config)
    probs = ac.actor.dist(torch.tensor([[50.0, -50.0, -50.0]])).probs
    torch.testing.assert_close(probs, torch.tensor([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]]))
    with pytest.raises(ValueError, match="actor_unimix"):
        ActorCritic(10, CONTINUOUS, config)
    with pytest.raises(ValueError, match="return_norm"):
        tiny_config(return_norm="max")
    with pytest.raises(ValueError, match="actor_unimix"):
        tiny_config(actor_unimix=1.5)


def test_critic_loss_hand_computed():
    value = torch.tensor([[1.0], [2.0]], requires_grad=True)
    returns = torch.tensor([[2.0], [0.0]], requires_grad=True)
    loss = critic_objective(value, returns, torch.tensor([[1.0], [0.5]]))
    assert loss.item() == pytest.approx((0.5 * 1 + 0.5 * 4 * 0.5) / 2)
    loss.backward()
    torch.testing.assert_close(value.grad, torch.tensor([[-0.5], [0.5]]))
    assert returns.grad is None


# ---- world model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_world_model_loss_terms(case):
    obs_space, act_space, _ = CASES[case]
    config = tiny_config(kl_scale=0.3, discount_scale=2.0, reward_scale=0.5)
    torch.manual_seed(0)
    wm = WorldModel(obs_space, act_space, config)
    data = wm.preprocess(random_batch(obs_space, act_space))
    key = wm.obs_key
    if key == "image":
        assert data["image"].dtype == torch.float32 and -0.5 <= data["image"].min() and data["image"].max() <= 0.5
    total, post, metrics = wm.loss(data)
    assert post.deter.shape[:2] == (4, 2)
    with torch.no_grad():
        feat = wm.rssm.get_feat(post)
        recon = wm.decode(feat)
        event = (2, 3, 4) if key == "image" else (2,)
        obs_loss = (0.5 * (recon - data[key]).square().sum(event)).mean()
        reward_loss = (0.5 * (wm.reward(feat)[..., 0] - torch.tanh(data["reward"])).square()).mean()
        y = 0.999 * (1 - data["is_terminal"].float())
        p = torch.sigmoid(wm.discount(feat)[..., 0])
        disc_loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert metrics[f"model/{key}_loss"] == pytest.approx(obs_loss.item(), rel=1e-5)
    assert metrics["model/reward_loss"] == pytest.approx(reward_loss.item(), rel=1e-5)
    assert metrics["model/discount_loss"] == pytest.approx(disc_loss.item(), rel=1e-5)
    terminal = data["is_terminal"]
    assert terminal.any() and not terminal.all()
    assert metrics["model/terminal_steps"] == terminal.sum().item()
    assert metrics["model/discount_terminal_mean"] == pytest.approx(p[terminal].mean().item(), rel=1e-5)
    assert metrics["model/discount_nonterminal_mean"] == pytest.approx(p[~terminal].mean().item(), rel=1e-5)
    expected = 0.3 * metrics["model/kl_loss"] + obs_loss + 0.5 * reward_loss + 2.0 * disc_loss
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_discount_terminal_metric_is_nan_without_terminal_steps():
    """A mean over no steps is NaN (a sparse metric: the logged mean leaves such updates out)."""
    obs_space, act_space, _ = CASES[next(iter(CASES))]
    wm = WorldModel(obs_space, act_space, tiny_config())
    _, _, metrics = wm.loss(wm.preprocess(random_batch(obs_space, act_space, terminal=False)))
    assert metrics["model/terminal_steps"].item() == 0.0 and metrics["model/discount_terminal_mean"].isnan()
    # <= set(metrics)
    assert 0.0 < metrics["model/discount_nonterminal_mean"].item() < 1.0


def test_symlog_hand_computed_and_round_trip():
    e1 = math.e - 1.0
    x = torch.tensor([-e1, -1e-4, 0.0, 1e-4, e1, 1e3, -2.4])
    y = symlog(x)
    torch.testing.assert_close(y[[0, 2, 4]], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(y[[1, 3]], torch.tensor([-1e-4, 1e-4]), rtol=1e-3, atol=0)  # slope 1 at 0
    assert y[5].item() == pytest.approx(math.log(1001.0), rel=1e-6)
    assert y[6].item() == pytest.approx(-math.log(3.4), rel=1e-6)
    torch.testing.assert_close(symexp(y), x, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(symlog(symexp(y)), y)


def test_vector_symlog_encodes_and_decodes_in_symlog_space():
    """``vector_symlog``: the encoder reads symlog(obs), the decoder's target is symlog(obs) and ``decode`` maps its
    output back with symexp; images are left alone."""
    obs_space, act_space = VECTOR_SPACE, CONTINUOUS
    batch = random_batch(obs_space, act_space)
    batch["vector"] = batch["vector"] * 5.0
    torch.manual_seed(0)
    plain = WorldModel(obs_space, act_space, tiny_config())
    torch.manual_seed(0)
    wm = WorldModel(obs_space, act_space, tiny_config(vector_symlog=True))
    data = wm.preprocess(batch)
    raw = torch.as_tensor(batch["vector"])
    torch.testing.assert_close(data["vector"], symlog(raw))
    torch.testing.assert_close(plain.preprocess(batch)["vector"], raw)
    _, post, metrics = wm.loss(data)
    with torch.no_grad():
        out = wm.decoder(wm.rssm.get_feat(post))
        expected = (0.5 * (out - symlog(raw)).square().sum(-1)).mean()
        torch.testing.assert_close(wm.decode(wm.rssm.get_feat(post)), symexp(out))
    assert metrics["model/vector_loss"] == pytest.approx(expected.item(), rel=1e-5)
    image = WorldModel(IMAGE_SPACE, DISCRETE, tiny_config(vector_symlog=True))
    image_batch = random_batch(IMAGE_SPACE, DISCRETE)
    torch.testing.assert_close(image.preprocess(image_batch)["image"],
                               torch.as_tensor(image_batch["image"]).float() / 255.0 - 0.5)


@pytest.mark.parametrize("weight", [1.0, 7.0])
def test_discount_terminal_weight_scales_the_terminal_terms(weight):
    """``discount_terminal_weight`` w: the discount loss is mean_t(w_t·BCE_t), w_t = w at terminal steps, else 1."""
    obs_space, act_space, _ = CASES["vector-continuous"]
    torch.manual_seed(0)
    wm = WorldModel(obs_space, act_space, tiny_config(discount_terminal_weight=weight))
    data = wm.preprocess(random_batch(obs_space, act_space))
    terminal = data["is_terminal"]
    assert terminal.sum().item() == 1
    _, post, metrics = wm.loss(data)
    with torch.no_grad():
        p = torch.sigmoid(wm.discount(wm.rssm.get_feat(post))[..., 0])
        y = 0.999 * (1 - terminal.float())
        bce = -(y * p.log() + (1 - y) * (1 - p).log())
        expected = torch.where(terminal, weight * bce, bce).mean()
    assert metrics["model/discount_loss"] == pytest.approx(expected.item(), rel=1e-5)
    if weight != 1.0:  # the terminal term carries weight: the loss differs from the unweighted one
        assert abs(expected - bce.mean()).item() > 1e-3 * bce.mean().item()


def test_open_loop_video():
    torch.manual_seed(0)
    wm = WorldModel(IMAGE_SPACE, DISCRETE, tiny_config())
    data = wm.preprocess(random_batch(IMAGE_SPACE, DISCRETE, T=5, B=3))
    video = wm.open_loop(data, context=2, n=2)
    assert video.shape == (5, 2 * 64, 3 * 64, 1) and video.dtype == np.uint8
    truth = ((data["image"][:, :2] + 0.5) * 255).round().to(torch.uint8)  # [T, n, C, 64, 64]
    np.testing.assert_array_equal(video[:, :64, :64, 0], truth[:, 0, 0].numpy())
    vec = WorldModel(VECTOR_SPACE, CONTINUOUS, tiny_config())
    assert vec.open_loop(vec.preprocess(random_batch(VECTOR_SPACE, CONTINUOUS))) is None


def test_world_model_rejects_bad_spaces():
    with pytest.raises(ValueError, match="image"):
        WorldModel({"image": ((1, 32, 32), np.uint8)}, DISCRETE, tiny_config())
    with pytest.raises(ValueError, match="exactly one"):
        WorldModel({"pixels": ((1, 64, 64), np.uint8)}, DISCRETE, tiny_config())
    with pytest.raises(TypeError, match="act_space"):
        WorldModel(IMAGE_SPACE, 3, tiny_config())


# ---- actor-critic ---------------------------------------------------------------------------------------------------


def test_slow_critic_copies_every_n_updates():
    torch.manual_seed(0)
    ac = ActorCritic(10, DISCRETE, tiny_config(slow_target_update=3))
    assert all(not p.requires_grad for p in ac.slow_critic.parameters())

    def same():
        return all(torch.equal(a, b) for a, b in zip(ac.critic.state_dict().values(),
                                                     ac.slow_critic.state_dict().values()))

    assert same()
    for update in range(1, 8):
        with torch.no_grad():
            for p in ac.critic.parameters():
                p.add_(0.1)
        copied = ac.update_slow_target()
        assert copied == (update % 3 == 0)
        assert same() == copied, update
    assert ac.updates == 7


@pytest.mark.parametrize("case", list(CASES))
def test_actor_critic_gradient_paths(case):
    """REINFORCE: no gradient reaches the world model; dynamics: the actor loss reaches it through the imagined
    states; the critic loss never does."""
    obs_space, act_space, actor_grad = CASES[case]
    torch.manual_seed(0)
    config = tiny_config(actor_grad=actor_grad)
    wm = WorldModel(obs_space, act_space, config)
    ac = ActorCritic(wm.feat_size, act_space, config)
    data = wm.preprocess(random_batch(obs_space, act_space))
    _, post, _ = wm.loss(data)
    start = post.detach().flatten()
    actor_loss, critic_loss, metrics = ac.loss(wm, start, data["is_terminal"].reshape(-1))
    assert math.isfinite(actor_loss.item()) and math.isfinite(critic_loss.item())
    critic_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.grad is None for p in ac.actor.parameters())
    assert all(p.grad is not None for p in ac.critic.parameters())
    assert all(p.grad is None for p in ac.slow_critic.parameters())
    actor_loss.backward()
    assert all(p.grad is not None for p in ac.actor.parameters())
    reached = [n for n, p in wm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    if actor_grad == "reinforce":
        assert reached == []
    else:
        assert any(n.startswith("rssm.") for n in reached) and any(n.startswith("reward.") for n in reached)


def test_actor_critic_first_discount_from_is_terminal():
    torch.manual_seed(0)
    config = tiny_config(horizon=2, discount=0.9)
    wm = WorldModel(VECTOR_SPACE, DISCRETE, config)
    ac = ActorCritic(wm.feat_size, DISCRETE, config)
    start = wm.rssm.initial(4)
    terminal = torch.tensor([True, False, True, False])
    with torch.no_grad():
        # Discount head outputs 0 logits everywhere: sigmoid 0.5 after the first step.
        for p in wm.discount.parameters():
            p.zero_()
        _, _, metrics = ac.loss(wm, start, terminal)
    # disc rows: [0.9 * (1 - terminal)], then 0.5, 0.5: mean = (0.45 + 0.5 + 0.5) / 3
    assert metrics["imag/discount"] == pytest.approx((0.45 + 0.5 + 0.5) / 3, rel=1e-6)


# ---- Agent ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_updates_everything(case):
    agent, obs_space, act_space = make_agent(case)
    before = {name: params_of(m) for name, m in (("wm", agent.wm), ("actor", agent.ac.actor),
                                                 ("critic", agent.ac.critic))}
    metrics = agent.train_step(random_batch(obs_space, act_space))
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and v.dtype == torch.float32 and not v.requires_grad
               for v in metrics.values()), metrics
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    for key in ("model/kl", "model/reward_loss", "model/discount_loss", "actor/loss", "critic/loss",
                "model/grad_norm", "actor/grad_norm", "critic/grad_norm"):
        assert key in metrics
    assert metrics["train/updates"] == 1.0
    assert changed(before["wm"], agent.wm)
    assert changed(before["actor"], agent.ac.actor)
    assert changed(before["critic"], agent.ac.critic)


@pytest.mark.parametrize("case", list(CASES))
def test_behavior_update_leaves_world_model_alone(case):
    agent, obs_space, act_space = make_agent(case)
    data = agent.wm.preprocess(random_batch(obs_space, act_space))
    post, _ = agent.train_model(data)
    wm_before = params_of(agent.wm)
    actor_before = params_of(agent.ac.actor)
    agent.model_opt.zero_grad(set_to_none=True)
    agent.train_behavior(post.detach().flatten(), data["is_terminal"].reshape(-1))
    assert changed(wm_before, agent.wm) == []
    assert all(p.grad is None for p in agent.wm.parameters())
    assert changed(actor_before, agent.ac.actor)


@pytest.mark.parametrize("case", list(CASES))
def test_policy_modes_and_is_first(case):
    agent, obs_space, act_space = make_agent(case)
    batch = random_batch(obs_space, act_space, T=2, B=2)
    key = agent.wm.obs_key
    obs0 = {key: batch[key][0], "is_first": np.array([True, True])}
    for mode in ("explore", "eval", "random"):
        action, state = agent.policy(obs0, None, mode)
        assert action.shape == (2, act_space.dim) and action.dtype == np.float32
        if act_space.discrete:
            np.testing.assert_array_equal(action.sum(-1), 1.0)
            assert set(np.unique(action)) <= {0.0, 1.0}
        else:
            assert np.all(np.abs(action) <= 1.0)
        assert (state is None) == (mode == "random")
    with pytest.raises(ValueError, match="mode"):
        agent.policy(obs0, None, "greedy")
    # is_first resets a row to the initial state: its deter matches a fresh start, the other row's does not.
    _, state = agent.policy(obs0, None, "eval")
    obs1 = {key: batch[key][1], "is_first": np.array([True, False])}
    _, (carried, _) = agent.policy(obs1, state, "eval")
    _, (fresh, _) = agent.policy({**obs1, "is_first": np.array([True, True])}, None, "eval")
    torch.testing.assert_close(carried.deter[0], fresh.deter[0])
    assert not torch.allclose(carried.deter[1], fresh.deter[1])


@pytest.mark.parametrize("case", list(CASES))
def test_checkpoint_round_trip(case):
    agent, obs_space, act_space = make_agent(case, seed=0)
    batch = random_batch(obs_space, act_space)
    agent.train_step(batch)
    buffer = io.BytesIO()
    torch.save(agent.checkpoint_state(), buffer)
    buffer.seek(0)
    other, _, _ = make_agent(case, seed=1)
    other.load_checkpoint_state(torch.load(buffer, weights_only=False))
    assert other.updates == agent.updates == 1
    key = agent.wm.obs_key
    obs = {key: batch[key][0], "is_first": np.array([True, True])}
    outs = []
    for a in (agent, other):
        torch.manual_seed(123)
        action, (latent, _) = a.policy(obs, None, "eval")
        outs.append((action, latent))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1].deter, outs[1][1].deter, rtol=0, atol=0)
    # The optimisers' state came along too: the next update is the same.
    metrics = []
    for a in (agent, other):
        torch.manual_seed(7)
        metrics.append({k: v.item() for k, v in a.train_step(batch).items()})
    assert metrics[0] == pytest.approx(metrics[1], rel=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_train_step_is_finite(case):
    agent, obs_space, act_space = make_agent(case, bf16=True)
    before = params_of(agent.wm)
    metrics = agent.train_step(random_batch(obs_space, act_space))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert changed(before, agent.wm)
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    action, _ = agent.policy({agent.wm.obs_key: random_batch(obs_space, act_space)[agent.wm.obs_key][0],
                              "is_first": np.array([True, False])}, None, "explore")
    assert np.all(np.isfinite(action))


def test_bf16_agent_acts_in_float32_on_cpu():
    """Acting skips autocast on the CPU (config.bf16 is about training): the same weights act exactly as float32."""
    agent, obs_space, act_space = make_agent("image-discrete", bf16=True)
    plain, _, _ = make_agent("image-discrete")
    plain.load_state_dict(agent.state_dict())
    obs = {"image": random_batch(obs_space, act_space)["image"][0], "is_first": np.array([True, False])}
    latents = []
    for a in (agent, plain):
        torch.manual_seed(5)
        action, state = a.policy(obs, None, "explore")
        action, (latent, _) = a.policy({**obs, "is_first": np.array([False, False])}, state, "explore")
        latents.append((action, latent))
    np.testing.assert_array_equal(latents[0][0], latents[1][0])
    assert latents[0][1].logits.dtype == torch.float32 and latents[0][1].deter.abs().max() > 0
    for field in ("deter", "logits"):
        torch.testing.assert_close(getattr(latents[0][1], field), getattr(latents[1][1], field), rtol=0, atol=0)


def test_slow_target_through_train_steps():
    agent, obs_space, act_space = make_agent("vector-continuous", slow_target_update=2)
    batch = random_batch(obs_space, act_space)
    agent.train_step(batch)
    slow = copy.deepcopy(agent.ac.slow_critic.state_dict())
    assert not all(torch.equal(v, agent.ac.critic.state_dict()[k]) for k, v in slow.items())
    agent.train_step(batch)
    assert all(torch.equal(v, agent.ac.critic.state_dict()[k]) for k, v in agent.ac.slow_critic.state_dict().items())
