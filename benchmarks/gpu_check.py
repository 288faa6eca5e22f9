"""One-call GPU verification: build for this GPU, run the test suite (CUDA cases included), time every op on the GPU.

    python benchmarks/gpu_check.py               # build in place for this GPU's arch, tests, GPU table
    python benchmarks/gpu_check.py --no-build    # use the extension already built
    python benchmarks/gpu_check.py --cxx /usr/bin/g++   # build with this compiler (see check_cpp_errors)
    python benchmarks/gpu_check.py --cxx /usr/bin/g++ --workers 16 --cuda-tests-first   # as run on an H200
    python benchmarks/gpu_check.py --no-tests --only elu   # time only the rows whose label contains "elu"

Prints one table: per op and dtype (float32, bfloat16), forward+backward time of fused, eager reference and
torch.compile(reference), and the speed-ups; then the no-grad RSSM acting step at B=1 and one full agent update at
the Atari preset (fused vs reference backend, float32 and bf16 autocast). The tests run after the timings (with
--cuda-tests-first, the CUDA cases before them), so that a time limit cuts the part CI also covers. Fails loudly (exit 2) when no GPU is visible: this script exists to
check the GPU, so skipping would hide that nothing was checked. Its latest table, with the GPU, the torch version
and the commit, belongs in docs/GPU.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def die(msg: str) -> None:
    print(f"gpu_check: FAILED: {msg}", file=sys.stderr)
    raise SystemExit(2)


def build(cxx: str | None) -> None:
    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", DREAMER_FAST_CUDA="1")
    if cxx:
        env["CXX"] = cxx
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    print(f"gpu_check: building for sm_{major}{minor}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)


CUDA_TESTS = "cuda or gpu or CUDA"  # the -k expression selecting every test that skips on a machine without a GPU

CPP_ERROR_PROBE = """
import torch, dreamer_fast
x = torch.randn(3, 4, 5)
try:
    torch.ops.dreamer_fast.kl_balance(x, x[:2], 0.8, 0.0, True, 0.0)
except RuntimeError as e:
    assert "prior_logits" in str(e), e
    print("gpu_check: C++ argument checks reach Python as RuntimeError")
"""


def check_cpp_errors() -> None:
    """A C++ check failing inside the extension must surface as a Python RuntimeError. With a compiler whose runtime
    differs from torch's (a g++ wrapper with its own -B linker/crt/libgcc paths is one) every C++ exception thrown by
    an extension kills the process with SIGSEGV, and the suite dies at its first bad-input test."""
    result = subprocess.run([sys.executable, "-c", CPP_ERROR_PROBE], cwd=ROOT)
    if result.returncode != 0:
        die(f"a C++ argument check crashed the process (exit {result.returncode}) instead of raising: the extension "
            f"was compiled with a C++ runtime that does not match torch's (CXX={os.environ.get('CXX', 'c++')}); "
            "rebuild with --cxx /usr/bin/g++ (or another compiler matching torch's libstdc++/libgcc)")


def run_tests(timeout_s: float, workers: int, select: str | None = None) -> str | None:
    """Runs the suite (CUDA cases included; only the tests matching ``select`` with -k when given); returns a failure
    description, or None when it passed. The timing table is still measured after a failure, so that one run of this
    script reports everything it can."""
    cmd = [sys.executable, "-m", "pytest", "tests/", "-q", "-p", "no:cacheprovider", "--durations=10"]
    if workers > 1:  # pytest-xdist
        cmd += ["-n", str(workers), "--max-worker-restart=100"]
    if select:
        cmd += ["-k", select]
    print(f"gpu_check: {' '.join(cmd)}", flush=True)
    try:
        result = subprocess.run(cmd, cwd=ROOT, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"tests did not finish in {timeout_s:.0f} s"
    return None if result.returncode == 0 else f"tests failed (exit {result.returncode})"


def cuda_time_ms(fn, reps: int = 50) -> float:
    """Median of `reps` timings with CUDA events, after warm-up (compiles happen in the warm-up)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def fwd_bwd(fn, inputs, grad_out=None):
    """Forward and backward of ``fn``: with ``grad_out``, backward from that (contiguous) gradient of its single
    output, as a network feeds an activation; else from the sum of its outputs."""
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]

    def run():
        out = fn(*inputs)
        if grad_out is not None:
            torch.autograd.grad(out, leaves, grad_out)
            return
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        torch.autograd.grad([o.float().sum() for o in outs], leaves)

    return run


