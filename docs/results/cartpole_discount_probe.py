"""Offline check of the CartPole world model's termination at the track edge (docs/RESULTS.md, CartPole).

Scripted controllers collect CartPole-v1 episodes (a training set and a held-out test set, fixed seeds); a world model
of the ``cartpole`` preset plus each variant's overrides is trained on the training set alone (world-model updates
only, batches as in training), and every ``--eval_every`` updates the test set is filtered from each episode's start
and the discount head is read at:

- the off-track terminal steps (|x| > 2.4) and the pole-fall terminal steps (target 0);
- non-terminal steps near the edge (|x| > 2.2) and inside (|x| < 2, |θ| < 0.15) (target 0.99: false alarms);
- the off-track terminal step imagined open loop with the real actions from ``h`` steps before it (``alive`` = the
  model's probability that the episode still runs there, Π disc/γ).

The controllers: uniformly random for the first 1,000 steps, then per episode random (5%), pole balancing with a lean
(``right iff θ + 0.5·θ̇ > b``, |b| uniform in [0.03, 0.1]: the cart drifts off the track in ~150 steps, 45%), pole
balancing (20%) or balancing and centring (``right iff [1, 1.5, 18, 3]·s > 0``, 30%), each with a random share of up
to 10% random actions.

    PYTHONPATH=. python docs/results/cartpole_discount_probe.py --updates 1200 --eval_every 600 \\
        preset tw10:discount_terminal_weight=10 tw10sym:discount_terminal_weight=10,vector_symlog=true
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import gymnasium
import numpy as np
import torch

from dreamer_fast.agent.agent import Agent
from dreamer_fast.config import load_config
from dreamer_fast.envs import make_env
from dreamer_fast.training.replay import Replay

X_LIMIT = 2.4


def collect(seed: int, steps: int) -> list[dict[str, np.ndarray]]:
    """Episodes (dicts of per-step arrays, in the replay's layout) of the scripted controllers, ``steps`` in all."""
    rng = np.random.default_rng(seed)
    env = gymnasium.make("CartPole-v1")
    episodes: list[dict[str, np.ndarray]] = []
    total = 0
    while total < steps:
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        kinds = ["random", "balance", "centre", "lean"]
        kind = "random" if total < 1000 else rng.choice(kinds, p=[0.05, 0.2, 0.3, 0.45])
        noise = rng.uniform(0.0, 0.1)
        lean = rng.choice([-1, 1]) * rng.uniform(0.03, 0.1)
        rows = [(obs, np.zeros(2, np.float32), 0.0, True, False, False)]
        while True:
            x, x_dot, theta, theta_dot = obs
            if kind == "random" or rng.random() < noise:
                action = int(rng.integers(2))
            elif kind == "centre":
                action = int(x + 1.5 * x_dot + 18 * theta + 3 * theta_dot > 0)
            else:
                action = int(theta + 0.5 * theta_dot > (lean if kind == "lean" else 0.0))
            obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, np.eye(2, dtype=np.float32)[action], reward, False, terminated or truncated, terminated))
            if terminated or truncated:
                break
        columns = list(zip(*rows))
        episodes.append({"vector": np.asarray(columns[0], np.float32), "action": np.asarray(columns[1]),
                         "reward": np.asarray(columns[2], np.float32), "is_first": np.asarray(columns[3]),
                         "is_last": np.asarray(columns[4]), "is_terminal": np.asarray(columns[5])})
        total += len(rows)
    return episodes


def off_track(episode: dict[str, np.ndarray]) -> bool:
    return bool(episode["is_terminal"][-1] and abs(episode["vector"][-1, 0]) > X_LIMIT)


