"""The agent's configuration: one flat dataclass, presets in ``dreamer_fast/configs/<name>.yaml``, overrides.

Defaults are DreamerV2's Atari configuration (the official code's ``configs.yaml``, ``atari`` section); a preset file
lists only what it changes. ``load_config("small", {"steps": 5000})`` gives the ``small`` preset with one override;
unknown keys and values of the wrong type or out of range raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class Config:
    # ---- run
    env: str = "atari/Pong"  # "atari/<Game>" (any ALE game) or "gym/<gymnasium id>" (CartPole-v1, Pendulum-v1, ...)
    steps: int = 200_000_000 // 4  # policy (agent) steps in total; env frames = steps * action_repeat on Atari
    seed: int = 0
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    backend: str = "auto"  # dreamer_fast op backend: "auto" | "fused" | "reference"
    bf16: str = "false"  # bfloat16 autocast of the networks' GEMMs (LayerNorm, distributions, losses in float32):
    # "auto" (the atari preset: the official code's 16-bit mixed precision, on CPUs with native bf16 GEMMs),
    # "true" or "false"; dreamer_fast.cpu.resolve_bf16 decides "auto"
    threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    # ---- environment
    num_envs: int = 1  # environments stepped in lock-step for collection
    action_repeat: int = 4  # Atari frame skip (gym tasks: repeats of the same action)
    image_size: int = 64
    noop_max: int = 30
    sticky_actions: float = 0.25
    time_limit: int = 27_000  # policy steps per episode (Atari: 108k frames); 0 = the env's own limit
    # ---- replay
    replay_capacity: int = 2_000_000  # steps kept (oldest episodes dropped, their files deleted)
    batch_size: int = 16
    batch_length: int = 50
    replay_ends: float = 0.0  # share of sampled sequences that end at an episode's last step (0 = uniform windows)
    prefill: int = 50_000  # policy steps of uniformly random actions before training starts
    train_every: int = 16  # policy steps per training update (summed over all envs)
    train_steps: int = 1  # updates per training round
    # ---- world model
    deter: int = 600
    hidden: int = 600
    stoch: int = 32
    classes: int = 32
    unimix: float = 0.0
    cnn_depth: int = 48
    mlp_layers: int = 4  # reward, discount, actor, critic heads and the vector encoder/decoder
    mlp_units: int = 400
    kl_balance: float = 0.8
    kl_free: float = 0.0
    kl_free_avg: bool = True
    kl_scale: float = 0.1
    image_scale: float = 1.0
    vector_scale: float = 1.0
    reward_scale: float = 1.0
    discount_scale: float = 5.0
    clip_rewards: str = "tanh"  # "tanh" | "none": applied to the reward target of the world model
    discount: float = 0.999
    model_lr: float = 2e-4
    # ---- behaviour
    horizon: int = 15
    lam: float = 0.95
    actor_grad: str = "reinforce"  # "reinforce" (rho = 1, Atari) | "dynamics" (rho = 0, continuous control)
    actor_ent: float = 1e-3
    actor_unimix: float = 0.0  # uniform mixture in the one-hot actor's probabilities (DreamerV3: 0.01; V2: 0)
    return_norm: str = "none"  # "none" (DreamerV2) | "percentile" (DreamerV3: advantages / max(1, P95 - P5))
    return_norm_decay: float = 0.99  # EMA decay of the return percentiles when return_norm = "percentile"
    actor_dist: str = "auto"  # "auto" (onehot for discrete, trunc_normal for continuous) | "onehot" | "trunc_normal"
    actor_min_std: float = 0.1
    actor_init_std: float = 1.0
    slow_target_update: int = 100  # updates between hard copies of the critic into the slow target critic
    actor_lr: float = 4e-5
    critic_lr: float = 1e-4
    opt_eps: float = 1e-5
    grad_clip: float = 100.0
    weight_decay: float = 1e-6
    max_nonfinite_updates: int = 10  # consecutive updates with a non-finite loss or grad norm (each skipped) that
    # stop the run with exit status 2; 0 = never stop
    # ---- logging, evaluation, checkpoints (all in policy steps)
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    video_every: int = 0  # open-loop prediction GIF every N steps (0 = only at the end)
    eval_episodes: int = 0  # greedy evaluation episodes at the end of training (and at each eval_every)
    eval_every: int = 0  # greedy evaluation every N steps on a separate env; the best mean is kept as best.pt

    def validate(self) -> Config:
        """Raises ValueError naming the first bad key."""
        positive = ("steps", "num_envs", "action_repeat", "image_size", "replay_capacity", "batch_size",
                    "batch_length", "train_every", "train_steps", "deter", "hidden", "stoch", "classes", "cnn_depth",
                    "mlp_layers", "mlp_units", "horizon", "slow_target_update", "log_every", "checkpoint_every")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"config `{key}` must be > 0, got {getattr(self, key)!r}")
        for key in ("prefill", "noop_max", "time_limit", "video_every", "eval_episodes", "eval_every", "threads",
                    "seed", "max_nonfinite_updates"):
            if getattr(self, key) < 0:
                raise ValueError(f"config `{key}` must be >= 0, got {getattr(self, key)!r}")
        for key in ("model_lr", "actor_lr", "critic_lr", "opt_eps", "grad_clip", "actor_min_std", "actor_init_std"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"config `{key}` must be finite and > 0, got {value!r}")
        for key in ("unimix", "kl_balance", "lam", "discount", "sticky_actions", "replay_ends",
                    "actor_unimix", "return_norm_decay"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"config `{key}` must be in [0, 1], got {getattr(self, key)!r}")
        for key in ("kl_free", "kl_scale", "image_scale", "vector_scale", "reward_scale", "discount_scale",
                    "actor_ent", "weight_decay"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"config `{key}` must be finite and >= 0, got {value!r}")
        choices = {"clip_rewards": ("tanh", "none"), "actor_grad": ("reinforce", "dynamics"),
                   "actor_dist": ("auto", "onehot", "trunc_normal"), "backend": ("auto", "fused", "reference"),
                   "return_norm": ("none", "percentile"), "bf16": ("auto", "true", "false")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config `{key}` must be one of {allowed}, got {getattr(self, key)!r}")
        if self.eval_every and not self.eval_episodes:
            raise ValueError(f"config `eval_every` ({self.eval_every}) needs `eval_episodes` > 0 (episodes per "
                             "evaluation)")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"config `device` must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if "/" not in self.env or self.env.split("/", 1)[0] not in ("atari", "gym"):
            raise ValueError(f"config `env` must be 'atari/<Game>' or 'gym/<gymnasium id>', got {self.env!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Converts an override (often a string from the command line) to the type of the field's default."""
    kind = type(default)
    if key == "bf16" and isinstance(value, (bool, str)):  # a yes/no, or "auto"
        value = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value.strip().lower()
        value = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(value, value)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"config `{key}` must be a boolean (true/false), got {value!r}")
        try:
            value = kind(text.replace("_", ""))  # "1e-4", "50_000", "0.25"
        except ValueError:
            raise ValueError(f"config `{key}` must be of type {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not kind:
        raise ValueError(f"config `{key}` must be of type {kind.__name__}, got {value!r} ({type(value).__name__})")
    return value


def load_config(preset: str = "atari", overrides: dict[str, Any] | None = None) -> Config:
    """The preset ``dreamer_fast/configs/<preset>.yaml`` applied over the defaults, then ``overrides``."""
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown config preset {preset!r}; available: {', '.join(presets())}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values")
    values.update(overrides or {})
    return config_from_dict(values)


def config_from_dict(values: dict[str, Any]) -> Config:
    defaults = {f.name: f.default for f in fields(Config)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(defaults)}")
    return Config(**{k: _coerce(k, v, defaults[k]) for k, v in values.items()}).validate()
