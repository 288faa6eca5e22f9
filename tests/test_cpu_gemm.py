"""The CPU GEMM library choice (MKL or oneDNN) of the fused RSSM ops: the rule, the setting, and both libraries
against the reference backend (observe values + gradients, float32 and bf16 autocast; the acting step)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import tol
from test_rssm import act_steps, assert_states_close, model, run_observe, sequence

import dreamer_fast as df

pytestmark = pytest.mark.skipif(not df.extension_loaded(), reason="needs the compiled extension")
LIBRARIES = ["mkl", "onednn", "aten"] if torch.backends.mkldnn.is_available() else ["mkl", "aten"]


@pytest.fixture(autouse=True)
def restore_mode():
    previous = df.set_cpu_gemm("auto")
    previous_profile = df.set_cpu_profile("auto")
    yield
    df.set_cpu_gemm(previous)
    df.set_cpu_profile(previous_profile)


def cpu_vendor() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    return ""


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU vendor from /proc/cpuinfo")
@pytest.mark.parametrize("profile", ["auto", "avx2"])
def test_auto_is_mkl_where_it_runs_its_widest_kernels_and_onednn_elsewhere(profile):
    df.set_cpu_profile(profile)
    intel = cpu_vendor() == "GenuineIntel"
    assert df.cpu_features()["mkl_full_isa"] == intel
    assert df.cpu_gemm() == ("mkl" if intel or not torch.backends.mkldnn.is_available() else "onednn")


def test_set_cpu_gemm_returns_the_previous_mode_and_rejects_bad_ones():
    assert df.set_cpu_gemm("mkl") == "auto"
    assert df.cpu_gemm() == "mkl"
    assert df.set_cpu_gemm(LIBRARIES[-2]) == "mkl"
    assert df.cpu_gemm() == LIBRARIES[-2]
    assert df.set_cpu_gemm("aten") == LIBRARIES[-2]
    assert df.cpu_gemm() == "aten"
    with pytest.raises(ValueError, match="`mode` must be one of"):
        df.set_cpu_gemm("openblas")
    with pytest.raises(RuntimeError, match="`mode` must be"):  # the op's own check, for C++ / torch.ops callers
        torch.ops.dreamer_fast.set_cpu_gemm("openblas")
    assert df.cpu_gemm() == "aten"


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("sizes", [(16, 16), (96, 80)], ids=["small", "wider"])
def test_observe_with_each_library_matches_reference(library, sizes, monkeypatch):
    """T = 50 (the weights are packed once per sequence from 4 steps on), B = 4, float32, resets mid-sequence."""
    import test_rssm

    monkeypatch.setattr(test_rssm, "D", sizes[0])
    monkeypatch.setattr(test_rssm, "H", sizes[1])
    df.set_cpu_gemm(library)
    m = model(torch.float32)
    data = sequence(50, 4, torch.float32)
    post_r, prior_r, grads_r = run_observe(m, "reference", *data)
    post_f, prior_f, grads_f = run_observe(m, "fused", *data)
    assert torch.equal(post_f.stoch.detach(), post_r.stoch.detach()), "samples differ"
    assert_states_close(post_f, post_r, **tol(torch.float32))
    assert_states_close(prior_f, prior_r, **tol(torch.float32))
    names = ["embed", "action", *(n for n, _ in m.named_parameters())]
    for name, a, b in zip(names, grads_f, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda msg, n=name: f"d{n}: {msg}")


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("profile", ["auto", "avx2"])
def test_observe_under_bf16_autocast_with_each_library(library, profile):
    """bf16 GEMMs (oneDNN packs them too where it runs bf16; under the AVX2 profile it must not: its bf16 reorder raises
    on CPUs without AVX-512): the first step close to float32, everything finite, gradients present."""
    df.set_cpu_gemm(library)
    df.set_cpu_profile(profile)
    m = model(torch.float32, backend="fused")
    embed, action, is_first, noise = (x.detach().float() for x in sequence(12, 3))
    want = m.observe(embed, action, is_first, noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m.observe(embed, action, is_first, noise=noise)
        loss, _ = m.kl_loss(*got)
    loss.backward()
    torch.testing.assert_close(got[0].deter[0], want[0].deter[0], rtol=0.05, atol=0.05)
    torch.testing.assert_close(got[0].logits[0], want[0].logits[0], rtol=0.1, atol=0.1)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("prior", [True, False])
def test_acting_step_with_each_library_matches_reference(library, prior):
    df.set_cpu_gemm(library)
    m = model(torch.float32)
    want = act_steps(m, "reference", prior=prior)
    assert_states_close(act_steps(m, "fused", prior=prior), want, **tol(torch.float32))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


def test_environment_variable_sets_the_mode_and_bad_values_fail_clearly():
    ok = run_python("import dreamer_fast as df; print(df.cpu_gemm())", DREAMER_FAST_CPU_GEMM="mkl")
    assert ok.returncode == 0 and ok.stdout.strip() == "mkl", ok.stderr
    bad = run_python("import dreamer_fast", DREAMER_FAST_CPU_GEMM="blis")
    assert bad.returncode != 0 and "$DREAMER_FAST_CPU_GEMM must be one of" in bad.stderr