def cases(device: torch.device, dtype: torch.dtype):
    """(name, inputs, fused, reference) for every op, at the sizes the CPU benchmarks use."""
    import dreamer_fast as df
    from dreamer_fast import reference as ref

    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, low=None):
        x = torch.randn(*shape, device=device, generator=g).to(dtype)
        if low is not None:
            x = torch.rand(*shape, device=device, generator=g).mul(1 - low).add(low).to(dtype)
        return x.requires_grad_()

    w = torch.randn(800, 32, 32, device=device, generator=g).to(dtype)
    out = [
        ("straight_through_categorical 800x32x32", [rnd(800, 32, 32)],
         lambda x: (df.straight_through_categorical(x, backend="fused")[0] * w).sum(),
         lambda x: (ref.straight_through_categorical_ref(x)[0] * w).sum()),
        ("kl_balance 50x16x32x32", [rnd(50, 16, 32, 32), rnd(50, 16, 32, 32)],
         lambda p, q: df.kl_balance(p, q, backend="fused")[0], lambda p, q: ref.kl_balance_ref(p, q)[0]),
    ]
    for T, B in ((15, 800), (50, 16)):
        inputs = [rnd(T, B), rnd(T, B), rnd(T, B, low=0.9), rnd(B)]
        out.append((f"lambda_return {T}x{B}", inputs,
                    lambda *x: df.lambda_return(*x, 0.95, backend="fused"), lambda *x: ref.lambda_return_ref(*x, 0.95)))
    for B in (16, 800):  # D = 600: an observe step, an imagination step
        inputs = [rnd(B, 1800), rnd(B, 600), rnd(1800), rnd(1800)]
        out.append((f"ln_gru {B}x600", inputs,
                    lambda *x: df.ln_gru(*x, backend="fused"), lambda *x: ref.ln_gru_ref(*x)))
    # A contiguous upstream gradient (as from the next conv): the sum's expanded one would be copied by the fused op.
    out.append(("elu 800x48x31x31", [rnd(800, 48, 31, 31)], lambda x: df.elu(x, backend="fused"), ref.elu_ref,
                torch.randn(800, 48, 31, 31, device=device, generator=g).to(dtype)))
    # A head's first layer over imagination's states (on CUDA the op is ATen's addmm: this checks it stays so).
    out.append(("linear 12800x1624->400", [rnd(12800, 1624), rnd(400, 1624), rnd(400)],
                lambda *x: df.linear(*x, backend="fused"), ref.linear_ref))
    return [case if len(case) == 5 else (*case, None) for case in out]


def rssm_cases(device: torch.device):
    """(name, inputs, fused, reference) for the RSSM at Atari sizes, float32 (compiling the unrolled reference
    sequence takes minutes, so it has no compiled column)."""
    import torch.nn.functional as F

    import dreamer_fast as df

    torch.manual_seed(0)
    m = df.RSSM(18, 1536).to(device)
    T, B = 50, 16
    embed = torch.randn(T, B, 1536, device=device).requires_grad_()
    action = F.one_hot(torch.randint(18, (T, B), device=device), 18).float()
    is_first = torch.zeros(T, B, dtype=torch.bool, device=device)
    is_first[0] = True
    noise = torch.rand(T, B, 32, device=device)

    def observe(backend):
        def run(e, *params):  # params: leaves whose gradients are taken
            m.backend = backend
            post, prior = m.observe(e, action, is_first, noise=noise)
            return m.kl_loss(post, prior)[0] + m.get_feat(post).square().mean()

        return run

    return [(f"RSSM observe T={T} B={B}", [embed, *m.parameters()], observe("fused"), observe("reference"))]


def policy_step_rows(device: torch.device) -> list[tuple[str, float]]:
    """RSSM obs_step at B=1 without gradients (the acting step), Atari sizes: (label, median ms)."""
    import dreamer_fast as df

    torch.manual_seed(0)
    rows = []
    for label, backend, prior, bf16w in (("reference, posterior+prior", "reference", True, False),
                                         ("fused, posterior+prior", "fused", True, False),
                                         ("fused, posterior only", "fused", False, False),
                                         ("fused, posterior only, bf16 weights", "fused", False, True)):
        m = df.RSSM(18, 1536, backend=backend).to(device)
        if bf16w:
            m.inference_dtype = torch.bfloat16
        embed, action = torch.randn(1, 1536, device=device), torch.zeros(1, 18, device=device)
        is_first, state = torch.zeros(1, dtype=torch.bool, device=device), m.initial(1)

        def run():
            with torch.no_grad():
                m.obs_step(state, action, embed, is_first, prior=prior)

        rows.append((f"RSSM obs_step B=1 no_grad: {label}", cuda_time_ms(run, reps=200)))
    return rows


