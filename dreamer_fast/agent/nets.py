"""DreamerV2's networks: MLP, convolutional encoder/decoder, vector encoder/decoder, and the action distributions.

Every Linear/Conv layer is initialised as Keras does by default (DreamerV2's): Xavier-uniform weights, zero biases.
Images are channels-first ``[..., C, 64, 64]``; any number of leading dims (e.g. ``[T, B]``) is accepted.

Distributions compute in float32 whatever the dtype of their inputs (under bf16 autocast the networks' outputs
are cast up first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast import _backend
from dreamer_fast.ops.elu import elu
from dreamer_fast.ops.linear import linear
from dreamer_fast.ops.straight_through_categorical import straight_through_categorical
from dreamer_fast.reference.philox import PhiloxStream


def init_keras_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases on every Linear / Conv / ConvTranspose inside ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def conv2d_as_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, backend: str | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride)`` (no padding) as one GEMM over the input's patches.

    The patches are a strided view of ``x``, copied once into ``[N·Ho·Wo, k·k·C]``; worth it when the output map is
    small (few patches), where oneDNN's float32 conv is slow. ``x [N, C, H, W]``, ``weight [Co, C, k, k]`` ->
    ``[N, Co, Ho, Wo]`` (a channels-last view).

    The GEMM needs the patches' values in the weight's order. Many patches (training, N = 800): the patches in
    channels-last order (contiguous runs of C values) and the weight permuted to match. Fewer patch rows than output
    channels (acting, N = 1): the patches in the weight's own (C, kh, kw) order, so the weight is a free view; at
    B = 1 permuting DreamerV2's last encoder weight (4.7 MB) each call was 0.6 of the layer's 0.8 ms (measured on an
    AMD EPYC Zen 5, 2 threads). At N = 800 that order's gather measured ~4% slower, hence both.
    """
    n, c, h, w = x.shape
    c_out, _, k, _ = weight.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    if n * ho * wo < c_out:
        s_n, s_c, s_h, s_w = x.stride()
        patches = x.as_strided((n, ho, wo, c, k, k), (s_n, stride * s_h, stride * s_w, s_c, s_h, s_w))
        wmat = weight.reshape(c_out, c * k * k)
    else:
        xh = x.permute(0, 2, 3, 1).contiguous()
        s_n, s_h, s_w, s_c = xh.stride()
        patches = xh.as_strided((n, ho, wo, k, k, c), (s_n, stride * s_h, stride * s_w, s_h, s_w, s_c))
        # The weight as [Co, (kh, kw, C)], read transposed by the GEMM. (Permuting it straight to [(kh, kw, C), Co]
        # is a copy ~20x slower: it transposes the whole tensor, 10 ms for DreamerV2's last encoder layer.)
        wmat = weight.permute(0, 2, 3, 1).reshape(c_out, k * k * c)
    patches = patches.reshape(n * ho * wo, k * k * c)
    y = linear(patches, wmat, bias, backend=backend)
    return y.view(n, ho, wo, c_out).permute(0, 3, 1, 2)


class Linear(nn.Linear):
    """``nn.Linear`` whose product is the fused :func:`dreamer_fast.ops.linear.linear` (oneDNN for float32 on CPUs
    that are not Intel, our GEMV at a few rows), ``F.linear`` on the reference backend or under autocast. Same
    parameters and state dict as ``nn.Linear``. ``[..., in_features] -> [..., out_features]``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, backend: str | None = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, backend=self.backend)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x [N, C, H, W]`` in channels-last strides, also for C = 1 (whose NCHW strides torch counts as channels-last
    too; oneDNN's conv then keeps NCHW). The fused encoder runs channels-last on the CPU: with the fused ELU keeping
    the layout, oneDNN's convs need no layout copies; forward and backward over 800 frames took 450-470 ms against
    537 ms in NCHW (measured on an AMD EPYC Zen 5, 2 threads). The reference backend stays NCHW, as plain PyTorch
    code would be."""
    n, c, h, w = x.shape
    return x.contiguous(memory_format=torch.channels_last).as_strided(x.shape, (h * w * c, 1, w * c, c))


