"""Agent infrastructure: environments, replay, logger, checkpoints."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer_fast.training.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from dreamer_fast.config import Config, field_docs, load_config, preset_values, presets
from dreamer_fast.envs import ActionSpace, make_env
from dreamer_fast.training.logger import Logger, plot, read_metrics
from dreamer_fast.training.replay import Replay
from dreamer_fast.training.run_stats import MetricMeans

# ---------------------------------------------------------------------------------------------------- envs


def _check_flags(step: dict, first: bool) -> None:
    assert isinstance(step["is_first"], bool) and step["is_first"] is first
    assert isinstance(step["is_last"], bool) and isinstance(step["is_terminal"], bool)
    assert np.asarray(step["reward"]).dtype == np.float32 and np.asarray(step["reward"]).shape == ()
    if step["is_terminal"]:
        assert step["is_last"]


def test_atari_pong_observations_actions_and_rollout():
    env = make_env(Config(env="atari/Pong"), seed=1)
    try:
        assert env.obs_space == {"image": ((1, 64, 64), np.dtype(np.uint8))}
        assert env.act_space == ActionSpace(discrete=True, dim=18)
        first = env.reset()
        assert set(first) == {"image", "reward", "is_first", "is_last", "is_terminal"}
        assert first["image"].shape == (1, 64, 64) and first["image"].dtype == np.uint8
        assert first["reward"] == 0 and first["is_first"] and not first["is_last"] and not first["is_terminal"]
        rng = np.random.default_rng(0)
        frames = [first["image"]]
        for _ in range(40):
            step = env.step(np.eye(18, dtype=np.float32)[rng.integers(18)])
            _check_flags(step, first=False)
            assert step["image"].shape == (1, 64, 64) and step["image"].dtype == np.uint8
            frames.append(step["image"])
        assert np.ptp(np.stack(frames).astype(np.int32)) > 0  # real screens, not blanks
        with pytest.raises(ValueError, match=r"shape \(18,\)"):
            env.step(np.zeros(6, np.float32))
    finally:
        env.close()


def test_atari_time_limit_counts_agent_steps():
    env = make_env(Config(env="atari/Pong", time_limit=5, noop_max=0), seed=0)
    env.reset()
    steps = [env.step(np.eye(18, dtype=np.float32)[0]) for _ in range(5)]
    assert [s["is_last"] for s in steps] == [False] * 4 + [True]
    assert not steps[-1]["is_terminal"]  # truncation is not termination
    env.close()


def test_atari_seed_reproducible():
    def rollout(seed: int) -> np.ndarray:
        env = make_env(Config(env="atari/Pong"), seed=seed)
        images = [env.reset()["image"]] + [env.step(np.eye(18, dtype=np.float32)[3])["image"] for _ in range(10)]
        env.close()
        return np.stack(images)

    np.testing.assert_array_equal(rollout(3), rollout(3))


def test_cartpole_discrete_episode():
    env = make_env(Config(env="gym/CartPole-v1", action_repeat=1, time_limit=0), seed=0)
    assert env.obs_space == {"vector": ((4,), np.dtype(np.float32))}
    assert env.act_space == ActionSpace(discrete=True, dim=2)
    step = env.reset()
    assert step["vector"].dtype == np.float32 and step["vector"].shape == (4,)
    _check_flags(step, first=True)
    length = 0
    while not step["is_last"]:
        step = env.step(np.array([1.0, 0.0], np.float32))  # always push left: falls over quickly
        _check_flags(step, first=False)
        length += 1
    assert step["is_terminal"] and length < 50
    with pytest.raises(ValueError, match="shape"):
        env.reset()
        env.step(np.array([1.0, 0.0, 0.0], np.float32))
    env.close()


def test_gym_action_repeat_and_time_limit():
    # CartPole gives reward 1 per env step: repeat 3 -> 3 per agent step; time limit counts agent steps.
    env = make_env(Config(env="gym/CartPole-v1", action_repeat=3, time_limit=2), seed=0)
    env.reset()
    one = env.step(np.array([0.0, 1.0], np.float32))
    two = env.step(np.array([1.0, 0.0], np.float32))
    assert one["reward"] == 3.0 and not one["is_last"]
    assert two["is_last"] and not two["is_terminal"]
    env.close()


def test_pendulum_continuous_actions_are_clipped_and_rescaled():
    env = make_env(Config(env="gym/Pendulum-v1", action_repeat=1, time_limit=0), seed=0)
    assert env.obs_space == {"vector": ((3,), np.dtype(np.float32))}
    assert env.act_space == ActionSpace(discrete=False, dim=1)
    seen = []
    inner = env.gym_env
    original = inner.step
    inner.step = lambda a: (seen.append(np.array(a)), original(a))[1]
    env.reset()
    for action in (1.0, -1.0, 0.5, 7.0, -3.0):
        step = env.step(np.array([action], np.float32))
        assert step["vector"].shape == (3,) and step["reward"] <= 0
    np.testing.assert_allclose(np.concatenate(seen), [2.0, -2.0, 1.0, 2.0, -2.0], rtol=1e-6)  # bounds are ±2
    env.close()
    # The env's own 200-step limit applies when time_limit is 0.
    env = make_env(Config(env="gym/Pendulum-v1", action_repeat=1, time_limit=0), seed=0)
    env.reset()
    flags = [env.step(np.zeros(1, np.float32))["is_last"] for _ in range(200)]
    assert flags == [False] * 199 + [True]
    env.close()


@pytest.mark.parametrize("env_id, match", [
    ("atari/NotAGame", r"atari/NotAGame.*Pong"),
    ("gym/NoSuchEnv-v0", "gym/NoSuchEnv-v0"),
])
def test_unknown_env_id(env_id, match):
    config = Config(env="atari/Pong")
    config.env = env_id  # bypasses validate(), which accepts any atari/ or gym/ prefix anyway
    with pytest.raises(ValueError, match=match):
        make_env(config, seed=0)


def test_step_before_reset_is_an_error():
    env = make_env(Config(env="gym/CartPole-v1"), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([1.0, 0.0], np.float32))
    env.close()


# ---------------------------------------------------------------------------------------------------- replay


def _episode(length: int, start: int, action_dim: int = 2) -> list[dict]:
    """Synthetic steps whose `vector` holds a running id (start, start+1, ...) so windows can be checked."""
    steps = []
    for t in range(length):
        action = np.zeros(action_dim, np.float32) if t == 0 else np.full(action_dim, (start + t) % 7, np.float32)
        steps.append({
            "vector": np.array([start + t, -1.0], np.float32), "reward": np.float32(t), "action": action,
            "is_first": t == 0, "is_last": t == length - 1, "is_terminal": t == length - 1 and length % 2 == 0,
        })
    return steps


def _fill(replay: Replay, episodes: list[int], worker: int = 0, start: int = 0) -> int:
    for length in episodes:
        for step in _episode(length, start):
            replay.add(step, worker)
        start += length
    return start


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npz"))


def test_replay_chunks_files_and_resume(tmp_path):
    replay = Replay(tmp_path, capacity=1000, chunk=8)
    _fill(replay, [5, 20])  # episode 1: one chunk; episode 2: 8 + 8 + 4
    assert len(replay) == 25 and replay.episodes == 2
    assert len(_files(tmp_path)) == 4
    for step in _episode(10, 100)[:3]:  # an unfinished episode
        replay.add(step)
    assert len(replay) == 25 and len(_files(tmp_path)) == 4  # a pending chunk is neither stored nor written
    replay.save()
    assert len(replay) == 28 and len(_files(tmp_path)) == 5
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    before = replay.sample(4, 10)

    resumed = Replay(tmp_path, capacity=1000, chunk=8)
    assert len(resumed) == 28 and resumed.episodes == 2
    for a, b in zip(replay._chunks, resumed._chunks):
        assert a.worker == b.worker and a.continues == b.continues and a.joins == b.joins
        assert a.data.keys() == b.data.keys()
        for key in a.data:
            np.testing.assert_array_equal(a.data[key], b.data[key])
            assert a.data[key].dtype == b.data[key].dtype
    # New chunks sort after the loaded ones.
    _fill(resumed, [2], start=500)
    names = [p.name for p in _files(tmp_path)]
    assert names == sorted(names) and "-w0-s-2.npz" in names[-1]
    # The same seed gives the same batches over the same contents.
    again = Replay(tmp_path, capacity=1000, chunk=8)
    first = Replay(tmp_path, capacity=1000, chunk=8).sample(4, 10)
    np.testing.assert_array_equal(again.sample(4, 10)["vector"], first["vector"])
    assert before["vector"].shape == (10, 4, 2)


def test_replay_capacity_evicts_oldest_chunks_and_files(tmp_path):
    replay = Replay(tmp_path, capacity=30, chunk=10)
    _fill(replay, [10, 10, 10])
    assert len(replay) == 30 and len(_files(tmp_path)) == 3
    oldest = _files(tmp_path)[0]
    _fill(replay, [4], start=30)
    assert len(replay) == 24 and not oldest.exists() and len(_files(tmp_path)) == 3
    ids = {int(x) for x in replay.sample(64, 1)["vector"][0, :, 0]}
    assert min(ids) >= 10  # the first episode's steps are gone from memory
    # Resuming with a smaller capacity keeps only the newest chunks that fit, deleting the rest.
    resumed = Replay(tmp_path, capacity=15, chunk=10)
    assert len(resumed) == 14 and len(_files(tmp_path)) == 2


def test_replay_sample_shapes_and_time_major(tmp_path):
    replay = Replay(tmp_path, capacity=1000, chunk=16)
    _fill(replay, [100])
    batch = replay.sample(6, 12)
    assert set(batch) == {"vector", "reward", "action", "is_first", "is_last", "is_terminal"}
    assert batch["vector"].shape == (12, 6, 2) and batch["vector"].dtype == np.float32
    assert batch["action"].shape == (12, 6, 2) and batch["reward"].shape == (12, 6)
    assert batch["is_first"].dtype == bool and batch["reward"].dtype == np.float32
    ids = batch["vector"][..., 0]
    np.testing.assert_array_equal(np.diff(ids, axis=0), 1)  # consecutive steps along axis 0 (across chunks too)
    assert batch["is_first"][0].all() and not batch["is_first"][1:].any()  # one episode: no other resets
    np.testing.assert_array_equal(batch["action"][0], 0)
    np.testing.assert_array_equal(batch["reward"], ids)  # reward t == id t in a single episode from 0


def test_replay_is_first_at_unrelated_chunk_boundaries(tmp_path):
    # Two workers interleave mid-episode chunks: a window running from w0's chunk into w1's must restart there.
    replay = Replay(tmp_path, capacity=1000, chunk=4)
    w0, w1 = _episode(12, 0), _episode(12, 1000)
    for a, b in zip(w0, w1):
        replay.add(a, worker=0)
        replay.add(b, worker=1)
    assert [c.worker for c in replay._chunks] == [0, 1, 0, 1, 0, 1]
    assert [c.joins for c in replay._chunks] == [False] * 6
    for _ in range(20):
        batch = replay.sample(8, 9)
        ids = batch["vector"][..., 0]
        jump = np.concatenate([np.ones((1, 8), bool), np.diff(ids, axis=0) != 1])
        np.testing.assert_array_equal(batch["is_first"], jump)
        np.testing.assert_array_equal(batch["action"][jump], 0)
    # One worker: consecutive chunks of the same episode join, so windows carry the state across them.
    other = Replay(tmp_path / "single", capacity=1000, chunk=4)
    _fill(other, [12, 6])
    assert [c.joins for c in other._chunks] == [False, True, True, False, True]
    batch = other.sample(32, 10)
    ids = batch["vector"][..., 0]
    np.testing.assert_array_equal(batch["is_first"][1:], (ids[1:] == 12))  # only the real episode start


def test_replay_save_mid_episode_continues(tmp_path):
    replay = Replay(tmp_path, capacity=1000, chunk=100)
    steps = _episode(10, 0)
    for step in steps[:4]:
        replay.add(step)
    replay.save()  # checkpoint mid-episode, then keep stepping the same env
    for step in steps[4:]:
        replay.add(step)
    assert [c.continues for c in replay._chunks] == [False, True]
    batch = replay.sample(16, 10)
    assert batch["is_first"][0].all() and not batch["is_first"][1:].any()


def test_replay_sampling_reproducible_and_rng_state(tmp_path):
    def build(seed: int, name: str) -> Replay:
        replay = Replay(tmp_path / name, capacity=1000, seed=seed, chunk=8)
        _fill(replay, [30, 17, 9])
        return replay

    a, b, c = build(5, "a"), build(5, "b"), build(6, "c")
    batch_a, batch_b = a.sample(4, 7), b.sample(4, 7)
    for key in batch_a:
        np.testing.assert_array_equal(batch_a[key], batch_b[key])
    assert not np.array_equal(batch_a["vector"], c.sample(4, 7)["vector"])
    state = a.rng_state()
    expected = a.sample(4, 7)["vector"]
    a.sample(4, 7)
    a.set_rng_state(state)
    np.testing.assert_array_equal(a.sample(4, 7)["vector"], expected)


def test_replay_ends_share_of_windows_at_episode_ends(tmp_path):
    def build(name: str) -> Replay:
        replay = Replay(tmp_path / name, capacity=1000, seed=3, chunk=8)
        _fill(replay, [4, 40, 25, 60, 31])  # the first episode ends too early for a window of 10 to end there
        return replay

    # ends=0 draws exactly the uniform windows (the sampler's stream is untouched).
    uniform, zero = build("a"), build("b")
    for _ in range(3):
        a, b = uniform.sample(8, 10), zero.sample(8, 10, ends=0.0)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # ends=1: every window ends at an episode's last step, drawn among all ends a window fits before.
    replay = build("c")
    last_ids = set()
    for _ in range(30):
        batch = replay.sample(8, 10, ends=1.0)
        assert batch["is_last"][-1].all()
        ids = batch["vector"][..., 0]
        np.testing.assert_array_equal(np.diff(ids, axis=0)[~batch["is_first"][1:]], 1)
        last_ids.update(int(x) for x in ids[-1])
    assert last_ids == {43, 68, 128, 159}  # 3 (the 4-step episode's end) never: it has only 3 steps before it
    # In between, about that share of windows end at an episode end (uniform windows rarely do: 4 in 150).
    batch = replay.sample(2000, 10, ends=0.5)
    assert 0.45 < batch["is_last"][-1].mean() < 0.58
    # Before any episode has ended, `ends` has nothing to prefer and windows stay uniform.
    open_only = Replay(tmp_path / "d", capacity=1000, chunk=8)
    for step in _episode(30, 0)[:20]:
        open_only.add(step)
    assert open_only.sample(4, 10, ends=1.0)["vector"].shape == (10, 4, 2)
    with pytest.raises(ValueError, match="`ends`"):
        replay.sample(2, 5, ends=1.5)


def test_replay_errors(tmp_path):
    replay = Replay(tmp_path, capacity=100, chunk=8)
    with pytest.raises(ValueError, match="length=10"):
        replay.sample(2, 10)
    _fill(replay, [6])
    with pytest.raises(ValueError, match="have 6"):
        replay.sample(2, 10)
    with pytest.raises(ValueError, match="missing"):
        replay.add({"vector": np.zeros(2, np.float32), "reward": 0.0})
    with pytest.raises(ValueError, match="differ"):
        replay.add({**_episode(1, 0)[0], "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="capacity"):
        Replay(tmp_path / "x", capacity=0)


def test_replay_from_real_env(tmp_path):
    env = make_env(Config(env="gym/CartPole-v1"), seed=0)
    replay = Replay(tmp_path, capacity=500, chunk=32)
    rng = np.random.default_rng(0)
    step = {**env.reset(), "action": np.zeros(2, np.float32)}
    for _ in range(200):
        replay.add(step)
        action = np.eye(2, dtype=np.float32)[rng.integers(2)]
        step = {**(env.reset() if step["is_last"] else env.step(action)), "action": action}
        if step["is_first"]:
            step["action"] = np.zeros(2, np.float32)
    replay.save()
    env.close()
    batch = replay.sample(3, 16)
    assert batch["vector"].shape == (16, 3, 4) and batch["action"].shape == (16, 3, 2)
    assert len(replay) == 200 and replay.episodes >= 1


# ---------------------------------------------------------------------------------------------------- logger


def test_logger_csv_tensorboard_gif_and_plots(tmp_path):
    with Logger(tmp_path) as logger:
        for step in range(0, 50, 5):
            logger.scalars({"episode/return": float(step % 7), "train/model_loss": 1.0 / (step + 1),
                            "train/actor_loss": np.float32(step)}, step)
        logger.scalar("fps", torch.tensor(12.5), 45)
        gif = logger.gif("eval/openloop", np.random.default_rng(0).integers(0, 255, (5, 16, 16, 1), np.uint8), 45)
        rgb = logger.gif("rgb", np.zeros((3, 8, 8, 3), np.uint8), 0)
        with pytest.raises(ValueError, match="uint8"):
            logger.gif("bad", np.zeros((3, 8, 8, 3), np.float32), 0)
        logger.flush()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,name,value" and len(lines) == 1 + 31
    assert lines[1] == "0,episode/return,0.0"
    assert list(tmp_path.glob("tb/events.out.tfevents.*"))
    from PIL import Image
    assert gif == tmp_path / "eval_openloop_45.gif" and rgb.exists()
    with Image.open(gif) as image:
        assert image.n_frames == 5 and image.size == (16, 16)

    # A resumed run appends to the same CSV without a second header.
    with Logger(tmp_path) as logger:
        logger.scalar("episode/return", 9.0, 60)
    metrics = read_metrics(tmp_path)
    assert (tmp_path / "metrics.csv").read_text().count("step,name,value") == 1
    steps, values = metrics["episode/return"]
    assert steps[-1] == 60 and values[-1] == 9.0 and len(steps) == 11

    paths = plot(tmp_path)
    assert paths == [tmp_path / "curve.png", tmp_path / "losses.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_plot_without_returns(tmp_path):
    with Logger(tmp_path) as logger:
        logger.scalar("other", 1.0, 0)
    for path in plot(tmp_path):
        assert path.stat().st_size > 0


# ---------------------------------------------------------------------------------------------------- checkpoint


def test_metric_means_read_the_sums_once_and_skip_undefined_values(monkeypatch):
    """The training loop sums each update's metric tensors where they are and reads them once when it logs; a sparse
    metric (NaN where the batch had none of its steps) averages only the updates that define it."""
    means = MetricMeans()
    means.add({"model/loss": torch.tensor(1.0), "model/discount_terminal_mean": torch.tensor(float("nan")),
               "model/discount_nonterminal_mean": torch.tensor(float("nan"))})
    means.add({"model/loss": torch.tensor(3.0), "model/discount_terminal_mean": torch.tensor(0.5),
               "model/discount_nonterminal_mean": torch.tensor(float("nan"))})
    means.add({"model/loss": torch.tensor(float("nan")), "model/discount_terminal_mean": torch.tensor(0.25),
               "model/discount_nonterminal_mean": torch.tensor(float("nan"))})
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or tolist(self))
    result = means.means()
    assert reads == [torch.Size([5])]  # three sums and the two sparse counts, in one copy
    assert np.isnan(result["model/loss"])  # a non-finite update shows in the mean of an ordinary metric
    assert result["model/discount_terminal_mean"] == 0.375 and "model/discount_nonterminal_mean" not in result
    means.clear()
    assert means.means() == {}


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "ckpt" / "latest.pt", {"model": model.state_dict(), "step": 7,
                                                               "config": Config().to_dict()})
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temp file left
    payload = load_checkpoint(path)
    assert payload["format"] == FORMAT and payload["step"] == 7 and payload["config"]["env"] == "atari/Pong"
    torch.testing.assert_close(payload["model"]["weight"], model.weight.detach())
    # Overwriting replaces the file as a whole.
    save_checkpoint(path, {"step": 8})
    assert load_checkpoint(path)["step"] == 8


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    path = save_checkpoint(tmp_path / "c.pt", {"x": torch.arange(10000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a dreamer_fast checkpoint"):
        load_checkpoint(foreign)
    torch.save({"format": "dreamer_fast/0"}, foreign)
    with pytest.raises(CheckpointError, match="dreamer_fast/0"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ValueError)


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    replay = Replay(tmp_path / "replay", capacity=100, chunk=8)
    _fill(replay, [20])
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(), "replay_rng": replay.rng_state()})
    expected = (random.random(), np.random.rand(3), torch.rand(3), replay.sample(2, 5)["vector"])
    random.random(), np.random.rand(5), torch.rand(5)  # move every stream on
    payload = load_checkpoint(tmp_path / "c.pt")
    set_rng_state(payload["rng"])
    replay.set_rng_state(payload["replay_rng"])
    got = (random.random(), np.random.rand(3), torch.rand(3), replay.sample(2, 5)["vector"])
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2], rtol=0, atol=0)
    np.testing.assert_array_equal(got[3], expected[3])


# ---------------------------------------------------------------------------------------------------- allocator

_PAGE_FAULTS = """
import resource, sys, torch, dreamer_fast
if sys.argv[1] == "keep":
    assert dreamer_fast.keep_freed_memory() and dreamer_fast.keep_freed_memory()  # idempotent
