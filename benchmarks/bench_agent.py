"""One full DreamerV2 training update (world model + actor + critic) at the paper's Atari sizes: B=16 sequences of
T=50 64x64 frames, imagination H=15 from all 800 posterior states, 18 actions; fused backend vs reference backend
in the same run (the only difference: RSSM observe/imagine, KL balancing, λ-returns and straight-through sampling).

Run:  pytest benchmarks/bench_agent.py --benchmark-only --benchmark-columns=min,median,mean,rounds

Each update takes seconds on a 2-core CPU (the conv encoder/decoder over 800 frames dominates), so few rounds.
The ``small`` case is the CPU-sized preset's update (``--config small``), where the RSSM is a larger share.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamer_fast.agent.agent import Agent
from dreamer_fast.config import load_config
from dreamer_fast.envs import ActionSpace

ACTIONS = 18


def batch(T: int, B: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {
        "image": rng.integers(0, 255, (T, B, 1, 64, 64), dtype=np.uint8),
        "action": np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, (T, B))],
        "reward": rng.normal(size=(T, B)).astype(np.float32),
        "is_first": np.zeros((T, B), bool),
        "is_last": np.zeros((T, B), bool),
        "is_terminal": np.zeros((T, B), bool),
    }
    data["is_first"][0] = True
    data["is_first"][T // 2, 0] = True  # an episode boundary inside one sequence
    return data


def train_update(preset: str, backend: str, warm: bool):
    """A `preset` train_step on the benchmark batch, as a closure, run once first if `warm` (allocator, MKL weight
    packing, oneDNN primitives): `backend` is "fused", "reference" or "fused-bf16" (the fused backend with
    `bf16: true`)."""
    config = load_config(preset, {"backend": backend.removesuffix("-bf16"), "bf16": backend.endswith("-bf16")})
    torch.manual_seed(0)
    agent = Agent({"image": ((1, 64, 64), np.uint8)}, ActionSpace(True, ACTIONS), config)
    data = batch(config.batch_length, config.batch_size)
    if warm:
        agent.train_step(data)
    return lambda: agent.train_step(data)


@pytest.mark.parametrize("preset", ["atari", "small"])
@pytest.mark.parametrize("backend", ["fused", "reference", "fused-bf16"])
def test_train_update(benchmark, preset, backend):
    """`fused-bf16`: the fused backend with `bf16: true` (bfloat16 autocast of the GEMMs and convs; AMX here)."""
    config = load_config(preset)
    benchmark.group = f"agent train_step ({preset} preset, B={config.batch_size} T={config.batch_length} " \
                      f"H={config.horizon})"
    update = train_update(preset, backend, warm=not benchmark.disabled)
    metrics = benchmark.pedantic(update, rounds=2 if preset == "atari" else 5, iterations=1)
    values = {k: v.item() for k, v in metrics.items()}  # 0-d tensors; the benchmark batch has no terminal step
    assert np.isnan(values.pop("model/discount_terminal_mean")) and all(np.isfinite(v) for v in values.values())
    benchmark.extra_info["updates_per_s"] = 1.0 / benchmark.stats.stats.mean if benchmark.stats else None


@pytest.mark.parametrize("backend", ["fused", "reference", "fused-bf16"])
def test_policy_step(benchmark, backend):
    """One acting step at the Atari preset, one environment (B=1): conv encoder + RSSM obs_step + actor + sample, as
    `dreamer-fast train` runs it at every environment step (`fused-bf16`: `bf16: true`, which acts in float32 on the
    CPU)."""
    config = load_config("atari", {"backend": backend.removesuffix("-bf16"), "bf16": backend.endswith("-bf16")})
    benchmark.group = "agent policy step (atari preset, B=1, explore)"
    agent = Agent({"image": ((1, 64, 64), np.uint8)}, ActionSpace(True, ACTIONS), config)
    obs = {"image": batch(1, 1)["image"][0], "is_first": np.array([True])}
    _, state = agent.policy(obs, None)
    obs["is_first"] = np.array([False])
    for _ in range(10):
        _, state = agent.policy(obs, state)
    action, _ = benchmark(agent.policy, obs, state)
    assert action.shape == (1, ACTIONS)


@pytest.mark.parametrize("ratio", ["reference/fused", "reference/fused-bf16"])
def test_train_update_ratio(benchmark, ratio, interleaved_ratio):
    """The update target (fused >= 2x the reference backend) as an interleaved A/B (printed at the end of the run):
    the `atari` update on the reference backend (float32) over the fused one, float32 or bf16 (the preset's
    default), timed back to back in every round. The benchmark's own time is that of one pair."""
    benchmark.group = "agent train_step interleaved ratios (atari preset; time = one A+B pair)"
    reference, fused = ratio.split("/")
    warm = not benchmark.disabled
    first, second = train_update("atari", reference, warm), train_update("atari", fused, warm)
    interleaved_ratio(benchmark, ratio, first, second, rounds=4)


@pytest.mark.parametrize("step", ["adamw", "masked"])
def test_world_model_optimiser_step(benchmark, step):
    """The world model's AdamW step at the Atari preset (20 M parameters), plain (``opt.step()``) against the update's
    device-side non-finite skip (``masked_step``: a copy and a select pass over parameters and AdamW state)."""
    from dreamer_fast.agent.masked_step import masked_step

    benchmark.group = "world-model optimiser step (atari preset)"
    torch.manual_seed(0)
    agent = Agent({"image": ((1, 64, 64), np.uint8)}, ActionSpace(True, ACTIONS), load_config("atari", {"bf16": False}))
    opt = agent.model_opt
    for p in agent.wm.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ok = torch.tensor(True)
    run = opt.step if step == "adamw" else lambda: masked_step(opt, ok)
    run()  # the AdamW state and the copies' buffers exist from here on
    benchmark.pedantic(run, rounds=7, iterations=1)
