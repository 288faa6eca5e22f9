"""A small world model trained on a moving dot, with dreamer_fast.RSSM dropped into someone else's training loop.

The encoder, decoder, reward head, data and optimiser loop are the user's own; only the latent dynamics come from
dreamer_fast. The lines that change, compared with a hand-written recurrent model::

    import dreamer_fast as df
    self.rssm = df.RSSM(action_dim, embed_dim, deter=64, hidden=64, stoch=8, classes=8)  # was: nn.GRUCell + heads
    post, prior = self.rssm.observe(embed, action, is_first)        # was: a Python loop over time
    kl, _ = self.rssm.kl_loss(post, prior); feat = self.rssm.get_feat(post)   # KL balancing, decoder input

dreamer_fast is time-major (``[T, B, ...]``), so batch-major data is transposed once on the way in. ``action[t]`` is
the action taken *before* observation t, and ``is_first[t]`` marks the first observation of an episode.

Run (a few seconds on a CPU):  python examples/dropin_rssm.py --steps 60 --backend fused
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

import dreamer_fast as df

MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # stay, up, down, left, right


# ---- the user's data: a dot on a grid, moved by random actions, rewarded in the right half ----------------------


def moving_dot_batch(batch: int, length: int, size: int, generator: torch.Generator, reset_prob: float = 0.05):
    """Batch-major sequences: images [B, T, 1, size, size], one-hot actions [B, T, 5], rewards [B, T], is_first [B, T].

    ``action[:, t]`` moved the dot from where it was at t - 1 to where it is at t (zero at an episode's first step).
    """
    n_actions = len(MOVES)
    pos = torch.randint(size, (batch, 2), generator=generator)
    grid = torch.arange(size, dtype=torch.float32)
    images, actions, rewards, firsts = [], [], [], []
    for t in range(length):
        first = torch.rand(batch, generator=generator) < reset_prob if t else torch.ones(batch, dtype=torch.bool)
        act = torch.randint(n_actions, (batch,), generator=generator)
        pos = torch.where(first[:, None], torch.randint(size, (batch, 2), generator=generator),
                          (pos + MOVES[act]).clamp(0, size - 1))
        onehot = F.one_hot(act, n_actions).float() * (~first)[:, None]
        dy = (grid[None, :] - pos[:, :1]) ** 2  # [B, size]
        dx = (grid[None, :] - pos[:, 1:]) ** 2
        img = torch.exp(-(dy[:, :, None] + dx[:, None, :]) / 2.0)
        img = img + 0.05 * torch.randn(img.shape, generator=generator)
        images.append(img[:, None])
        actions.append(onehot)
        rewards.append((pos[:, 1] >= size // 2).float())
        firsts.append(first)
    stack = lambda xs: torch.stack(xs, 1)  # noqa: E731
    return stack(images), stack(actions), stack(rewards), stack(firsts)


# ---- the user's model -------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, embed_dim: int, size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 4, 2, 1), nn.ELU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ELU(), nn.Flatten(),
            nn.Linear(32 * (size // 4) ** 2, embed_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [N, 1, size, size] -> [N, embed_dim]
        return self.net(images)


class Decoder(nn.Module):
    def __init__(self, feat_dim: int, size: int):
        super().__init__()
        self.side = size // 4
        self.fc = nn.Linear(feat_dim, 32 * self.side**2)
        self.net = nn.Sequential(
            nn.ELU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ELU(), nn.ConvTranspose2d(16, 1, 4, 2, 1)
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # [N, feat_dim] -> [N, 1, size, size]
        return self.net(self.fc(feat).unflatten(-1, (32, self.side, self.side)))


class WorldModel(nn.Module):
    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.encoder = Encoder(args.embed, args.size)
        self.rssm = df.RSSM(len(MOVES), args.embed, deter=args.deter, hidden=args.hidden, stoch=args.stoch,
                            classes=args.classes, backend=args.backend)
        self.decoder = Decoder(self.rssm.feat_size, args.size)
        self.reward = nn.Sequential(nn.Linear(self.rssm.feat_size, 64), nn.ELU(), nn.Linear(64, 1))
        self.kl_scale = args.kl_scale

    def loss(self, images, actions, rewards, is_first) -> tuple[torch.Tensor, dict[str, float]]:
        B, T = images.shape[:2]
        embed = self.encoder(images.flatten(0, 1)).unflatten(0, (B, T))
        tm = lambda x: x.transpose(0, 1)  # noqa: E731  batch-major -> time-major
        post, prior = self.rssm.observe(tm(embed), tm(actions), tm(is_first))
        kl, _ = self.rssm.kl_loss(post, prior)
        feat = self.rssm.get_feat(post)  # [T, B, feat]
        recon = self.decoder(feat.flatten(0, 1)).unflatten(0, (T, B))
        recon_loss = (recon - tm(images)).square().sum((-3, -2, -1)).mean()
        reward_loss = (self.reward(feat).squeeze(-1) - tm(rewards)).square().mean()
        total = recon_loss + reward_loss + self.kl_scale * kl
        return total, dict(recon=recon_loss.item(), reward=reward_loss.item(), kl=kl.item())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="optimiser steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=16, help="sequence length T")
    p.add_argument("--size", type=int, default=16, help="image side (a multiple of 4)")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--deter", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--stoch", type=int, default=8)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--kl-scale", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backend", choices=df.BACKENDS, default="auto", help="dreamer_fast backend of the RSSM")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size % 4:
        p.error("--size must be a multiple of 4")

    torch.manual_seed(args.seed)  # also seeds the RSSM's samples (its Philox stream draws from this generator)
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    model = WorldModel(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(f"backend={args.backend} steps={args.steps} batch={args.batch} length={args.length} "
          f"params={sum(x.numel() for x in model.parameters())}")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss, parts = model.loss(*moving_dot_batch(args.batch, args.length, args.size, data_gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        if step == 1 or step % args.log_every == 0 or step == args.steps:
            print(f"step {step:4d} loss {loss.item():.4f} recon {parts['recon']:.4f} reward {parts['reward']:.4f} "
                  f"kl {parts['kl']:.4f}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