def agent_update_rows(device: torch.device, preset: str = "atari") -> list[tuple[str, float]]:
    """One full training update (world model + actor + critic) at the Atari preset (B=16 T=50 H=15), as
    benchmarks/bench_agent.py times it on the CPU: (label, median ms). (Other presets: for the CPU test of this
    script.)"""
    import numpy as np

    from dreamer_fast.agent.agent import Agent
    from dreamer_fast.config import load_config
    from dreamer_fast.envs import ActionSpace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_agent import ACTIONS, batch

    rows = []
    for backend in ("fused", "reference"):
        for bf16 in (False, True):
            config = load_config(preset, {"backend": backend, "bf16": bf16, "device": str(device)})
            agent = Agent({"image": ((1, 64, 64), np.uint8)}, ActionSpace(True, ACTIONS), config)
            data = batch(config.batch_length, config.batch_size)
            ms = cuda_time_ms(lambda: agent.train_step(data), reps=10)
            rows.append((f"agent update {preset}, {backend}, {'bf16 autocast' if bf16 else 'float32'}", ms))
    if device.type == "cuda":  # the update captured once and replayed (config `cuda_graphs`)
        config = load_config(preset, {"backend": "fused", "bf16": False, "device": str(device), "cuda_graphs": "on"})
        agent = Agent({"image": ((1, 64, 64), np.uint8)}, ActionSpace(True, ACTIONS), config)
        data = batch(config.batch_length, config.batch_size)
        rows.append((f"agent update {preset}, fused, float32, CUDA graph",
                     cuda_time_ms(lambda: agent.train_step(data), reps=10)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-build", action="store_true", help="use the extension already built")
    parser.add_argument("--no-tests", action="store_true", help="skip the test suite")
    parser.add_argument("--cxx", help="C++ compiler for the build (sets CXX), e.g. /usr/bin/g++ (see check_cpp_errors)")
    parser.add_argument("--tests-timeout", type=float, default=1200.0, help="seconds the test suite may take")
    parser.add_argument("--only", help="time only the rows whose label contains this text (e.g. 'elu')")
    parser.add_argument("--workers", type=int, default=1, help="pytest-xdist workers for the tests (1: no xdist)")
    parser.add_argument("--cuda-tests-first", action="store_true",
                        help="run the CUDA cases (-k cuda) before the timings and the rest of the suite after them")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        die(f"no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda}); nothing was checked")
    name = torch.cuda.get_device_name()
    print(f"gpu_check: {time.strftime('%Y-%m-%d')} on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    if not args.no_build:
        build(args.cxx)
    sys.path.insert(0, str(ROOT))  # the in-place build (or an installed one), for this process; pytest runs from ROOT
    import dreamer_fast as df

    check_cpp_errors()

    for op in ("lambda_return", "straight_through_categorical", "kl_balance", "ln_gru"):
        if not df.has_kernel(op, "cuda"):
            die(f"the extension has no CUDA kernel for {op}")
    test_failure = None
    if args.cuda_tests_first and not args.no_tests:
        test_failure = run_tests(args.tests_timeout, args.workers, CUDA_TESTS)
    device = torch.device("cuda")
    print(f"\nGPU forward+backward, median ms ({name}); rows print as they are measured", flush=True)
    print(f"| {'op':34} | dtype    | fused ms | eager ms | compiled ms | vs eager | vs compiled |")
    print(f"|{'-' * 36}|----------|----------|----------|-------------|----------|-------------|", flush=True)

    def row(label, dt, f, r, c):
        comp, vs_comp = (f"{c:11.3f}", f"{c / f:10.1f}x") if c is not None else (f"{'-':>11}", f"{'-':>11}")
        print(f"| {label:34} | {dt:8} | {f:8.3f} | {r:8.3f} | {comp} | {r / f:7.1f}x | {vs_comp} |", flush=True)

    def wanted(label: str) -> bool:
        return args.only is None or args.only in label

    for label, inputs, fused, reference in rssm_cases(device):
        if not wanted(label):
            continue
        row(label, "float32", cuda_time_ms(fwd_bwd(fused, inputs), reps=10),
            cuda_time_ms(fwd_bwd(reference, inputs), reps=10), None)
    for dtype in (torch.float32, torch.bfloat16):
        for label, inputs, fused, reference, grad_out in cases(device, dtype):
            if not wanted(label):
                continue
            t_fused = cuda_time_ms(fwd_bwd(fused, inputs, grad_out))
            t_ref = cuda_time_ms(fwd_bwd(reference, inputs, grad_out))
            t_comp = cuda_time_ms(fwd_bwd(torch.compile(reference, dynamic=False), inputs, grad_out))
            row(label, str(dtype).removeprefix("torch."), t_fused, t_ref, t_comp)
    print(f"\n| {'no-grad step / one update (median ms)':60} | ms       |\n|{'-' * 62}|----------|", flush=True)
    extra = [fn for fn, label in ((policy_step_rows, "RSSM obs_step B=1"), (agent_update_rows, "agent update atari"))
             if wanted(label)]
    for label, ms in [r for fn in extra for r in fn(device)]:
        print(f"| {label:60} | {ms:8.3f} |", flush=True)
    if not args.no_tests:
        select = f"not ({CUDA_TESTS})" if args.cuda_tests_first else None
        test_failure = run_tests(args.tests_timeout, args.workers, select) or test_failure
    if test_failure:
        die(test_failure)


if __name__ == "__main__":
    main()
