"""DeepMind Control Suite environments (``dmc/`` pixels, ``dmc-proprio/`` state): DreamerV2's episode semantics,
seeding, the one-line errors of unknown tasks and missing OpenGL, and the ``dmc`` presets."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("dm_control") is None:  # (importing it here would choose its GL backend too early)
    pytest.skip("the dmc extra is not installed (pip install -e '.[dmc]')", allow_module_level=True)

from dreamer_fast.cli import main  # noqa: E402
from dreamer_fast.config import Config, load_config  # noqa: E402
from dreamer_fast.envs import make_env  # noqa: E402
from dreamer_fast.envs.dmc import RenderingUnavailable, dmc_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _env(env_id: str, seed: int = 0, **values):
    values.setdefault("action_repeat", 2)
    values.setdefault("time_limit", 0)
    return make_env(Config(env=env_id, **values), seed)


def _pixels_or_skip(env_id: str, **values):
    try:
        return _env(env_id, **values)
    except RenderingUnavailable as e:
        pytest.skip(f"no OpenGL rendering here: {e}")


def _run_episode(env, action_value: float = 0.0) -> list[dict]:
    steps = [env.reset()]
    while not steps[-1]["is_last"]:
        steps.append(env.step(np.full(env.act_space.dim, action_value, np.float32)))
    return steps


def test_proprio_episode_ends_by_time_limit_never_terminal():
    env = _env("dmc-proprio/cartpole_swingup")
    assert env.obs_space == {"vector": ((5,), np.dtype(np.float32))}
    assert not env.act_space.discrete and env.act_space.dim == 1
    steps = _run_episode(env, 0.3)
    assert len(steps) == 1 + 500  # 1000 env steps at action repeat 2
    assert steps[0]["is_first"] and not any(s["is_first"] for s in steps[1:])
    assert [s["is_last"] for s in steps].count(True) == 1 and steps[-1]["is_last"]
    assert not any(s["is_terminal"] for s in steps)
    rewards = np.array([s["reward"] for s in steps[1:]])
    assert rewards.dtype == np.float32 and rewards.min() >= 0 and rewards.max() <= 2  # at most 1 per env step
    assert all(s["vector"].shape == (5,) and s["vector"].dtype == np.float32 for s in steps)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1, np.float32))
    env.close()


def test_action_repeat_sums_the_rewards_of_the_repeated_steps():
    """Repeat 2 gives the same trajectory as repeat 1 stepped twice, and rewards summed over each pair."""
    actions = np.random.default_rng(0).uniform(-1, 1, (50, 1)).astype(np.float32)
    once, twice = _env("dmc-proprio/cartpole_swingup", action_repeat=1), _env("dmc-proprio/cartpole_swingup")
    once.reset(), twice.reset()
    for a in actions:
        first, second = once.step(a), once.step(a)
        repeated = twice.step(a)
        np.testing.assert_allclose(repeated["reward"], first["reward"] + second["reward"], rtol=1e-6)
        np.testing.assert_array_equal(repeated["vector"], second["vector"])
    once.close(), twice.close()


def test_time_limit_counts_agent_steps_and_is_not_terminal():
    env = _env("dmc-proprio/walker_walk", time_limit=30)
    steps = _run_episode(env)
    assert len(steps) == 31 and steps[-1]["is_last"] and not steps[-1]["is_terminal"]
    env.close()


def test_seed_fixes_the_initial_states():
    first = [_env("dmc-proprio/walker_walk", seed=s).reset()["vector"] for s in (3, 3, 4)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_actions_are_rescaled_from_unit_box():
    env = _env("dmc-proprio/walker_walk")
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.step(np.zeros(5, np.float32))
    env.close()


def test_pixels_are_rgb_64_and_follow_the_state():
    env = _pixels_or_skip("dmc/cartpole_swingup")
    assert env.obs_space == {"image": ((3, 64, 64), np.dtype(np.uint8))}
    steps = [env.reset()] + [env.step(np.ones(1, np.float32)) for _ in range(20)]
    images = np.stack([s["image"] for s in steps])
    assert images.dtype == np.uint8 and images.shape == (21, 3, 64, 64)
    assert images.std() > 5  # a scene, not a blank frame
    assert not np.array_equal(images[0], images[-1])  # the cart moved
    assert not np.array_equal(images[-1, 0], images[-1, 2])  # colour channels differ
    env.close()
    small = _pixels_or_skip("dmc/cartpole_swingup", image_size=32)
    assert small.reset()["image"].shape == (3, 32, 32)
    small.close()


def test_unknown_task_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown DeepMind Control task 'dmc/walker_wlak'.*dmc/walker_walk"):
        _env("dmc/walker_wlak")
    with pytest.raises(ValueError, match=r"unknown DeepMind Control task 'dmc-proprio/nosuchdomain_run'"):
        _env("dmc-proprio/nosuchdomain_run")
    assert "walker_walk" in dmc_tasks() and "ball_in_cup_catch" in dmc_tasks()


@pytest.mark.parametrize("env_id,message", [
    ("dmc/walker_wlak", "unknown DeepMind Control task 'dmc/walker_wlak'"),
    ("dmc-proprio/cheetah", "unknown DeepMind Control task 'dmc-proprio/cheetah'"),
    ("dmcx/walker_walk", "config `env` must be"),
])  # fmt: skip
def test_cli_bad_dmc_id_is_one_line_exit_2(tmp_path, capsys, env_id, message):
    code = main(["train", "--config", "dmc,dmc_small,debug", "--env", env_id, "--logdir", str(tmp_path / "x"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dreamer-fast: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())  # nothing written


def _cli(args: list[str], env: dict[str, str], patch: str = "pass") -> subprocess.CompletedProcess:
    """``dreamer-fast`` in a fresh process (dm-control picks its GL backend once per process)."""
    code = ("import sys, dreamer_fast.envs.dmc as d; " + patch + "; from dreamer_fast.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _train_args(env_id: str, logdir: Path, steps: int = 40) -> list[str]:
    return ["train", "--config", "dmc,dmc_small,debug", "--env", env_id, "--logdir", str(logdir), "--steps",
            str(steps), "--set", "prefill=20", "--no-progress"]


@pytest.mark.parametrize("gl,patch,message", [
    (None, "d._gl_library = lambda name: False", "no OpenGL backend was found"),
    ("glfw", "pass", "needs a display"),
    ("bogus", "pass", "could not load the OpenGL backend MUJOCO_GL='bogus'"),
])  # fmt: skip
def test_pixels_without_gl_is_one_line_exit_2(tmp_path, gl, patch, message):
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY")}
    if gl:
        env["MUJOCO_GL"] = gl
    done = _cli(_train_args("dmc/walker_walk", tmp_path / "x"), env, patch)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and message in done.stderr and "libosmesa6" in done.stderr, done.stderr
    assert [line for line in err if line.startswith("dreamer-fast: error:")] == err[-1:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())  # nothing written


def test_proprio_needs_no_gl(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    done = _cli(_train_args("dmc-proprio/cartpole_balance", tmp_path / "run"), env,
                "d._gl_library = lambda name: False")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_pixel_training_run_in_a_fresh_process(tmp_path):
    """dm-control with Mesa's EGL loaded before torch's optimisers (which load triton): the run completes (loading
    triton after Mesa's LLVM crashed the process)."""
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    done = _cli(_train_args("dmc/cartpole_swingup", tmp_path / "run", steps=60), env)
    if done.returncode == 2 and "OpenGL" in done.stderr:
        pytest.skip(f"no OpenGL rendering here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "run").glob("openloop_*.gif"))


def test_dmc_preset_is_dreamerv2s_official_dmc_section():
    c = load_config("dmc")
    assert (c.env, c.action_repeat, c.time_limit, c.prefill, c.train_every) == ("dmc/walker_walk", 2, 0, 5000, 5)
    assert (c.deter, c.hidden, c.stoch, c.classes, c.cnn_depth, c.mlp_layers, c.mlp_units) == (200, 200, 32, 32, 48,
                                                                                               4, 400)
    assert (c.batch_size, c.batch_length, c.horizon, c.lam, c.discount) == (50, 50, 15, 0.95, 0.99)
    assert (c.model_lr, c.actor_lr, c.critic_lr, c.actor_ent) == (3e-4, 8e-5, 8e-5, 1e-4)
    assert (c.actor_grad, c.kl_scale, c.kl_free, c.kl_balance, c.clip_rewards) == ("dynamics", 1.0, 1.0, 0.8, "none")
    assert c.replay_ends == 0.0 and c.actor_dist == "auto" and c.actor_min_std == 0.1


def test_dmc_small_stacks_on_dmc():
    c, base = load_config("dmc,dmc_small"), load_config("dmc")
    assert (c.batch_size, c.batch_length, c.stoch, c.classes, c.cnn_depth, c.mlp_layers) == (16, 32, 16, 16, 16, 2)
    for key in ("env", "action_repeat", "time_limit", "train_every", "model_lr", "actor_lr", "critic_lr", "actor_ent",
                "actor_grad", "kl_scale", "kl_free", "discount", "clip_rewards", "deter", "hidden"):
        assert getattr(c, key) == getattr(base, key), key
    assert load_config("dmc,dmc_small", {"env": "dmc-proprio/walker_walk"}).env == "dmc-proprio/walker_walk"
