"""Learning regression: a short CartPole run on a fixed seed must end far above random play.

A small model (deter 64, 8x8 latents, 2x64 heads) trains for 2,500 agent steps (500 of prefill, 400 updates) on
``gym/CartPole-v1`` with the REINFORCE actor, then plays 5 greedy episodes. Random play scores ~22; an agent whose
learning is broken scores less (a sign-flipped actor objective learns to drop the pole: ~9). The threshold sits
between the returns of learning agents over several seeds and those of broken ones (the numbers, their command and
CPU are in docs/RESULTS.md, "Learning regression check"). About 25 s of one core on an AMD EPYC (Zen 4).
"""

from __future__ import annotations

import torch

from dreamer_fast.config import config_from_dict
from dreamer_fast.training.loop import train

SEED = 0
THRESHOLD = 40.0  # mean greedy return: seeds 0-4 measured 69-123, broken learning 9.2-9.8, random ~22
CONFIG = {
    "env": "gym/CartPole-v1", "action_repeat": 1, "time_limit": 0, "steps": 2_500, "seed": SEED, "threads": 1,
    "deter": 64, "hidden": 64, "stoch": 8, "classes": 8, "cnn_depth": 4, "mlp_layers": 2, "mlp_units": 64,
    "batch_size": 16, "batch_length": 16, "horizon": 5, "prefill": 500, "train_every": 5,
    "replay_capacity": 10_000, "discount": 0.99, "clip_rewards": "none", "kl_scale": 1.0,
    "eval_episodes": 5, "log_every": 500, "checkpoint_every": 100_000,
}  # fmt: skip


def test_short_cartpole_run_learns_far_above_random(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = train(config_from_dict(CONFIG), tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    returns = result["eval_returns"]
    assert result["updates"] >= 390 and len(returns) == 5, result
    assert sum(returns) / len(returns) > THRESHOLD, f"greedy returns {returns} after {result['updates']} updates"


def _learning_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "learning" / "learning.py"
    spec = importlib.util.spec_from_file_location("learning_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_benchmark_report_keeps_seed_curves_and_plots_with_anchors(tmp_path, capsys):
    tool = _learning_tool()
    runs, results = tmp_path / "runs", tmp_path / "results"
    for seed, offset in ((0, 0.0), (3, 100.0)):
        logdir = runs / "dmc-proprio-cartpole_swingup" / f"seed{seed}"
        logdir.mkdir(parents=True)
        (logdir / "config.yaml").write_text("env: dmc-proprio/cartpole_swingup\naction_repeat: 2\nsteps: 1000\n")
        (logdir / "metrics.csv").write_text("step,name,value\n500,episode/return,10.5\n500,model/loss,3.0\n"
                                            f"1000,episode/return,{20 + offset}\n1000,eval/return,{30 + offset}\n")
    assert tool.main(["report", "--out", str(runs), "--results", str(results)]) == 0
    folder = results / "dmc-proprio-cartpole_swingup"
    assert (folder / "seed3.csv").read_text() == ("kind,env_step,agent_step,return\nepisode,1000,500,10.5000\n"
                                                  "episode,2000,1000,120.0000\neval,2000,1000,130.0000\n")
    assert (folder / "seed0_config.yaml").is_file() and (folder / "dmc-proprio-cartpole_swingup.png").stat().st_size
    assert [a["points"][100000] for a in tool.anchors_for(folder.name)] == [464, 591]  # DreamerV2, DreamerV3
    capsys.readouterr()
    assert tool.main(["report", "--results", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("learning: error: nothing to report")
