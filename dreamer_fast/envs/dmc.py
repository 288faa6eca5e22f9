"""DeepMind Control Suite tasks through ``dm-control`` (MuJoCo), with DreamerV2's protocol.

``dmc/<domain>_<task>`` (e.g. ``dmc/walker_walk``) observes ``{"image": (3, S, S) uint8}``: RGB pixels rendered
headless from camera 0 (2 for quadruped), ``S = config.image_size`` (64 as in the paper).
``dmc-proprio/<domain>_<task>`` observes ``{"vector": (n,) float32}``: the task's state observations flattened in
the suite's order. Actions are the suite's box rescaled to ``[-1, 1]``.

Episodes end by the suite's own time limit (1000 env steps for every suite task, i.e. 500 agent steps at action
repeat 2): ``is_last`` True with ``is_terminal`` False, as in DreamerV2 (``is_terminal`` only where the suite
reports discount 0, which no suite task does). ``config.action_repeat`` repeats each action (rewards summed, at most
1 per env step, so returns are in [0, 1000]); ``config.time_limit`` > 0 adds a limit of that many agent steps.

Pixels need an OpenGL backend. With ``MUJOCO_GL`` unset it is chosen here, before dm-control loads: ``egl`` where
libEGL is installed, else ``osmesa`` where libOSMesa is; a set ``MUJOCO_GL`` is used as it is. Without one, a pixel
task raises :class:`RenderingUnavailable` with one line saying what to install (proprio tasks need no GL).
Install the dependencies with ``pip install -e '.[dmc]'``.
"""

from __future__ import annotations

import ctypes.util
import difflib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.wrappers import TimeLimit

from dreamer_fast.envs.base import Env
from dreamer_fast.envs.gym import ActionRepeat

if TYPE_CHECKING:
    from dreamer_fast.config import Config

GLFW_NAMES = ("glfw", "on", "enable", "enabled", "true", "1")  # dm-control's spellings of MUJOCO_GL=glfw
CAMERAS = {"quadruped": 2}  # DreamerV2's camera per domain; every other domain renders camera 0
INSTALL = "pip install -e '.[dmc]' (or pip install dm-control)"
GL_HINT = ("install EGL (apt-get install libegl1) or OSMesa (apt-get install libosmesa6) and set MUJOCO_GL=egl or "
           "MUJOCO_GL=osmesa, or use the state observations of dmc-proprio/")


class RenderingUnavailable(RuntimeError, ValueError):
    """No OpenGL backend can render a pixel task. A ``RuntimeError``; also a ``ValueError``, so the command line
    reports it, as every bad input, with one line and exit status 2."""


def _gl_library(name: str) -> bool:
    return ctypes.util.find_library(name) is not None


def select_gl(pixels: bool = True) -> str | None:
    """The ``MUJOCO_GL`` backend dm-control will use: the variable as set, else ``egl`` or ``osmesa`` (whichever
    library is installed, in that order; the variable is then set for dm-control), else None (no backend; for
    ``pixels=False`` the variable is set to ``disable`` so that dm-control loads without one). Once dm-control's
    renderer is loaded, the backend it chose then."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if "dm_control._render" in sys.modules:  # loaded earlier: it keeps the backend it found then, if any
        return sys.modules["dm_control._render"].BACKEND
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if _gl_library(library):
            os.environ["MUJOCO_GL"] = backend
            return backend
    if not pixels:
        os.environ["MUJOCO_GL"] = "disable"
    return None


def _load_triton() -> None:
    """Loads triton (when installed) before the GL libraries. Mesa's EGL and OSMesa drivers (llvmpipe) load LLVM;
    triton, which torch imports with its optimisers, carries its own LLVM, and loading it after Mesa's crashes the
    process (segmentation fault). In this order both work."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is not None:
        try:
            import triton  # noqa: F401
        except Exception:  # noqa: BLE001 -- a triton that does not load is torch's concern, not the env's
            pass


def _suite(env_id: str) -> Any:
    """``dm_control.suite``, with a one-line error naming ``env_id`` when dm-control is missing or its GL backend
    fails to load."""
    if "dm_control.suite" not in sys.modules:
        _load_triton()
    try:
        from dm_control import suite
    except ImportError as e:
        if e.name and e.name.split(".")[0] in ("dm_control", "mujoco", "dm_env"):
            raise ValueError(f"env {env_id!r} needs dm-control: {INSTALL}") from None
        raise _gl_failure(env_id, "could not load", e) from None
    except Exception as e:  # noqa: BLE001 -- a GL library that fails to load surfaces as any exception type
        raise _gl_failure(env_id, "could not load", e) from None
    return suite


