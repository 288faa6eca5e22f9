"""The whole-sequence RSSM observe loop in plain PyTorch: the executable specification of the fused op."""

from __future__ import annotations

import torch

from dreamer_fast.reference import rssm_step
from dreamer_fast.reference.ln_gru import ln_gru_ref
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref


def observe_sequence_ref(
    act_proj: torch.Tensor,
    emb_proj: torch.Tensor,
    keep: torch.Tensor,
    deter0: torch.Tensor,
    stoch0: torch.Tensor,
    w_stoch_in: torch.Tensor,
    w_gru: torch.Tensor,
    b_gru: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    w_deter_out: torch.Tensor,
    w_post: torch.Tensor,
    b_post: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    unimix: float = 0.0,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    gemm_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See :func:`dreamer_fast.ops.observe_sequence.observe_sequence` (same arguments, same results).

    Each step is :func:`dreamer_fast.reference.rssm_step.obs_step` with the time-independent GEMMs given as
    ``act_proj`` and ``emb_proj``.
    """
    T, B = act_proj.shape[:2]
    S, K = stoch0.shape[1:]
    dtype = deter0.dtype

    def linear(acc, rows, weight):
        """acc + rows @ weight.T, the product in gemm_dtype, the sum in the state's dtype."""
        if gemm_dtype is None:
            return torch.addmm(acc, rows, weight.t())
        return (rows.to(gemm_dtype) @ weight.to(gemm_dtype).t()).to(dtype) + acc

    def ln_gru(gates, deter):
        return ln_gru_ref(gates, deter, ln_w, ln_b, eps)

    deter, stoch = deter0, stoch0
    deters, samples, logits_seq = [], [], []
    for t in range(T):
        deter, stoch, logits, _ = rssm_step.obs_step(
            deter, stoch, keep[t],
            img_in=lambda z: linear(act_proj[t], z, w_stoch_in),
            gru=lambda xh: linear(b_gru.expand(B, -1), xh, w_gru),
            ln_gru=ln_gru,
            obs_out=lambda h: linear(emb_proj[t], h, w_deter_out),
            post_logits=lambda y: linear(b_post.expand(B, -1), y, w_post),
            sample=lambda logits: straight_through_categorical_ref(
                logits, unimix, noise=None if noise is None else noise[t], generator=generator
            )[0],
        )
        deters.append(deter)
        samples.append(stoch)
        logits_seq.append(logits)
    if not T:
        return (deter0.new_empty(0, B, deter0.shape[1]), deter0.new_empty(0, B, S, K), deter0.new_empty(0, B, S, K))
    return torch.stack(deters), torch.stack(samples), torch.stack(logits_seq)
