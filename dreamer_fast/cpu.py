"""The CPU the fused ops run on: its features, the profile in force, the GEMM library, and whether bf16 pays.

One place decides every CPU path (``csrc/cpu/features.h``); this module reads it. The features come from the same
queries the libraries use (torch's cpuinfo table, ATen's capability, oneDNN's bf16 check), so a path chosen here is
never one a library refuses.

Environment (read once, at import):

- ``DREAMER_FAST_CPU_PROFILE=auto|avx2|avx512|amx|baseline`` caps the profile: ``avx2`` turns off every AVX-512,
  bf16 and AMX path of ours on any CPU (for tests, and for users who want the lowest class's behaviour). To make
  torch's own kernels follow, also set ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2`` and
  ``MKL_ENABLE_INSTRUCTIONS=AVX2``: :func:`cpu_features` then reports the lower capability too.
- ``DREAMER_FAST_CPU_GEMM=auto|mkl|onednn|aten`` the GEMM library (:func:`set_cpu_gemm`).
- ``DREAMER_FAST_PRIVATE_ATEN_OPS=0`` uses none of torch's private MKL/oneDNN ops (:func:`private_aten_ops`).
"""

from __future__ import annotations

import os

import torch

from dreamer_fast._backend import _LOAD_ERROR

PROFILES = ("auto", "baseline", "avx2", "avx512", "amx")
PROFILE_ENV_VAR = "DREAMER_FAST_CPU_PROFILE"
CPU_GEMMS = ("auto", "mkl", "onednn", "aten")
CPU_GEMM_ENV_VAR = "DREAMER_FAST_CPU_GEMM"
PRIVATE_OPS_ENV_VAR = "DREAMER_FAST_PRIVATE_ATEN_OPS"
BF16_CHOICES = ("auto", "true", "false")


def _require_extension(what: str) -> None:
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"{what}: the extension dreamer_fast._C failed to load ({_LOAD_ERROR})")


def cpu_features() -> dict[str, str | bool]:
    """The CPU's features under the profile in force, as the fused ops see them.

    Keys: ``vendor``, ``name``; the flags ``avx2`` (with FMA), ``avx512`` (F, BW, VL, DQ), ``avx512_bf16``,
    ``amx_bf16``, ``avx_ne_convert``, ``onednn_bf16`` (oneDNN runs bf16 here), ``native_bf16_gemm`` (bf16 GEMMs in
    hardware: where bf16 autocast pays), ``mkl_full_isa`` (MKL runs its widest kernels: Intel only); ``detected``
    (the CPU's profile as torch allows it), ``profile`` (after the cap), ``cap`` (the cap itself) and
    ``aten_capability`` (ATen's kernel level). Flags above the profile read False.
    """
    _require_extension("cpu_features")
    out: dict[str, str | bool] = {}
    for line in torch.ops.dreamer_fast.cpu_features().splitlines():
        key, _, value = line.partition("=")
        out[key] = {"0": False, "1": True}.get(value, value) if key not in ("vendor", "name") else value
    return out


def set_cpu_profile(profile: str) -> str:
    """Cap the CPU profile the fused ops use (``"auto"`` lifts the cap); returns the previous cap. Process-wide.

    ``"avx2"`` runs the paths an AVX2-only CPU takes (float32 oneDNN/MKL GEMMs, no oneDNN bf16 packing, bf16 autocast
    not chosen by ``bf16: auto``); torch's own kernels follow only the environment variables in the module docstring.
    """
    if profile not in PROFILES:
        raise ValueError(f"set_cpu_profile: `profile` must be one of {PROFILES}, got {profile!r}")
    _require_extension("set_cpu_profile")
    return torch.ops.dreamer_fast.set_cpu_profile(profile)


def set_cpu_gemm(mode: str) -> str:
    """Choose the library for the fused backend's float32 GEMMs on the CPU; returns the previous mode. Process-wide.

    Concerns observe's per-step GEMMs (B rows, the weights packed once per sequence; bfloat16 ones too under oneDNN on
    CPUs where oneDNN runs bf16), and the products of the :func:`dreamer_fast.linear` op and of the acting step from
    64 x 256 x 256 (the networks' Linear layers, imagination's RSSM layers, observe's weight gradients; smaller ones
    stay on ATen, and those of at most 6 rows, e.g. acting at B = 1, are our own GEMV kernel).
    ``"auto"`` (the default, or ``$DREAMER_FAST_CPU_GEMM``): MKL on Intel CPUs, where MKL runs its widest kernels;
    oneDNN elsewhere, where MKL takes its AVX2 code (measured on an AMD EPYC Zen 4, 2 threads: oneDNN 0.68-0.84x MKL's
    time at the agent's GEMMs, 0.54-0.99x under the AVX2 profile). ``"mkl"`` / ``"onednn"`` force one; ``"aten"``
    uses only ATen's public ``addmm``/``mm`` (what runs where a torch release lacks the private MKL/oneDNN ops, or has
    them with another schema). The results differ only by summation order (all float32).
    """
    if mode not in CPU_GEMMS:
        raise ValueError(f"set_cpu_gemm: `mode` must be one of {CPU_GEMMS}, got {mode!r}")
    _require_extension("set_cpu_gemm")
    return torch.ops.dreamer_fast.set_cpu_gemm(mode)


