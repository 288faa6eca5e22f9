"""Collecting from several environments (``num_envs``): the batched environments, per-environment episodes in the
replay, per-environment restarts of the policy state, the train ratio over all environments, and one environment
running exactly as before."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer_fast.agent.agent import Agent
from dreamer_fast.cli import main
from dreamer_fast.config import load_config
from dreamer_fast.envs import make_env
from dreamer_fast.envs.vector import SEED_STRIDE, AsyncEnvs, EnvList, make_envs
from dreamer_fast.training.checkpoint import load_checkpoint
from dreamer_fast.training.replay import Replay
from dreamer_fast.training.replay_chunks import list_chunks, read_chunk

DATA = Path(__file__).resolve().parent / "data"


def train(logdir: Path, *args: str) -> None:
    assert main(["train", "--config", "debug", "--logdir", str(logdir), "--no-progress", "--threads", "1", *args]) == 0


def worker_steps(logdir: Path) -> dict[int, list[dict]]:
    """Each worker's stored steps in the order they were stored."""
    out: dict[int, list[dict]] = {}
    for chunk in list_chunks(logdir / "replay"):
        data = read_chunk(chunk, None)
        out.setdefault(chunk.worker, []).extend({k: v[t] for k, v in data.items()} for t in range(chunk.length))
    return out


def random_actions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[rng.integers(dim, size=n)]


@pytest.mark.parametrize("env", ["gym/CartPole-v1", "atari/Pong"])
def test_async_envs_step_like_env_list(env):
    # time_limit 6: episodes end by truncation (is_last without is_terminal) as well as by termination
    config = load_config("debug", {"env": env, "num_envs": 3, "time_limit": 6, "vector_env": "async"})
    many, lone = make_envs(config, seed=5), make_envs(dataclasses.replace(config, vector_env="sync"), seed=5)
    assert isinstance(many, AsyncEnvs) and isinstance(lone, EnvList)
    assert many.obs_space == lone.obs_space and many.act_space == lone.act_space
    rng = np.random.default_rng(0)
    try:
        steps = [(many.reset(), lone.reset())]
        for _ in range(20):
            actions = random_actions(rng, 3, lone.act_space.dim)
            steps.append((many.step(actions), lone.step(actions)))
    finally:
        many.close()
        lone.close()
    flags = {k: [s[k] for _, row in steps for s in row] for k in ("is_first", "is_last", "is_terminal")}
    assert sum(flags["is_first"]) > 3 and sum(flags["is_last"]) > 0
    if env.startswith("gym/"):
        assert any(flags["is_terminal"])
    for a_row, b_row in steps:
        for a, b in zip(a_row, b_row):
            assert a.keys() == b.keys()
            for key in a:
                assert np.array_equal(a[key], b[key]) and np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


def test_env_i_is_seeded_with_its_own_seed():
    config = load_config("debug", {"num_envs": 2})
    envs = make_envs(config, seed=3)
    first = envs.reset()
    envs.close()
    for i, s in enumerate(first):
        alone = make_env(config, 3 + SEED_STRIDE * i)
        assert np.array_equal(alone.reset()["vector"], s["vector"])
        alone.close()
    assert not np.array_equal(first[0]["vector"], first[1]["vector"])


