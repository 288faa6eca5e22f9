"""DreamerV2's world model: encoder, RSSM, decoder and the reward and discount heads, with their losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast.config import Config
from dreamer_fast.agent.nets import MLP, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from dreamer_fast.rssm import RSSM, RSSMState

ObsSpace = Mapping[str, tuple[tuple[int, ...], Any]]
# Metrics that are NaN in an update whose batch has none of the steps they average over; a mean of them over several
# updates leaves those updates out (and is absent when every one lacks them).
SPARSE_METRICS = frozenset({"model/discount_terminal_mean", "model/discount_nonterminal_mean"})


class ActionSpaceLike(Protocol):
    """Anything with ``discrete: bool`` and ``dim: int`` (e.g. ``dreamer_fast.envs.ActionSpace``)."""

    discrete: bool
    dim: int


def obs_key(obs_space: ObsSpace) -> str:
    """``"image"`` or ``"vector"``: the observation this agent models (ValueError if neither or both)."""
    keys = [k for k in ("image", "vector") if k in obs_space]
    if len(keys) != 1:
        raise ValueError(f"obs_space must have exactly one of the keys 'image' (C, 64, 64) or 'vector' (n,), got "
                         f"{sorted(obs_space)}")
    shape = tuple(obs_space[keys[0]][0])
    if keys[0] == "image" and (len(shape) != 3 or shape[1:] != (64, 64)):
        raise ValueError(f"obs_space['image'] must have shape (C, 64, 64), got {shape}")
    if keys[0] == "vector" and len(shape) != 1:
        raise ValueError(f"obs_space['vector'] must have shape (n,), got {shape}")
    return keys[0]


def check_act_space(act_space: object) -> ActionSpaceLike:
    if not hasattr(act_space, "discrete") or not hasattr(act_space, "dim"):
        raise TypeError(f"act_space must have `discrete` and `dim` attributes, got {type(act_space).__name__}")
    if isinstance(act_space.dim, bool) or not isinstance(act_space.dim, int) or act_space.dim < 1:
        raise ValueError(f"act_space.dim must be a positive int, got {act_space.dim!r}")
    return act_space  # type: ignore[return-value]


def to_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)


def gaussian_loss(mean: torch.Tensor, target: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Negative log-likelihood of a unit-variance Gaussian without its constant: ``0.5·sum((mean - target)²)`` over
    the last ``event_dims`` dims, averaged over the rest. Float32."""
    sq = (mean.float() - target.float()).square()
    if event_dims:
        sq = sq.flatten(-event_dims).sum(-1)
    return 0.5 * sq.mean()


