"""The one place that knows the CPU (dreamer_fast.cpu, csrc/cpu/features.h): features agree with torch's and oneDNN's
own queries, the profile cap turns paths off and never on, the environment variables, and bf16's resolution."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dreamer_fast as df
from dreamer_fast.config import load_config
from dreamer_fast.cpu import resolve_bf16

pytestmark = pytest.mark.skipif(not df.extension_loaded(), reason="needs the compiled extension")
ORDER = ["baseline", "avx2", "avx512", "amx"]
FLAGS = ("avx2", "avx512", "avx512_bf16", "amx_bf16", "avx_ne_convert", "onednn_bf16", "native_bf16_gemm")


@pytest.fixture(autouse=True)
def restore_profile():
    previous = df.set_cpu_profile("auto")
    yield
    df.set_cpu_profile(previous)


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


def torch_caps() -> dict:
    return torch._C._cpu._get_cpu_capability()


def test_features_agree_with_torch_and_onednn():
    f = df.cpu_features()
    assert f["cap"] == "auto" and f["profile"] == f["detected"]
    caps = torch_caps()
    avx512 = all(caps.get(k) for k in ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"))
    aten = torch.backends.cpu.get_cpu_capability()
    assert f["aten_capability"] == aten
    assert f["avx2"] == (bool(caps.get("avx2") and caps.get("fma3")) and aten in ("AVX2", "AVX512"))
    assert f["avx512"] == (avx512 and aten == "AVX512")
    assert f["avx512_bf16"] == (f["avx512"] and bool(caps.get("avx512_bf16")))
    assert f["onednn_bf16"] == (torch.ops.mkldnn._is_mkldnn_bf16_supported() and (f["avx512"] or f["avx_ne_convert"]))
    assert f["native_bf16_gemm"] == (f["onednn_bf16"] and (f["avx512_bf16"] or f["amx_bf16"]))
    assert f["mkl_full_isa"] == (f["vendor"] == "GenuineIntel")
    assert f["name"] == caps.get("cpu_name", "")
    assert ORDER.index(f["detected"]) == (3 if f["amx_bf16"] else 2 if f["avx512"] else 1 if f["avx2"] else 0)


@pytest.mark.parametrize("cap", ORDER)
def test_a_cap_turns_paths_off_and_never_on(cap):
    full = df.cpu_features()
    assert df.set_cpu_profile(cap) == "auto"
    f = df.cpu_features()
    assert f["cap"] == cap and f["profile"] == ORDER[min(ORDER.index(cap), ORDER.index(full["detected"]))]
    assert f["detected"] == full["detected"]
    for flag in FLAGS:
        assert not f[flag] or full[flag], flag  # never on where the uncapped CPU has it off
    if ORDER.index(cap) < ORDER.index("avx512"):
        assert not (f["avx512"] or f["avx512_bf16"] or f["amx_bf16"])
        assert f["native_bf16_gemm"] is False
        assert f["onednn_bf16"] == (full["onednn_bf16"] and full["avx_ne_convert"] and cap == "avx2")
    if cap == "baseline":
        assert not f["avx2"]


def test_set_cpu_profile_rejects_bad_values_and_keeps_the_cap():
    df.set_cpu_profile("avx2")
    with pytest.raises(ValueError, match="`profile` must be one of"):
        df.set_cpu_profile("sse")
    with pytest.raises(RuntimeError, match="set_cpu_profile: `profile` must be"):
        torch.ops.dreamer_fast.set_cpu_profile("avx1024")
    assert df.cpu_features()["cap"] == "avx2"


def test_profile_environment_variable():
    code = "import dreamer_fast as df; f = df.cpu_features(); print(f['cap'], f['profile'], f['native_bf16_gemm'])"
    ok = run_python(code, DREAMER_FAST_CPU_PROFILE="avx2")
    assert ok.returncode == 0, ok.stderr
    cap, profile, native = ok.stdout.split()
    assert cap == "avx2" and profile in ("avx2", "baseline") and native == "False"
    bad = run_python("import dreamer_fast", DREAMER_FAST_CPU_PROFILE="avx9")
    assert bad.returncode != 0 and "$DREAMER_FAST_CPU_PROFILE must be one of" in bad.stderr


def test_library_caps_lower_the_detected_profile():
    """ATen's capability and oneDNN's ISA cap are read from the libraries themselves: the profile follows them."""
    code = "import dreamer_fast as df; f = df.cpu_features(); print(f['detected'], f['onednn_bf16'], f['avx512'])"
    out = run_python(code, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert out.returncode == 0, out.stderr
    detected, onednn_bf16, avx512 = out.stdout.split()
    assert detected in ("avx2", "baseline") and onednn_bf16 == "False" and avx512 == "False"


def test_bf16_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = df.cpu_features()["native_bf16_gemm"]
    assert resolve_bf16("auto", cpu)[0] is native
    assert resolve_bf16("false", cpu) == (False, "bf16=false: float32")
    on, why = resolve_bf16("true", cpu)
    assert on and (("slower than float32" in why) != native)
    assert resolve_bf16("auto", cuda)[0] is False and resolve_bf16("true", cuda)[0] is True
    df.set_cpu_profile("avx2")
    off, why = resolve_bf16("auto", cpu)
    assert off is False and "profile avx2" in why and "no native bf16" in why
    with pytest.raises(ValueError, match="config `bf16` must be one of"):
        resolve_bf16("yes please", cpu)


@pytest.mark.parametrize("value, want", [(True, "true"), (False, "false"), ("auto", "auto"), ("on", "true"),
                                         ("0", "false"), ("AUTO", "auto")])
def test_config_bf16_values(value, want):
    assert load_config("debug", {"bf16": value}).bf16 == want


def test_config_bf16_rejects_other_values():
    with pytest.raises(ValueError, match="config `bf16` must be one of"):
        load_config("debug", {"bf16": "maybe"})
    with pytest.raises(ValueError, match="config `bf16`"):
        load_config("debug", {"bf16": 3})


def test_train_prints_and_records_the_bf16_choice(tmp_path, capsys):
    from dreamer_fast.training.loop import train

    df.set_cpu_profile("avx2")  # the lowest class: auto must mean float32, whatever this CPU has
    train(load_config("debug", {"bf16": "auto", "steps": 120, "prefill": 100}), tmp_path, progress=False)
    first = (tmp_path / "config.yaml").read_text().splitlines()[0]
    assert first.startswith("# bf16=auto: float32 (") and "profile avx2" in first
    assert "dreamer-fast: bf16=auto: float32" in capsys.readouterr().out
    assert load_config("debug", {}).bf16 == "false"


def _kernel_cases() -> dict:
    """Each CPU kernel that has AVX-512 / AVX2 / baseline bodies (csrc/cpu/clones.h), as (fused, reference) thunks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1000, generator=g)
    xb = x.bfloat16()
    logits, post, prior = (torch.randn(6, 4, 32, generator=g) for _ in range(3))
    noise = torch.rand(6, 4, generator=g)
    gates, deter = torch.randn(5, 96, generator=g), torch.randn(5, 32, generator=g)
    lw, lb = torch.rand(96, generator=g) + 0.5, torch.randn(96, generator=g)
    w, b, xs = torch.randn(40, 72, generator=g), torch.randn(40, generator=g), torch.randn(3, 72, generator=g)
    return {
        "elu f32": (lambda: df.elu(x), lambda: df.elu_ref(x)),
        "elu bf16": (lambda: df.elu(xb).float(), lambda: df.elu_ref(xb.float()).bfloat16().float()),
        "straight_through_categorical": (lambda: df.straight_through_categorical(logits, 0.01, noise=noise),
                                         lambda: df.straight_through_categorical_ref(logits, 0.01, noise=noise)),
        "kl_balance": (lambda: df.kl_balance(post, prior, 0.8, 1.0), lambda: df.kl_balance_ref(post, prior, 0.8, 1.0)),
        "ln_gru": (lambda: df.ln_gru(gates, deter, lw, lb), lambda: df.ln_gru_ref(gates, deter, lw, lb)),
        "linear gemv": (lambda: df.linear(xs, w, b), lambda: df.linear_ref(xs, w, b)),
    }


@pytest.mark.parametrize("cap", ORDER)
def test_every_vector_body_matches_the_reference(cap):
    """The kernels' bodies for each profile (AVX-512, AVX2 + FMA, baseline): each must equal the reference."""
    df.set_cpu_profile(cap)
    for name, (fused, ref) in _kernel_cases().items():
        torch.testing.assert_close(fused(), ref(), rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n} ({cap}): {m}")