@torch.no_grad()
def evaluate(agent: Agent, episodes: list[dict[str, np.ndarray]], horizons: tuple[int, ...] = (1, 5, 10)) -> dict:
    wm, gamma = agent.wm, agent.config.discount
    agent.eval()
    found: dict[str, list] = {"x_term": [], "pole_term": [], "edge": [], "inner": [], "x_err_edge": []}
    found.update({f"h{h}": [] for h in horizons})
    for episode in episodes:
        data = wm.preprocess({k: v[:, None] for k, v in episode.items()})
        post, _ = wm.rssm.observe(wm.encoder(data["vector"]), data["action"], data["is_first"])
        feat = wm.rssm.get_feat(post)
        disc = torch.sigmoid(wm.discount(feat)[:, 0, 0]).numpy()
        x_pred = wm.decode(feat)[:, 0, 0].numpy()
        x, theta = episode["vector"][:, 0], episode["vector"][:, 2]
        alive = ~episode["is_terminal"]
        found["edge"] += list(disc[alive & (np.abs(x) > 2.2)])
        found["inner"] += list(disc[alive & (np.abs(x) < 2.0) & (np.abs(theta) < 0.15)])
        found["x_err_edge"] += list(np.abs(x_pred - x)[np.abs(x) > 2.0])
        if not episode["is_terminal"][-1]:
            continue
        if not off_track(episode):
            found["pole_term"].append(disc[-1])
            continue
        found["x_term"].append(disc[-1])
        last = len(x) - 1
        for h in horizons:
            if last - h < 1:
                continue
            prior = wm.rssm.imagine_with_action(data["action"][last - h + 1:], post.at(last - h))
            imagined = torch.sigmoid(wm.discount(wm.rssm.get_feat(prior))[:, 0, 0]).numpy()
            found[f"h{h}"].append((imagined[-1], float(np.prod(imagined / gamma))))
    out = {key: np.asarray(found[key]) for key in ("x_term", "pole_term", "edge", "inner")}
    out["x_err_edge"] = float(np.mean(found["x_err_edge"]))
    out.update({f"h{h}": np.asarray(found[f"h{h}"]) for h in horizons})
    return out


def row(name: str, updates: int, r: dict) -> str:
    def head(key: str) -> str:
        a = r[key]
        return f"{a.mean():.2f} ({np.mean(a < 0.5):.0%})"

    opens = " | ".join(f"{r[k][:, 0].mean():.2f} / {r[k][:, 1].mean():.3f}" for k in r if k.startswith("h"))
    return (f"| {name} | {updates} | {head('x_term')} | {head('pole_term')} | {head('edge')} | "
            f"{r['inner'].mean():.3f} ({np.mean(r['inner'] < 0.5):.1%}) | {r['x_err_edge']:.3f} | {opens} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="name or name:key=value,key=value (overrides of `cartpole`)")
    parser.add_argument("--updates", type=int, default=1200)
    parser.add_argument("--eval_every", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0, help="torch seed and replay sampler seed of the models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = collect(1, 20_000), collect(2, 15_000)

    def count(episodes: list[dict[str, np.ndarray]]) -> tuple[int, int]:
        ends = sum(bool(e["is_terminal"][-1]) for e in episodes)
        return sum(map(off_track, episodes)), ends - sum(map(off_track, episodes))

    print(f"training set: 20,000 steps, {len(train)} episodes, (off-track, pole-fall) endings {count(train)}; "
          f"test set: 15,000 steps, {len(test)} episodes, {count(test)}")
    print("| variant | updates | disc at off-track ends (<0.5) | disc at pole falls (<0.5) | disc at |x|>2.2, alive "
          "(<0.5) | disc inside (<0.5) | x error at |x|>2 | open loop h=1 / 5 / 10: disc / alive at the off-track "
          "end |")
    for spec in args.variants:
        name, _, text = spec.partition(":")
        overrides = dict(item.split("=", 1) for item in text.split(",") if item)
        config = load_config("cartpole", {**overrides, "seed": args.seed})
        torch.manual_seed(args.seed)
        directory = tempfile.mkdtemp(prefix="cartpole_probe_")
        try:
            replay = Replay(directory, 1_000_000, seed=args.seed)
            for episode in train:
                for t in range(len(episode["reward"])):
                    replay.add({k: v[t] for k, v in episode.items()})
            replay.save()
            env = make_env(config, 0)
            agent = Agent(env.obs_space, env.act_space, config)
            start = time.time()
            for update in range(1, args.updates + 1):
                agent.train()
                agent.train_model(agent.wm.preprocess(replay.sample(config.batch_size, config.batch_length,
                                                                    config.replay_ends)))
                if update % args.eval_every == 0 or update == args.updates:
                    print(row(name, update, evaluate(agent, test)), f"<!-- {time.time() - start:.0f} s -->", flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