@pytest.mark.parametrize("vector_env", ["async", "sync"])
def test_each_env_episodes_stored_apart(tmp_path, monkeypatch, vector_env):
    calls = []
    policy = Agent.policy

    def recording(self, obs, state=None, mode="explore"):
        calls.append(np.array(obs["is_first"]))
        return policy(self, obs, state, mode)

    monkeypatch.setattr(Agent, "policy", recording)
    logdir = tmp_path / "run"
    train(logdir, "--num_envs", "3", "--steps", "240", "--vector_env", vector_env)
    config = load_config("debug", {"num_envs": 3, "steps": 240, "threads": 1, "vector_env": vector_env})
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["step"] == 240  # agent steps of all the environments
    stored = worker_steps(logdir)
    assert sorted(stored) == [0, 1, 2]
    assert all(len(steps) == 240 // 3 + 1 for steps in stored.values())  # the first reset, then 80 steps each
    episodes = 0
    for i, steps in stored.items():
        # Replaying env i with its seed and the stored actions gives back its stored steps: nothing of another env
        # is among them, and each stored episode is one whole episode of env i.
        env = make_env(config, seed=config.seed + SEED_STRIDE * i)
        for t, step in enumerate(steps):
            again = env.reset() if step["is_first"] else env.step(step["action"])
            assert step["is_first"] == (t == 0 or steps[t - 1]["is_last"]), (i, t)
            for key in ("vector", "reward", "is_first", "is_last", "is_terminal"):
                assert np.array_equal(again[key], step[key]), (i, t, key)
        env.close()
        episodes += sum(bool(s["is_last"]) for s in steps)
        # The policy's state restarts in exactly the rows of the envs that start an episode.
        assert [bool(c[i]) for c in calls] == [bool(s["is_first"]) for s in steps[:len(calls)]], i
    assert len(calls) == 240 // 3
    assert ckpt["episodes"] == episodes > 3
    with open(logdir / "metrics.csv") as f:
        returns = [r for r in csv.DictReader(f) if r["name"] == "episode/return"]
    assert len(returns) == episodes  # every env's episodes, each its own row


def test_sampled_windows_never_mix_envs(tmp_path):
    replay = Replay(tmp_path, capacity=1000, seed=0, chunk=5)
    rng = np.random.default_rng(0)
    for t in range(200):
        for worker in range(3):
            first = t == 0 or rng.random() < 0.05
            replay.add({"vector": np.full(2, worker, np.float32), "reward": 0.0, "is_first": first,
                        "is_last": False, "is_terminal": False, "action": np.zeros(2, np.float32)}, worker=worker)
    batch = replay.sample(64, 12)
    env = batch["vector"][..., 0]  # [T, B]: the env each step came from
    switch = env[1:] != env[:-1]
    assert switch.any()  # windows do run from one env's chunk into another's ...
    assert batch["is_first"][1:][switch].all()  # ... but only where the model's state restarts


def test_policy_state_restarts_per_env():
    config = load_config("debug")
    env = make_env(config, seed=0)
    agent = Agent(env.obs_space, env.act_space, config)
    obs = np.stack([env.reset()["vector"], env.step(np.eye(2, dtype=np.float32)[0])["vector"]])
    env.close()
    torch.manual_seed(0)
    state = None
    for _ in range(3):
        _, state = agent.policy({"vector": obs, "is_first": np.array([False, False])}, state)
    _, mixed = agent.policy({"vector": obs, "is_first": np.array([False, True])}, state)
    _, fresh = agent.policy({"vector": obs, "is_first": np.array([True, True])}, None)
    _, kept = agent.policy({"vector": obs, "is_first": np.array([False, False])}, state)
    # The deterministic state of a restarted row depends only on the initial state and a zero action.
    assert torch.equal(mixed[0].deter[1], fresh[0].deter[1])
    assert torch.equal(mixed[0].deter[0], kept[0].deter[0])
    assert not torch.equal(mixed[0].deter[0], fresh[0].deter[0])


def test_train_every_counts_the_steps_of_all_envs(tmp_path):
    logdir = tmp_path / "run"
    train(logdir, "--num_envs", "4", "--train_every", "2", "--steps", "200")  # prefill 100
    updates = load_checkpoint(logdir / "checkpoint.pt")["updates"]
    # one round when training starts at step 100, then 100 more steps at one round per 2 steps
    assert updates == 1 + (200 - 100) // 2


def test_one_env_runs_as_before(tmp_path):
    # tests/data/debug_one_env.json: this run's metrics and checkpoint, recorded before environments were batched
    golden = json.loads((DATA / "debug_one_env.json").read_text())
    logdir = tmp_path / "run"
    train(logdir)
    with open(logdir / "metrics.csv") as f:
        rows = [[int(r["step"]), r["name"], float(r["value"])] for r in csv.DictReader(f)
                if not r["name"].startswith("perf/")]
    assert [r[:2] for r in rows] == [r[:2] for r in golden["metrics"]]
    for row, want in zip(rows, golden["metrics"]):
        if row[1].startswith("episode/") or row[1] in ("replay/steps", "train/updates"):
            assert row == want
        else:  # losses: equal where the CPU's GEMMs sum as the recording's did
            assert row[2] == pytest.approx(want[2], rel=1e-4, abs=1e-6), row
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert {k: ckpt[k] for k in golden["checkpoint"]} == golden["checkpoint"]
    sums = {k: float(v.double().sum()) for k, v in ckpt["agent"]["model"].items() if v.is_floating_point()}
    assert sums == pytest.approx(golden["parameter_sums"], rel=1e-4, abs=1e-6)


def test_resume_with_several_envs(tmp_path, capsys):
    logdir = tmp_path / "run"
    train(logdir, "--num_envs", "2", "--vector_env", "async", "--steps", "200")
    first = load_checkpoint(logdir / "checkpoint.pt")
    assert main(["train", "--resume", "--logdir", str(logdir), "--steps", "300", "--no-progress"]) == 0
    assert "resumed" in capsys.readouterr().out
    ckpt = load_checkpoint(logdir / "checkpoint.pt")
    assert ckpt["step"] == 300 and ckpt["updates"] > first["updates"] and ckpt["episodes"] > first["episodes"]
    stored = worker_steps(logdir)
    assert sorted(stored) == [0, 1] and sum(len(s) for s in stored.values()) == 300 + 2 * 2  # two resets each


@pytest.mark.parametrize("args,message", [
    (["--num_envs", "0"], "config `num_envs` must be > 0, got 0"),
    (["--num_envs", "-2"], "config `num_envs` must be > 0, got -2"),
    (["--num_envs", "two"], "config `num_envs` must be of type int, got 'two'"),
    (["--vector_env", "threads"], "config `vector_env` must be one of ('auto', 'async', 'sync'), got 'threads'"),
])  # fmt: skip
def test_bad_num_envs_is_a_one_line_error(tmp_path, capsys, args, message):
    assert main(["train", "--config", "debug", "--logdir", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dreamer-fast: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
