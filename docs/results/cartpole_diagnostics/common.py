"""Shared helpers: load an Agent from a run dir (read-only) and rebuild episodes from replay npz chunks."""
import re
from pathlib import Path
import numpy as np
import torch
import yaml

torch.set_num_threads(1)

from dreamer_fast.agent import Agent
from dreamer_fast.checkpoint import load_checkpoint
from dreamer_fast.config import config_from_dict
from dreamer_fast.envs.base import ActionSpace

RUNS = {"cp_v3norm": Path("/tmp/runs/cp_v3norm"), "preset_cartpole": Path("/work/main/runs/cartpole")}
_NAME = re.compile(r"^(\d{10})-w(\d+)-([cs])-(\d+)\.npz$")


def load_agent(run: Path):
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    ckpt = load_checkpoint(run / "checkpoint.pt", map_location="cpu")  # read only
    agent = Agent({"vector": ((4,), np.float32)}, ActionSpace(True, 2), cfg)
    agent.load_state_dict(ckpt["agent"]["model"])
    agent.eval()
    return agent, cfg, ckpt


def load_episodes(run: Path):
    """Episodes in storage order. Each: dict of arrays + 'start' (global replay index == agent step of its reset)."""
    files = sorted(p for p in (run / "replay").iterdir() if _NAME.match(p.name))
    chunks = []
    for p in files:
        with np.load(p) as z:
            chunks.append({k: z[k] for k in z.files})
    data = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    firsts = np.flatnonzero(data["is_first"])
    eps = []
    for i, s in enumerate(firsts):
        e = firsts[i + 1] if i + 1 < len(firsts) else len(data["is_first"])
        ep = {k: v[s:e] for k, v in data.items()}
        ep["start"] = int(s)
        ep["end_step"] = int(e - 1)
        ep["ret"] = float(ep["reward"].sum())
        ep["complete"] = bool(ep["is_last"][-1])
        ep["terminal"] = bool(ep["is_terminal"][-1])
        xl, thl = ep["vector"][-1, 0], ep["vector"][-1, 2]
        ep["cause"] = ("x" if abs(xl) > 2.4 else "theta" if abs(thl) > 0.2095 else "?") if ep["terminal"] else (
            "trunc" if ep["complete"] else "open")
        eps.append(ep)
    return eps, len(data["is_first"])


def groups(eps):
    """good: 500-return (truncated) episodes ending in 8k..11.3k steps; collapsed: last 30 complete episodes."""
    good = [e for e in eps if e["complete"] and e["ret"] >= 500 and 8000 <= e["end_step"] <= 11300]
    complete = [e for e in eps if e["complete"]]
    return {"good": good, "collapsed": complete[-30:]}


@torch.no_grad()
def filter_windows(agent, eps, t0s, C):
    """Posterior after observing steps t0-C+1..t0 of each (episode, t0), starting fresh (is_first at the window's
    first step, its action zeroed, as in training windows). Returns RSSMState [N]."""
    wm = agent.wm
    vec = np.stack([eps[i]["vector"][t - C + 1:t + 1] for i, t in t0s], 1)  # [C, N, 4]
    act = np.stack([eps[i]["action"][t - C + 1:t + 1] for i, t in t0s], 1)
    first = np.zeros(vec.shape[:2], bool); first[0] = True
    act[0] = 0
    vec, act, first = torch.tensor(vec), torch.tensor(act), torch.tensor(first)
    post, _ = wm.rssm.observe(wm.encoder(vec), act, first)
    return post.at(-1)


@torch.no_grad()
def filter_full(agent, ep):
    """Posterior of every step of one episode, filtered from its start (as when acting). RSSMState [L]."""
    wm = agent.wm
    vec = torch.tensor(ep["vector"])[:, None]
    act = torch.tensor(ep["action"])[:, None].clone(); act[0] = 0
    first = torch.tensor(ep["is_first"])[:, None]
    post, _ = wm.rssm.observe(wm.encoder(vec), act, first)
    return post.at((slice(None), 0))


@torch.no_grad()
def heads(agent, state):
    wm = agent.wm
    feat = wm.rssm.get_feat(state)
    return (wm.decode(feat).float(), wm.reward(feat).squeeze(-1).float(),
            torch.sigmoid(wm.discount(feat).squeeze(-1).float()), agent.ac.value(feat, slow=True),
            agent.ac.actor.dist(agent.ac.actor(feat)).probs)
