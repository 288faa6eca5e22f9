"""dreamer_fast: DreamerV2 in PyTorch with fused C++/CUDA kernels.

Ops (time-major ``[T, B, ...]``; each has a plain-PyTorch twin ``*_ref`` in :mod:`dreamer_fast.reference`):

- :func:`lambda_return` — TD(λ) returns ``[T, B]``.
- :func:`kl_balance` — DreamerV2's balanced KL loss between ``[..., S, K]`` posterior and prior logits.
- :func:`straight_through_categorical` — one-hot sample with straight-through gradient, and probs, ``[..., K]``;
  its randomness from a seed, explicit noise or a :class:`PhiloxStream` (key and offset on the device).
- :func:`ln_gru` — DreamerV2's LayerNorm-GRU update ``[B, 3D], [B, D] -> [B, D]``.
- :func:`elu` — ELU (alpha 1), any shape, with a backward from its output (the networks' activation).
- :func:`linear` — ``x [..., K] @ weight[N, K]^T + bias``, the networks' Linear layers (float32 CPU GEMMs in the
  library :func:`set_cpu_gemm` selects).

Modules: :class:`RSSM` (DreamerV2's recurrent state-space model, drop-in) and its state :class:`RSSMState`.

:func:`keep_freed_memory` — glibc malloc tuning that removes the page-fault cost of large CPU activations.
:func:`cpu_features` / :func:`set_cpu_profile` — the CPU's features and the profile the CPU paths follow
(``$DREAMER_FAST_CPU_PROFILE=avx2`` forces the AVX2 class's paths on any CPU).
:func:`set_cpu_gemm` / :func:`cpu_gemm` — which library (MKL, oneDNN or ATen) runs the fused backend's float32 CPU
GEMMs; :func:`private_aten_ops` — which of the private ATen ops they call this torch has (ATen's public ops run in
place of a missing one).
"""

from dreamer_fast._backend import BACKENDS, extension_loaded, has_kernel
from dreamer_fast.cpu import cpu_features, cpu_gemm, private_aten_ops, set_cpu_gemm, set_cpu_profile
from dreamer_fast._memory import keep_freed_memory
from dreamer_fast.ops.elu import elu
from dreamer_fast.ops.kl_balance import kl_balance
from dreamer_fast.ops.lambda_return import lambda_return
from dreamer_fast.ops.linear import linear
from dreamer_fast.ops.ln_gru import ln_gru
from dreamer_fast.ops.straight_through_categorical import straight_through_categorical
from dreamer_fast.reference.philox import PhiloxStream
from dreamer_fast.reference import (
    elu_ref,
    kl_balance_ref,
    lambda_return_ref,
    linear_ref,
    ln_gru_ref,
    straight_through_categorical_ref,
)
from dreamer_fast.rssm import RSSM, RSSMState

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "PhiloxStream",
    "RSSM",
    "RSSMState",
    "cpu_features",
    "cpu_gemm",
    "elu",
    "elu_ref",
    "extension_loaded",
    "has_kernel",
    "keep_freed_memory",
    "kl_balance",
    "kl_balance_ref",
    "lambda_return",
    "lambda_return_ref",
    "linear",
    "linear_ref",
    "ln_gru",
    "ln_gru_ref",
    "private_aten_ops",
    "set_cpu_gemm",
    "set_cpu_profile",
    "straight_through_categorical",
    "straight_through_categorical_ref",
]
