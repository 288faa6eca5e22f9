"""The agent's configuration: one flat dataclass, presets in ``dreamer_fast/configs/<name>.yaml``, overrides.

Defaults are DreamerV2's Atari configuration (the official code's ``configs.yaml``, ``atari`` section); a preset file
lists only what it changes. Presets stack: ``load_config("atari,debug", {"steps": 5000})`` (or
``load_config(["atari", "debug"], ...)``) applies ``atari`` then ``debug`` over the defaults, then the overrides.
Unknown keys and values of the wrong type or out of range raise ``ValueError`` naming the key.

Each field's comment in :class:`Config` is its documentation (``dreamer-fast train --help`` prints it, with the
section comment above it): every field has one, and :func:`field_docs` reads them from this file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import io
import math
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
# Keys that take one of a few strings.
CHOICES = {"backend": ("auto", "fused", "reference"), "bf16": ("auto", "true", "false"),
           "clip_rewards": ("tanh", "none"), "actor_grad": ("reinforce", "dynamics"),
           "return_norm": ("none", "percentile"), "actor_dist": ("auto", "onehot", "trunc_normal"),
           "vector_env": ("auto", "async", "sync"), "cuda_graphs": ("auto", "on", "off")}


@dataclass
class Config:
    # ---- run
    env: str = "atari/Pong"  # "atari/<Game>" (any ALE game), "gym/<gymnasium id>" (CartPole-v1, Pendulum-v1, ...),
    # "dmc/<domain>_<task>" (DeepMind Control pixels: walker_walk, ...) or "dmc-proprio/<domain>_<task>" (its state)
    steps: int = 200_000_000 // 4  # policy (agent) steps in total; env frames = steps * action_repeat on Atari
    seed: int = 0  # seeds Python, NumPy, torch, the replay sampler and the environments
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    backend: str = "auto"  # dreamer_fast op backend: "auto" | "fused" | "reference"
    bf16: str = "false"  # bfloat16 autocast of the networks' GEMMs (LayerNorm, distributions, losses in float32):
    # "auto" (the atari preset: the official code's 16-bit mixed precision, on CPUs with native bf16 GEMMs),
    # "true" or "false"; dreamer_fast.cpu.resolve_bf16 decides "auto"
    threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    cuda_graphs: str = "auto"  # the update as one captured CUDA graph, replayed per batch: "on" (CUDA devices only,
    # one process), "off", or "auto" (off: capture is not yet verified on a GPU); dreamer_fast.agent.update_graph
    # ---- environment
    num_envs: int = 1  # environments collecting in lock-step: one batched policy step for all of them per step;
    # each keeps its own episodes in the replay, and steps (train_every, log_every, ...) count all of them
    vector_env: str = "auto"  # how num_envs > 1 environments run: "async" (a process each, gymnasium's
    # AsyncVectorEnv), "sync" (one after the other in the training process), "auto" (async for Atari, sync for gym)
    action_repeat: int = 4  # Atari frame skip (gym and DMC tasks: repeats of the same action)
    image_size: int = 64  # side of the square image observations: grayscale Atari, RGB DMC (the conv encoder takes 64)
    noop_max: int = 30  # Atari: up to this many no-op actions at reset
    sticky_actions: float = 0.25  # Atari: probability that the previous action repeats instead of the new one
    time_limit: int = 27_000  # policy steps per episode (Atari: 108k frames); 0 = the env's own limit (DMC: 1000 env
    # steps)
    # ---- replay
    replay_capacity: int = 2_000_000  # steps kept (oldest episodes dropped, their files deleted)
    batch_size: int = 16  # sequences per training batch (B)
    batch_length: int = 50  # steps per sampled sequence (T)
    replay_ends: float = 0.0  # share of sampled sequences that end at an episode's last step (0 = uniform windows)
    prefill: int = 50_000  # policy steps of uniformly random actions before training starts
    train_every: int = 16  # policy steps per training update (summed over all envs)
    train_steps: int = 1  # updates per training round
    # ---- world model
    deter: int = 600  # size of the RSSM's deterministic (GRU) state
    hidden: int = 600  # width of the RSSM's hidden layers (img_in before the GRU, img_out, obs_out)
    stoch: int = 32  # categorical latent variables (S)
    classes: int = 32  # classes per latent variable (K)
    unimix: float = 0.0  # uniform mixture in the latents' probabilities (DreamerV3: 0.01; V2: 0)
    cnn_depth: int = 48  # channels of the first conv of the image encoder (then x2, x4, x8); the decoder mirrors it
    mlp_layers: int = 4  # reward, discount, actor, critic heads and the vector encoder/decoder
    mlp_units: int = 400  # width of those MLPs
    kl_balance: float = 0.8  # share of the KL gradient that trains the prior (the rest trains the posterior)
    kl_free: float = 0.0  # free nats: KL below this is not penalised
    kl_free_avg: bool = True  # kl_free clamps the batch-mean KL (true) or each position's KL (false)
    kl_scale: float = 0.1  # weight of the KL term in the world-model loss
    image_scale: float = 1.0  # weight of the image reconstruction loss
    vector_scale: float = 1.0  # weight of the vector-observation reconstruction loss
    vector_symlog: bool = False  # vector observations enter the encoder as symlog(x) = sign(x)·ln(1 + |x|) and the
    # decoder predicts them in that space (DreamerV3's remedy for unscaled inputs; DreamerV2: false); images unchanged
    reward_scale: float = 1.0  # weight of the reward loss
    discount_scale: float = 5.0  # weight of the discount (continue) loss
    discount_terminal_weight: float = 1.0  # weight of the terminal steps' terms in the discount loss (the other
    # steps weigh 1; the loss stays a mean over all steps): > 1 makes the rare terminations count more (DreamerV2: 1)
    clip_rewards: str = "tanh"  # "tanh" | "none": applied to the reward target of the world model
    discount: float = 0.999  # gamma: the discount head's target is discount * (1 - is_terminal)
    model_lr: float = 2e-4  # world-model learning rate (AdamW)
    # ---- behaviour
    horizon: int = 15  # imagined steps from every posterior state (H)
    lam: float = 0.95  # lambda of the lambda-returns
    actor_grad: str = "reinforce"  # "reinforce" (rho = 1, Atari) | "dynamics" (rho = 0, continuous control)
    actor_ent: float = 1e-3  # weight of the actor's entropy bonus (eta)
    actor_unimix: float = 0.0  # uniform mixture in the one-hot actor's probabilities (DreamerV3: 0.01; V2: 0)
    return_norm: str = "none"  # "none" (DreamerV2) | "percentile" (DreamerV3: advantages / max(1, P95 - P5))
    return_norm_decay: float = 0.99  # EMA decay of the return percentiles when return_norm = "percentile"
    actor_dist: str = "auto"  # "auto" (onehot for discrete, trunc_normal for continuous) | "onehot" | "trunc_normal"
    actor_min_std: float = 0.1  # lower bound of the truncated-normal actor's standard deviation
    actor_init_std: float = 1.0  # the truncated-normal actor's standard deviation at zero output
    slow_target_update: int = 100  # updates between hard copies of the critic into the slow target critic
    actor_lr: float = 4e-5  # actor learning rate (AdamW)
    critic_lr: float = 1e-4  # critic learning rate (AdamW)
    opt_eps: float = 1e-5  # epsilon of the three AdamW optimisers
    grad_clip: float = 100.0  # gradient-norm clip of each optimiser step
    weight_decay: float = 1e-6  # decoupled (AdamW) weight decay of the three optimisers
    max_nonfinite_updates: int = 10  # consecutive updates with a non-finite loss or grad norm (each skipped) that
    # stop the run with exit status 2; 0 = never stop
    # ---- logging, evaluation, checkpoints (all in policy steps)
    log_every: int = 1_000  # metrics (means since the last log) to metrics.csv and TensorBoard every N steps
    checkpoint_every: int = 10_000  # checkpoint.pt every N steps
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
                    "discount_terminal_weight", "actor_ent", "weight_decay"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"config `{key}` must be finite and >= 0, got {value!r}")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config `{key}` must be one of {allowed}, got {getattr(self, key)!r}")
        if self.eval_every and not self.eval_episodes:
            raise ValueError(f"config `eval_every` ({self.eval_every}) needs `eval_episodes` > 0 (episodes per "
                             "evaluation)")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"config `device` must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if "/" not in self.env or self.env.split("/", 1)[0] not in ("atari", "gym", "dmc", "dmc-proprio"):
            raise ValueError(f"config `env` must be 'atari/<Game>', 'gym/<gymnasium id>', 'dmc/<domain>_<task>' or "
                             f"'dmc-proprio/<domain>_<task>', got {self.env!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


class FieldDoc(NamedTuple):
    section: str  # the ``# ---- <section>`` comment above the field
    doc: str  # the field's comment and its continuation lines, joined


@functools.cache
def field_docs() -> dict[str, FieldDoc]:
    """Every :class:`Config` field's documentation, read from its comment in this file: the comment after the field
    and the comment-only lines right below it (up to the next field, blank line or ``# ----`` section comment)."""
    source = Path(__file__).read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Config")
    docs: dict[str, FieldDoc] = {}
    section = ""
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        for row in range(stmt.lineno - 1, 0, -1):  # the nearest section comment above
            if comments.get(row, "").startswith("----"):
                section = comments[row].strip("- ")
                break
        parts = [comments.get(stmt.end_lineno, "")]
        row = stmt.end_lineno + 1
        while lines[row - 1].lstrip().startswith("#") and not comments[row].startswith("----"):
            parts.append(comments[row])
            row += 1
        docs[stmt.target.id] = FieldDoc(section, " ".join(p for p in parts if p))
    return docs


def _yes_no(value: Any) -> bool | None:
    """A boolean, or a yes/no spelling of one ("1", "true", "yes", "on" / "0", "false", "no", "off"); else None."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    return True if text in ("1", "true", "yes", "on") else False if text in ("0", "false", "no", "off") else None


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Converts an override (often a string from the command line) to the type of the field's default."""
    kind = type(default)
    if kind is str and {"true", "false"} <= set(CHOICES.get(key, ())):  # a choice with a yes/no (bf16: auto|true|false)
        flag = _yes_no(value)
        if flag is not None:
            return "true" if flag else "false"
        value = value.strip().lower() if isinstance(value, str) else value
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            flag = _yes_no(text)
            if flag is None:
                raise ValueError(f"config `{key}` must be a boolean (true/false), got {value!r}")
            return flag
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


def preset_names(preset: str | Sequence[str]) -> list[str]:
    """``"atari,debug"`` or ``["atari", "debug"]`` (items may hold commas too) -> ``["atari", "debug"]``."""
    items = [preset] if isinstance(preset, str) else list(preset)
    names = [name.strip() for item in items for name in item.split(",")]
    if not names or not all(names):
        raise ValueError(f"config presets must be non-empty names separated by commas, got {','.join(items)!r}")
    return names


def preset_values(name: str) -> dict[str, Any]:
    """The changes ``dreamer_fast/configs/<name>.yaml`` makes to the defaults (keys checked, values as written)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown config preset {name!r}; available: {', '.join(presets())}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of config keys to values")
    unknown = sorted(set(values) - {f.name for f in fields(Config)})
    if unknown:
        raise ValueError(f"{path}: unknown config key(s) {unknown}")
    return values


def load_config(preset: str | Sequence[str] = "atari", overrides: dict[str, Any] | None = None) -> Config:
    """The presets ``dreamer_fast/configs/<name>.yaml`` applied left to right over the defaults, then ``overrides``.

    ``preset``: one name, several separated by commas (``"atari,debug"``), or a list of them."""
    values: dict[str, Any] = {}
    for name in preset_names(preset):
        values.update(preset_values(name))
    values.update(overrides or {})
    return config_from_dict(values)


def show_value(value: Any) -> str:
    """A value as config.yaml and the command line write it (true, 0.0001, atari/Pong)."""
    return value if isinstance(value, str) else yaml.safe_dump(value).removesuffix("\n...\n").strip()


def config_from_dict(values: dict[str, Any]) -> Config:
    defaults = {f.name: f.default for f in fields(Config)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {', '.join(defaults)}")
    return Config(**{k: _coerce(k, v, defaults[k]) for k, v in values.items()}).validate()