for i in range(16):
    if i == 10:  # steady state: glibc takes a few rounds to settle its bins around the aligned blocks
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, freed again at the next assignment
    del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_removes_page_faults_of_repeated_large_allocations():
    """By default every 64 MiB tensor is a fresh mmap (16k page faults each); with it, freed blocks are reused."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, keep = faults("default"), faults("keep")
    assert default > 0.8 * 6 * 16 * 2**20 * 4 // 4096  # ~6 x 16,384 faults
    assert keep < default / 3


def test_atari_preset_is_the_defaults_plus_mixed_precision():
    """atari.yaml = Config()'s defaults (DreamerV2's Atari configuration) with bf16 autocast where the CPU has native
    bf16 GEMMs (`bf16: auto`); the CPU-sized presets train in float32."""
    preset, defaults = load_config("atari").to_dict(), Config().to_dict()
    assert {k for k in defaults if preset[k] != defaults[k]} == {"bf16"} and preset["bf16"] == "auto"
    assert preset_values("atari") == {"bf16": "auto"}
    assert all(load_config(name).bf16 == "false" for name in presets() if name != "atari")


@pytest.mark.parametrize("name", presets())
def test_preset_holds_only_its_differences_from_the_defaults(name):
    """A preset file lists only what it changes, so presets stack without one undoing another with a default.

    A preset made to stack on another (``<base>_small`` on ``<base>``) may also set a default back where its base
    changes it."""
    values, defaults = preset_values(name), Config().to_dict()
    assert values
    resolved = load_config(name).to_dict()
    base, _, _ = name.partition("_")
    based = load_config(base).to_dict() if base != name and base in presets() else defaults
    assert [k for k in values if resolved[k] == defaults[k] and resolved[k] == based[k]] == []
    assert {k for k in defaults if resolved[k] != defaults[k]} == {k for k in values if resolved[k] != defaults[k]}


def test_every_config_field_has_a_section_and_a_doc():
    docs = field_docs()
    assert list(docs) == [f.name for f in dataclasses.fields(Config)]
    assert all(d.section and d.doc and not d.doc.startswith("#") for d in docs.values()), docs
    assert docs["env"].section == "run" and docs["eval_every"].section.startswith("logging")
    assert docs["max_nonfinite_updates"].doc.endswith("stop the run with exit status 2; 0 = never stop")  # 2 lines
    assert docs["actor_min_std"].doc == "lower bound of the truncated-normal actor's standard deviation"


def test_bad_preset_lists_are_errors():
    with pytest.raises(ValueError, match="unknown config preset 'nope'"):
        load_config("debug,nope")
    with pytest.raises(ValueError, match="non-empty names"):
        load_config(["debug", ""])
    assert load_config(["small", "debug"]) == load_config("small,debug") == load_config([" small ,debug"])