def _gl_failure(env_id: str, what: str, error: BaseException) -> RenderingUnavailable:
    return RenderingUnavailable(f"env {env_id!r}: dm-control {what} the OpenGL backend "
                                f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({_first_line(error)}); {GL_HINT}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def dmc_tasks() -> list[str]:
    """The ``<domain>_<task>`` names ``make_env`` accepts after ``dmc/`` or ``dmc-proprio/`` (``walker_walk``, ...)."""
    select_gl(pixels=False)
    return sorted(f"{domain}_{task}" for domain, task in _suite("dmc").ALL_TASKS)


class DMCGym(gymnasium.Env):
    """One suite task seen through gymnasium's API, observations left as the suite's dicts.

    ``step`` returns ``terminated`` at a last step with discount 0 and ``truncated`` at any other last step (the
    suite's time limit); the reward of a step is the suite's (0 where it is None). ``reset(seed=s)`` reseeds the
    task's random state (its initial states).
    """

    def __init__(self, env: Any) -> None:
        self.dmc = env
        spec = env.action_spec()
        self.action_space = gymnasium.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32),
                                                 shape=spec.shape, dtype=np.float32)
        self.observation_space = gymnasium.spaces.Dict(
            {k: gymnasium.spaces.Box(-np.inf, np.inf, s.shape, np.float64) for k, s in env.observation_spec().items()})

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        if seed is not None:
            self.dmc.task.random.seed(seed)
        return self.dmc.reset().observation, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        time_step = self.dmc.step(action)
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0)
        return time_step.observation, float(time_step.reward or 0.0), terminated, bool(last and not terminated), {}

    def close(self) -> None:
        self.dmc.close()


def flatten(observation: dict[str, Any]) -> np.ndarray:
    """The suite's observation dict as one float32 vector, in the suite's key order."""
    return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in observation.values()])


def make_dmc(kind: str, name: str, config: Config, seed: int) -> Env:
    """The suite task ``name`` (``"<domain>_<task>"``): pixels for ``kind == "dmc"``, the state vector for
    ``"dmc-proprio"``. Raises ValueError for an unknown task, :class:`RenderingUnavailable` when pixels cannot be
    rendered."""
    env_id = f"{kind}/{name}"
    pixels = kind == "dmc"
    backend = select_gl(pixels)
    suite = _suite(env_id)
    tasks = {f"{domain}_{task}": (domain, task) for domain, task in suite.ALL_TASKS}
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=3) or ["walker_walk", "cartpole_swingup"]
        raise ValueError(f"unknown DeepMind Control task {env_id!r}; did you mean one of "
                         f"{[f'{kind}/{c}' for c in close]}? ({len(tasks)} tasks: <domain>_<task>)")
    if pixels and backend is None:
        raise RenderingUnavailable(f"env {env_id!r} renders pixels, but no OpenGL backend was found; {GL_HINT}")
    if pixels and backend in GLFW_NAMES and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise RenderingUnavailable(f"env {env_id!r}: MUJOCO_GL={backend!r} (GLFW) needs a display and none is set "
                                   f"(DISPLAY); {GL_HINT}")
    domain, task = tasks[name]
    inner = DMCGym(suite.load(domain, task, task_kwargs={"random": seed}))
    env: gymnasium.Env = inner
    if config.action_repeat > 1:
        env = ActionRepeat(env, config.action_repeat)
    if config.time_limit > 0:
        env = TimeLimit(env, max_episode_steps=config.time_limit)
    if not pixels:
        size = sum(int(np.prod(space.shape)) for space in inner.observation_space.values())
        return Env(env, "vector", (size,), np.dtype(np.float32), flatten, seed=seed, name=env_id)
    side, camera = config.image_size, CAMERAS.get(domain, 0)
    physics = inner.dmc.physics

    def render(_: Any) -> np.ndarray:  # the state after the last repeated step, rendered once per agent step
        return np.ascontiguousarray(physics.render(side, side, camera_id=camera).transpose(2, 0, 1))

    try:
        render(None)
    except Exception as e:  # noqa: BLE001 -- any failure of the GL context is reported as one line
        inner.close()
        raise _gl_failure(env_id, "could not render with", e) from None
    return Env(env, "image", (3, side, side), np.dtype(np.uint8), render, seed=seed, name=env_id)