def soft_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """``-mean(w·(y·log σ(l) + (1 - y)·log(1 - σ(l))))`` with a soft target ``y`` in [0, 1] and optional per-element
    weights ``w`` (default 1). Float32."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)·ln(1 + |x|)``: the identity's slope near 0, logarithmic for large ``|x|`` (DreamerV3)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`: ``sign(x)·(exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(x.abs())


class WorldModel(nn.Module):
    """DreamerV2's world model.

    Args:
        obs_space: ``{"image": ((C, 64, 64), np.uint8)}`` or ``{"vector": ((n,), np.float32)}`` (other keys ignored).
        act_space: ``.discrete`` and ``.dim`` (A).
        config: sizes (deter, hidden, stoch, classes, unimix, cnn_depth, mlp_layers, mlp_units), loss scales, backend.

    Parts: ``encoder`` (ConvEncoder / MLPEncoder), ``rssm``, ``decoder``, ``reward`` and ``discount`` MLP heads.
    """

    def __init__(self, obs_space: ObsSpace, act_space: ActionSpaceLike, config: Config) -> None:
        super().__init__()
        self.config = config
        self.obs_key = obs_key(obs_space)
        self.act_space = check_act_space(act_space)
        self.obs_shape = tuple(obs_space[self.obs_key][0])
        c = config
        if self.obs_key == "image":
            self.encoder: nn.Module = ConvEncoder(self.obs_shape[0], c.cnn_depth, backend=c.backend)
        else:
            self.encoder = MLPEncoder(self.obs_shape[0], c.mlp_layers, c.mlp_units, backend=c.backend)
        self.rssm = RSSM(act_space.dim, self.encoder.out_dim, c.deter, c.hidden, c.stoch, c.classes, c.unimix,
                         backend=c.backend)
        feat = self.rssm.feat_size
        if self.obs_key == "image":
            self.decoder: nn.Module = ConvDecoder(feat, self.obs_shape[0], c.cnn_depth, backend=c.backend)
        else:
            self.decoder = MLPDecoder(feat, self.obs_shape[0], c.mlp_layers, c.mlp_units, c.backend)
        self.reward = MLP(feat, 1, c.mlp_layers, c.mlp_units, c.backend)
        self.discount = MLP(feat, 1, c.mlp_layers, c.mlp_units, c.backend)

    @property
    def feat_size(self) -> int:
        return self.rssm.feat_size

    @property
    def device(self) -> torch.device:
        return self.rssm.gru_norm.weight.device

    # ---- data ------------------------------------------------------------------------------------------------------

    def preprocess(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Numpy arrays or tensors (time-major ``[T, B, ...]``) -> tensors on the model's device.

        ``image`` uint8 -> float32 ``obs/255 - 0.5``; ``vector`` -> float32 (through :func:`symlog` with
        ``vector_symlog``: the space the encoder reads and the decoder predicts); ``action`` [T, B, A], ``reward``
        [T, B] -> float32;
        ``is_first``, ``is_last``, ``is_terminal`` [T, B] -> bool. Keys that are absent stay absent (except the
        flags: ``is_last`` / ``is_terminal`` default to False). Other keys are ignored.
        """
        dev = self.device
        out: dict[str, torch.Tensor] = {}
        if self.obs_key == "image":
            out["image"] = to_tensor(batch["image"], dev, torch.float32) / 255.0 - 0.5
        else:
            out["vector"] = to_tensor(batch["vector"], dev, torch.float32)
            if self.config.vector_symlog:
                out["vector"] = symlog(out["vector"])
        for key in ("action", "reward"):
            if key in batch:
                out[key] = to_tensor(batch[key], dev, torch.float32)
        lead = out[self.obs_key].shape[: out[self.obs_key].dim() - len(self.obs_shape)]
        for key in ("is_first", "is_last", "is_terminal"):
            if key in batch:
                out[key] = to_tensor(batch[key], dev).bool()
            elif key != "is_first":
                out[key] = torch.zeros(lead, dtype=torch.bool, device=dev)
        return out

    def decode(self, feat: torch.Tensor) -> torch.Tensor:
        """``[..., F]`` -> the observation's mean (``[..., C, 64, 64]`` in ``obs/255 - 0.5`` units, or ``[..., n]`` in
        the observation's own units: with ``vector_symlog`` the decoder's output goes through :func:`symexp`)."""
        out = self.decoder(feat)
        return symexp(out) if self.obs_key == "vector" and self.config.vector_symlog else out

    # ---- loss ------------------------------------------------------------------------------------------------------

    def loss(self, data: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, RSSMState, dict[str, torch.Tensor]]:
        """The world-model loss of a preprocessed batch ``[T, B]``.

        ``kl_scale·KL + {image,vector}_scale·NLL(obs) + reward_scale·NLL(reward) + discount_scale·BCE(discount)``:

        - observation: unit Gaussian, ``0.5·Σ(pred - obs)²`` over an observation's elements, mean over ``[T, B]``;
        - reward: unit Gaussian on ``tanh(reward)`` (``clip_rewards == "tanh"``) or the reward;
        - observation: with ``vector_symlog`` the vector target is the symlog of the observation (``preprocess``);
        - discount: Bernoulli logits against the soft target ``discount·(1 - is_terminal)`` (as DreamerV2's code: the
          head predicts γ·continue, so imagination uses ``sigmoid(logits)`` directly); the terminal steps' terms
          weigh ``discount_terminal_weight``, the others 1, and the loss is their mean over ``[T, B]``;
        - KL: :meth:`RSSM.kl_loss` with ``kl_balance``, ``kl_free``, ``kl_free_avg``.

        Returns:
            ``(loss [] float32, post [T, B] (with gradients), metrics)``; the metrics are detached 0-d float32
            tensors on the model's device (none is read on the host here).
        """
        c = self.config
        obs = data[self.obs_key]
        embed = self.encoder(obs)
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"])
        kl_loss, kl = self.rssm.kl_loss(post, prior, c.kl_balance, c.kl_free, c.kl_free_avg)
        feat = self.rssm.get_feat(post)
        obs_loss = gaussian_loss(self.decoder(feat), obs, len(self.obs_shape))
        reward_target = data["reward"]
        if c.clip_rewards == "tanh":
            reward_target = torch.tanh(reward_target)
        reward_loss = gaussian_loss(self.reward(feat).squeeze(-1), reward_target, 0)
        terminal = data["is_terminal"].float()
        disc_target = c.discount * (1.0 - terminal)
        disc_logits = self.discount(feat).squeeze(-1)
        disc_weight = None if c.discount_terminal_weight == 1.0 else 1.0 + (c.discount_terminal_weight - 1.0) * terminal
        discount_loss = soft_bce_with_logits(disc_logits, disc_target, disc_weight)
        obs_scale = c.image_scale if self.obs_key == "image" else c.vector_scale
        total = (c.kl_scale * kl_loss.float() + obs_scale * obs_loss + c.reward_scale * reward_loss
                 + c.discount_scale * discount_loss)
        metrics = {
            "model/loss": total,
            "model/kl": kl.float().mean(),
            "model/kl_loss": kl_loss.float(),
            f"model/{self.obs_key}_loss": obs_loss,
            "model/reward_loss": reward_loss,
            "model/discount_loss": discount_loss,
            "model/post_ent": _categorical_entropy(post.logits),
            "model/prior_ent": _categorical_entropy(prior.logits),
        }
        metrics.update(_discount_metrics(disc_logits.detach(), data["is_terminal"]))
        return total, post, {k: v.detach().float() for k, v in metrics.items()}

    # ---- video -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def open_loop(self, data: Mapping[str, torch.Tensor], context: int = 5, n: int = 4) -> np.ndarray | None:
        """Open-loop prediction video of a preprocessed batch ``[T, B]`` (images only; None for vectors).

        The first ``n`` sequences: observe ``context`` steps, then roll the prior forward under the real actions.
        Each frame shows truth | model | error side by side and the sequences stacked vertically:
        ``uint8 [T, n·64, 3·64, C]`` (error mapped to ``(model - truth + 1) / 2``).
        """
        if self.obs_key != "image":
            return None
        image = data["image"][:, :n]
        action, is_first = data["action"][:, :n], data["is_first"][:, :n]
        T = image.shape[0]
        context = max(1, min(context, T))
        post, _ = self.rssm.observe(self.encoder(image[:context]), action[:context], is_first[:context])
        recon = self.decoder(self.rssm.get_feat(post)).float()
        if T > context:
            prior = self.rssm.imagine_with_action(action[context:], post.at(-1))
            openl = self.decoder(self.rssm.get_feat(prior)).float()
            recon = torch.cat([recon, openl], 0)
        truth = (image + 0.5).clamp(0, 1)
        model = (recon + 0.5).clamp(0, 1)
        error = ((model - truth + 1) / 2).clamp(0, 1)
        video = torch.cat([truth, model, error], -1)  # [T, n, C, 64, 3·64]
        video = video.permute(0, 1, 3, 4, 2)  # [T, n, 64, 3·64, C]
        video = video.reshape(T, -1, *video.shape[3:])  # [T, n·64, 3·64, C]
        return (video * 255).round().to(torch.uint8).cpu().numpy()


def _discount_metrics(logits: torch.Tensor, is_terminal: torch.Tensor) -> dict[str, torch.Tensor]:
    """How well the discount head sees terminations: the number of terminal steps in the batch and the mean predicted
    discount on them and on the other steps; a mean over no steps is NaN (see :data:`SPARSE_METRICS`). Computed
    without reading the mask on the host."""
    disc = torch.sigmoid(logits.float())
    terminal = is_terminal.float()
    count = terminal.sum()
    return {"model/terminal_steps": count,
            "model/discount_terminal_mean": (disc * terminal).sum() / count,
            "model/discount_nonterminal_mean": (disc * (1.0 - terminal)).sum() / (terminal.numel() - count)}


def _categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of the entropy summed over the S variables of ``[..., S, K]`` logits."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum((-2, -1)).mean()


__all__ = ["SPARSE_METRICS", "WorldModel", "ActionSpaceLike", "gaussian_loss", "soft_bce_with_logits", "obs_key",
           "symexp", "symlog"]
