"""The examples run as a user would run them (a subprocess, from the repository root) and do what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30
LOSS_LINE = re.compile(r"^step\s+(\d+) loss ([0-9.eE+-]+|nan|inf)\b", re.MULTILINE)


def run_example(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # a shared 2-core machine: spinning OpenMP threads only slow it down
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dropin_losses() -> dict[str, list[tuple[int, float]]]:
    """backend -> [(step, loss)] printed by examples/dropin_rssm.py."""
    losses = {}
    for backend in ("fused", "reference"):
        proc = run_example("dropin_rssm.py", "--steps", str(STEPS), "--log-every", "5", "--backend", backend)
        assert proc.returncode == 0, (
            f"dropin_rssm.py --backend {backend} exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}")
        losses[backend] = [(int(s), float(x)) for s, x in LOSS_LINE.findall(proc.stdout)]
        assert losses[backend], f"no 'step N loss X' lines in the output of --backend {backend}:\n{proc.stdout}"
    return losses


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_dropin_rssm_trains(dropin_losses, backend):
    losses = dropin_losses[backend]
    steps = [s for s, _ in losses]
    assert steps[0] == 1 and steps[-1] == STEPS, f"expected logs from step 1 to {STEPS}, got steps {steps}"
    first, final = losses[0][1], losses[-1][1]
    assert final < first, f"--backend {backend}: the loss did not go down: {losses}"
    assert final < 0.75 * first, f"--backend {backend}: the loss fell by less than a quarter in {STEPS} steps: {losses}"


def test_dropin_rssm_backends_agree(dropin_losses):
    """Same seed, same model: the drop-in backends train the same way (up to float32 summation order)."""
    fused, ref = dropin_losses["fused"], dropin_losses["reference"]
    assert [s for s, _ in fused] == [s for s, _ in ref]
    for (step, a), (_, b) in zip(fused, ref):
        assert a == pytest.approx(b, rel=1e-2), f"step {step}: fused loss {a} vs reference {b}"


def test_dropin_rssm_rejects_bad_flags():
    proc = run_example("dropin_rssm.py", "--backend", "gpu")
    assert proc.returncode == 2 and "--backend" in proc.stderr, proc.stderr
