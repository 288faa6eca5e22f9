"""Straight-through categorical sampling in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamer_fast.reference.philox import PhiloxStream, draw_seed, philox_uniform


def straight_through_categorical_ref(
    logits: torch.Tensor,
    unimix: float = 0.0,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stream: PhiloxStream | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot sample with straight-through gradient, and the mixed probs (shapes as the fused op).

    ``probs = (1 - unimix) * softmax(logits) + unimix / K``. The class is the smallest k with
    ``noise < cumsum(probs)[k]`` (the cumsum in float64), at most K - 1; without ``noise``, the uniforms come from the Philox stream under a
    seed drawn from ``generator`` (row n of the flattened leading dims takes stream element n), as in the fused op, or
    from ``stream`` (row n takes element offset + n; the offset advances by the number of rows).
    ``sample = onehot + (probs - probs.detach())``: the one-hot's value, probs' gradient (DreamerV2).
    """
    K = logits.shape[-1]
    probs = (1 - unimix) * torch.softmax(logits, dim=-1) + unimix / K
    if noise is None and stream is not None:
        noise = stream.uniform(logits.shape[:-1], logits.dtype)
    elif noise is None:
        noise = philox_uniform(draw_seed(generator), logits.shape[:-1], logits.dtype, logits.device)
    # The CDF in float64 whatever the dtype: a float32 running sum drifts with K and would move draws across class
    # boundaries. cdf is nondecreasing: counting the prefixes <= noise (all but the last) finds the class, at most
    # K - 1. NaN probs give class 0, and the NaN reaches the sample through probs - probs.detach() below.
    cdf = probs.detach().to(torch.float64).cumsum(dim=-1)
    index = (cdf[..., :-1] <= noise.to(torch.float64)[..., None]).sum(dim=-1)
    onehot = F.one_hot(index, K).to(probs.dtype)
    sample = onehot + (probs - probs.detach())  # parenthesised: 1 + p - p could round away from 1
    return sample, probs