class ELU(nn.Module):
    """DreamerV2's activation as a layer: the fused :func:`dreamer_fast.elu` (its backward reads only the output),
    or ``F.elu`` in place on the reference backend (whose backward also reads only the output). Either way the
    preceding layer's output need not be kept for the backward."""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _backend.resolve(self.backend) == "reference":
            return F.elu(x, inplace=True)
        return elu(x, backend=self.backend)


class MLP(nn.Module):
    """``layers`` hidden Linear(units) + ELU, then a Linear to ``out_dim`` (no activation).

    ``[..., in_dim] -> [..., out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int, backend: str | None = None) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            mods += [Linear(dim, units, backend=backend), ELU(backend)]
            dim = units
        mods.append(Linear(dim, out_dim, backend=backend))
        self.net = nn.Sequential(*mods)
        self.in_dim, self.out_dim = in_dim, out_dim
        init_keras_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvEncoder(nn.Module):
    """DreamerV2's image encoder: 4 convs (kernel 4, stride 2, valid), depths ``depth·(1, 2, 4, 8)``, ELU, flatten.

    ``[..., C, 64, 64] float -> [..., out_dim]`` with ``out_dim = 8·depth·2·2`` (1536 for depth 48).
    """

    def __init__(self, in_channels: int, depth: int = 48, image_size: int = 64, backend: str | None = None) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        channels, size = in_channels, image_size
        for mult in (1, 2, 4, 8):
            mods += [nn.Conv2d(channels, mult * depth, kernel_size=4, stride=2), ELU(backend)]
            channels, size = mult * depth, (size - 4) // 2 + 1
        self.net = nn.Sequential(*mods)
        self.out_dim = channels * size * size
        self.backend = backend
        init_keras_(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:])
        if x.device.type == "cpu" and _backend.resolve(self.backend) != "reference":
            x = _channels_last(x)
        x = self.net[:-2](x)
        # The last conv (6x6 -> 2x2 at 64x64 inputs) runs as one GEMM over its 4 patches per image: ~2x faster
        # forward+backward than oneDNN's conv in float32 on CPU at these shapes; same parameters, same maths.
        x = self.net[-1](conv2d_as_gemm(x, self.net[-2].weight, self.net[-2].bias, stride=2, backend=self.backend))
        return x.reshape(*lead, self.out_dim)

    def forward_plain(self, image: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` through the plain ``nn.Conv2d`` layers (the reference the tests and benchmarks compare
        with)."""
        lead = image.shape[:-3]
        return self.net(image.reshape(-1, *image.shape[-3:])).reshape(*lead, self.out_dim)