def cpu_gemm() -> str:
    """The library the fused ops' CPU GEMMs use now: "mkl", "onednn" or "aten" ("none" without the extension)."""
    if _LOAD_ERROR is not None:
        return "none"
    return torch.ops.dreamer_fast.cpu_gemm()


def private_aten_ops() -> dict[str, str]:
    """The private ATen ops the fused CPU paths call, as this torch release has them: ``{"mkl::_mkl_linear": status}``
    with status ``"found"`` (the op is used), ``"missing"``, ``"schema <types>"`` (another signature than expected) or
    ``"off"`` (``$DREAMER_FAST_PRIVATE_ATEN_OPS=0``, read once: none is used, as on a torch without them).

    None of them is linked: each is looked up once in the dispatcher with its schema (``csrc/cpu/private_ops.h``), and
    where one is not ``"found"`` ATen's public ops take its place: oneDNN's linear ops missing, the GEMM library is
    MKL's packed ops or else ATen's ``addmm``/``mm`` (:func:`cpu_gemm` says which runs); MKL's missing, oneDNN or
    ATen's; ``mkldnn::_is_mkldnn_bf16_supported`` missing, no oneDNN bf16 path (``cpu_features()["onednn_bf16"]`` is
    False). The results differ only by summation order.
    """
    _require_extension("private_aten_ops")
    return dict(line.partition("=")[::2] for line in torch.ops.dreamer_fast.private_aten_ops().splitlines())


def resolve_bf16(choice: str, device: torch.device) -> tuple[bool, str]:
    """Whether to train with bf16 autocast, and why (one line for the log).

    ``"auto"``: on the CPU where it has native bf16 GEMMs (AVX512-BF16 or AMX, and oneDNN runs bf16), float32
    elsewhere — on CUDA too (at the agent's sizes the update is host-bound there and autocast's casts cost more than
    they save). ``"true"``: bf16 wherever asked; on a CPU without native bf16 GEMMs torch's bf16 GEMMs still run,
    correctly but slower than float32, and the reason says so. ``"false"``: float32.
    """
    if choice not in BF16_CHOICES:
        raise ValueError(f"config `bf16` must be one of {BF16_CHOICES}, got {choice!r}")
    if choice == "false":
        return False, "bf16=false: float32"
    if device.type != "cpu":
        if choice == "true":
            return True, f"bf16=true: bf16 autocast on {device.type}"
        return False, f"bf16=auto: float32 on {device.type} (bf16 autocast did not pay there at these sizes)"
    if _LOAD_ERROR is not None:
        native, where = False, "unknown CPU (the extension is not loaded)"
    else:
        f = cpu_features()
        native = bool(f["native_bf16_gemm"])
        have = [k for k in ("avx512_bf16", "amx_bf16") if f[k]]
        where = f"{f['name'] or f['vendor']}, profile {f['profile']}, " + (
            f"native bf16 GEMMs ({', '.join(have)})" if native else "no native bf16 GEMMs (no avx512_bf16 or amx_bf16)")
    if choice == "true":
        slow = "" if native else "; bf16 GEMMs run in software here, slower than float32"
        return True, f"bf16=true: bf16 autocast ({where}{slow})"
    return native, f"bf16=auto: {'bf16 autocast' if native else 'float32'} ({where})"


_env_cpu_gemm = os.environ.get(CPU_GEMM_ENV_VAR)
if _LOAD_ERROR is None and _env_cpu_gemm:
    if _env_cpu_gemm not in CPU_GEMMS:
        raise ValueError(f"${CPU_GEMM_ENV_VAR} must be one of {CPU_GEMMS}, got {_env_cpu_gemm!r}")
    set_cpu_gemm(_env_cpu_gemm)

_env_profile = os.environ.get(PROFILE_ENV_VAR)
if _env_profile and _env_profile not in PROFILES:  # the extension reads it too, at its first CPU path choice
    raise ValueError(f"${PROFILE_ENV_VAR} must be one of {PROFILES}, got {_env_profile!r}")

_env_private_ops = os.environ.get(PRIVATE_OPS_ENV_VAR, "")
if _env_private_ops not in ("", "0", "1"):  # the extension reads it too, at its first private op lookup
    raise ValueError(f"${PRIVATE_OPS_ENV_VAR} must be 0 or 1, got {_env_private_ops!r}")
