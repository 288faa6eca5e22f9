"""The fused-vs-eager ratios on each supported torch release, on one CPU, releases interleaved.

For every release a Python with that torch and a tree whose ``dreamer_fast._C`` is built against it; the releases run
one after another in each pass (order reversed every other pass, so drift of the machine falls on all alike), and
each run times, interleaved round by round:

- RSSM observe at Atari sizes (T=50, B=16, forward + backward, ``bench_rssm.py -k test_observe``'s case): the fused
  backend with the rule's GEMM library, the fused backend on ATen's public ops only (``set_cpu_gemm("aten")``, what
  runs where a release lacks the private MKL/oneDNN ops), and the eager reference;
- the agent's training update (``bench_agent.py``'s ``train_update``, float32, ``--preset``): fused vs reference.

Ratios are medians of per-round ratios within a run, then the median over the passes.

Run:  python benchmarks/torch_releases.py /work/venvs/torch-2.12/bin/python=/path/to/tree-built-for-2.12 ... \\
          [--passes 2 --rounds 5 --preset small]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(rounds: int, preset: str) -> dict:
    """In the child: the interleaved timings of one release (this interpreter's torch)."""
    import bench_agent
    import bench_rssm
    import torch

    import dreamer_fast as df

    data = bench_rssm.observe_batch()
    models = {"fused": bench_rssm.rssm("fused"), "reference": bench_rssm.rssm("reference")}

    def observe(backend: str, gemm: str = "auto"):
        def run():
            m = models[backend]
            previous = df.set_cpu_gemm(gemm)
            post, prior = m.observe(*data[:3], noise=data[3])
            torch.autograd.grad(bench_rssm.world_model_loss(m, post, prior), [data[0], *m.parameters()])
            df.set_cpu_gemm(previous)

        return run

    runs = {
        "observe fused": observe("fused"),
        "observe fused, public ops": observe("fused", "aten"),
        "observe eager": observe("reference"),
        "update fused": bench_agent.train_update(preset, "fused", warm=True),
        "update reference": bench_agent.train_update(preset, "reference", warm=True),
    }
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # a rotating order
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {
        "torch": torch.__version__,
        "cpu_gemm": df.cpu_gemm(),
        "private_ops": sorted(set(df.private_aten_ops().values())),
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "observe eager/fused": ratio("observe eager", "observe fused"),
        "observe public/fused": ratio("observe fused, public ops", "observe fused"),
        "update reference/fused": ratio("update reference", "update fused"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("releases", nargs="*", help="PYTHON=TREE: an interpreter and the tree it imports from")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="small", help="the agent preset of the update")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds, args.preset)))
        return
    specs = [spec.split("=", 1) for spec in args.releases]
    if not specs or any(len(s) != 2 for s in specs):
        parser.error("give each release as PYTHON=TREE")
    results: dict[str, list[dict]] = {}
    for p in range(args.passes):
        for python, tree in specs if p % 2 == 0 else specs[::-1]:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, str(HERE)])}
            cmd = [python, __file__, "--child", "--rounds", str(args.rounds), "--preset", args.preset]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(got), flush=True)
            results.setdefault(got["torch"], []).append(got)
    keys = ("observe eager/fused", "observe public/fused", "update reference/fused")
    print("\n| torch | GEMM library (private ops) | observe: fused vs eager | observe: public-ops fallback vs fused "
          f"| update ({args.preset}): fused vs reference |")
    print("|---|---|---|---|---|")
    for version, runs in sorted(results.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in keys}
        print(f"| {version} | {runs[0]['cpu_gemm']} ({', '.join(runs[0]['private_ops'])}) | "
              f"{med[keys[0]]:.2f}× | {med[keys[1]]:.2f}× the time | {med[keys[2]]:.2f}× |")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