class ConvDecoder(nn.Module):
    """DreamerV2's image decoder: Linear ``feat -> 32·depth`` as a 1x1 map, transposed convs (kernels 5, 5, 6, 6,
    stride 2) with depths ``depth·(4, 2, 1)`` then ``out_channels``, ELU between.

    ``[..., feat_size] -> [..., out_channels, 64, 64]``: the mean of a unit-variance Gaussian over ``obs/255 - 0.5``.
    """

    def __init__(self, feat_size: int, out_channels: int, depth: int = 48, backend: str | None = None) -> None:
        super().__init__()
        self.depth, self.out_channels, self.backend = depth, out_channels, backend
        self.linear = Linear(feat_size, 32 * depth, backend=backend)
        chans = [32 * depth, 4 * depth, 2 * depth, depth, out_channels]
        mods: list[nn.Module] = []
        for i, kernel in enumerate((5, 5, 6, 6)):
            mods.append(nn.ConvTranspose2d(chans[i], chans[i + 1], kernel_size=kernel, stride=2))
            if i < 3:
                mods.append(ELU(backend))
        self.net = nn.Sequential(*mods)
        init_keras_(self)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat).reshape(-1, 32 * self.depth)
        # The first transposed conv sees a 1x1 map: out[n, c, i, j] = b[c] + sum_k x[n, k] W[k, c, i, j], i.e. one
        # GEMM [N, 32·depth] @ [32·depth, C·5·5]. oneDNN's transposed conv takes ~8x longer for it in float32 on CPU
        # (0.92 s vs 0.11 s fwd+bwd over 800 frames, docs/PERFORMANCE.md); same parameters, same maths.
        first = self.net[0]
        c_in, c_out, k, _ = first.weight.shape
        x = linear(x, first.weight.reshape(c_in, c_out * k * k).t(), first.bias.repeat_interleave(k * k),
                   backend=self.backend)
        x = self.net[1:](x.view(-1, c_out, k, k))  # 5 -> 13 -> 30 -> 64
        return x.reshape(*lead, *x.shape[1:])

    def forward_plain(self, feat: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` through the plain ``nn.ConvTranspose2d`` layers (the reference the tests and benchmarks
        compare with)."""
        lead = feat.shape[:-1]
        x = self.net(self.linear(feat).reshape(-1, 32 * self.depth, 1, 1))
        return x.reshape(*lead, *x.shape[1:])


class MLPEncoder(nn.Module):
    """Vector observations: ``layers`` x (Linear(units) + ELU). ``[..., in_dim] -> [..., out_dim = units]``."""

    def __init__(self, in_dim: int, layers: int, units: int, backend: str | None = None) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(max(layers, 1)):
            mods += [Linear(dim, units, backend=backend), ELU(backend)]
            dim = units
        self.net = nn.Sequential(*mods)
        self.out_dim = units
        init_keras_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(MLP):
    """Vector observations: the mean of a unit-variance Gaussian. ``[..., feat_size] -> [..., out_dim]``."""


# ---- action distributions --------------------------------------------------------------------------------------------


class OneHotDist:
    """Categorical over ``K`` classes, samples as one-hot vectors with DreamerV2's straight-through gradient.

    Args:
        logits: ``[..., K]`` (computed in float32).
        unimix: uniform mixture weight of the probabilities (0 in DreamerV2).
    """

    def __init__(self, logits: torch.Tensor, unimix: float = 0.0, backend: str | None = None,
                 stream: PhiloxStream | None = None) -> None:
        logits = logits.float()
        if unimix > 0:
            probs = (1 - unimix) * logits.softmax(-1) + unimix / logits.shape[-1]
            logits = probs.log()
        self.logits = logits
        self.unimix = unimix
        self.backend = backend  # of the straight-through sampling op (None: $DREAMER_FAST_BACKEND, else auto)
        self.stream = stream  # the samples' Philox stream (None: a seed from torch's default generator per sample)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    def sample(self) -> torch.Tensor:
        """``[..., K]`` one-hot with the gradient of the probabilities (``onehot + probs - sg(probs)``)."""
        sample, _ = straight_through_categorical(self.logits, 0.0, backend=self.backend, stream=self.stream)
        return sample

    rsample = sample

    def mode(self) -> torch.Tensor:
        """One-hot of the most likely class, with the straight-through gradient of the probabilities."""
        probs = self.probs
        onehot = F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).to(probs.dtype)
        return onehot + (probs - probs.detach())

    def log_prob(self, onehot: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` one-hot -> ``[...]``."""
        return (onehot.float() * self.logits.log_softmax(-1)).sum(-1)

    def entropy(self) -> torch.Tensor:
        """``[...]`` exact entropy."""
        logp = self.logits.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)


_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def _ndtr(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / _SQRT2))


class TruncNormalDist:
    """A normal ``N(loc, scale)`` truncated to ``[low, high]``, independent over the last dim (the action dims).

    Sampling is by inverse CDF, so :meth:`rsample` is differentiable in ``loc`` and ``scale``. Samples are kept
    ``clip`` inside the bounds with a straight-through clamp (as DreamerV2's ``TruncNormalDist``). The entropy is the
    closed form. All in float32.

    Args:
        loc, scale: ``[..., A]``.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, low: float = -1.0, high: float = 1.0,
                 clip: float = 1e-6) -> None:
        self.loc, self.scale = loc.float(), scale.float()
        self.low, self.high, self.clip = low, high, clip
        self._alpha = (low - self.loc) / self.scale
        self._beta = (high - self.loc) / self.scale
        self._cdf_alpha, self._cdf_beta = _ndtr(self._alpha), _ndtr(self._beta)
        # |loc| < 1 keeps the interval around the mean, so Z stays well away from 0 for scale >= min_std.
        self._z = (self._cdf_beta - self._cdf_alpha).clamp_min(1e-8)

    def rsample(self) -> torch.Tensor:
        """``[..., A]`` reparameterised sample in ``[low + clip, high - clip]``."""
        u = torch.rand_like(self.loc)
        p = (self._cdf_alpha + u * self._z).clamp(1e-7, 1 - 1e-7)
        x = self.loc + self.scale * torch.special.ndtri(p)
        clipped = x.clamp(self.low + self.clip, self.high - self.clip)
        return x + (clipped - x).detach()

    sample = rsample

    def mode(self) -> torch.Tensor:
        """The mode: ``loc`` clamped to the bounds (``[..., A]``)."""
        clipped = self.loc.clamp(self.low + self.clip, self.high - self.clip)
        return self.loc + (clipped - self.loc).detach()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., A] -> [...]``: summed over the action dims."""
        z = (x.float() - self.loc) / self.scale
        logp = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) - self.scale.log() - self._z.log()
        return logp.sum(-1)

    def entropy(self) -> torch.Tensor:
        """``[...]``: ``log(sqrt(2 pi e) scale Z) + (alpha phi(alpha) - beta phi(beta)) / (2 Z)``, summed over dims."""
        phi = lambda t: torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)  # noqa: E731
        a, b = self._alpha, self._beta
        ent = _LOG_SQRT_2PI_E + self.scale.log() + self._z.log() + (a * phi(a) - b * phi(b)) / (2 * self._z)
        return ent.sum(-1)


class ActionHead(nn.Module):
    """The actor's output layer and distribution: ``feat [..., in_dim] -> raw [..., P] -> dist``.

    - ``onehot``: ``P = A`` logits; :class:`OneHotDist`.
    - ``trunc_normal``: ``P = 2A``, ``(mu, s)``; ``loc = tanh(mu)``,
      ``scale = 2·sigmoid(s/2 + b) + min_std`` on ``[-1, 1]``, with the constant ``b`` chosen so that ``s = 0`` gives
      ``init_std`` (DreamerV2: ``2·sigmoid(s/2) + min_std``; the offset makes the ``actor_init_std`` config mean
      something; the scale lies in ``(min_std, 2 + min_std)``, and an ``init_std`` outside that range is clamped
      into it).
    """

    def __init__(self, in_dim: int, action_dim: int, dist: str, layers: int, units: int,
                 min_std: float = 0.1, init_std: float = 1.0, unimix: float = 0.0, backend: str | None = None) -> None:
        super().__init__()
        if dist not in ("onehot", "trunc_normal"):
            raise ValueError(f"ActionHead: `dist` must be 'onehot' or 'trunc_normal', got {dist!r}")
        self.dist_name, self.action_dim = dist, action_dim
        self.min_std, self.unimix, self.backend = min_std, unimix, backend
        self.stream: PhiloxStream | None = None  # the one-hot samples' Philox stream (None: torch's generator)
        frac = min(max((init_std - min_std) / 2.0, 1e-3), 1 - 1e-3)
        self.std_offset = math.log(frac / (1 - frac))
        out = action_dim if dist == "onehot" else 2 * action_dim
        self.mlp = MLP(in_dim, out, layers, units, backend)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[..., P]`` (turned into a distribution by :meth:`dist`)."""
        return self.mlp(feat)

    def dist(self, raw: torch.Tensor) -> OneHotDist | TruncNormalDist:
        raw = raw.float()
        if self.dist_name == "onehot":
            return OneHotDist(raw, self.unimix, self.backend, self.stream)
        mu, s = raw.chunk(2, -1)
        scale = 2 * torch.sigmoid(s / 2 + self.std_offset) + self.min_std
        return TruncNormalDist(torch.tanh(mu), scale)


__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "MLPEncoder", "MLPDecoder", "OneHotDist", "TruncNormalDist",
           "ActionHead", "init_keras_"]
