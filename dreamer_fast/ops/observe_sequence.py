"""The whole-sequence RSSM observe: the fused op (torch.ops.dreamer_fast.observe_sequence) with its checks and
fake kernels. Its autograd formula is C++ (csrc/autograd/observe_sequence.cpp); the loops over time, forward and
backward, are C++ too (csrc/composite/observe_sequence.cpp)."""

from __future__ import annotations

import math

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.observe_sequence import observe_sequence_ref
from dreamer_fast.reference.philox import draw_seed

_OP = "observe_sequence"


def observe_sequence(
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
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The posterior recurrence of DreamerV2's RSSM over a whole sequence, in one op (forward and backward loops in C++).

    For t = 0..T-1, starting from ``h = deter0``, ``z = stoch0.flatten(-2)``::

        h, z   = h * keep[t], z * keep[t]                      # is_first: the initial state (zeros)
        x      = elu(act_proj[t] + z @ w_stoch_in.T)
        h      = ln_gru(b_gru + cat([x, h]) @ w_gru.T, h, ln_w, ln_b, eps)
        y      = elu(emb_proj[t] + h @ w_deter_out.T)
        logits = b_post + y @ w_post.T                          # [B, S, K]
        z      = straight_through_categorical(logits, unimix, noise[t])

    Args:
        act_proj, emb_proj: ``[T, B, H]``, the time-independent parts of ``img_in`` (the action's, already masked by
            ``keep``) and of ``obs_out`` (the embedding's), biases included.
        keep: ``[T, B]``, 1 - is_first: the state is multiplied by it before the step (0 resets it; any other value
            scales it, as in the reference).
        deter0: ``[B, D]``; stoch0: ``[B, S, K]``: the state before step 0.
        w_stoch_in ``[H, S*K]``, w_gru ``[3D, H + D]``, b_gru/ln_w/ln_b ``[3D]``, w_deter_out ``[H, D]``,
        w_post ``[S*K, H]``, b_post ``[S*K]``: the weights (column slices of the RSSM's parameters are fine).
        noise: ``[T, B, S]`` uniforms of the samples; None: one Philox seed per step drawn from ``generator``
            (None: torch's default CPU generator) in step order, the same draws as the per-step sampler's.
        unimix, eps: the categorical's uniform mixture, the LayerNorm epsilon.
        gemm_dtype: the GEMMs' precision (autocast's dtype); None: the state's dtype. The rest stays in ``deter0``'s.
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``(deters [T, B, D], samples [T, B, S, K], logits [T, B, S, K])``; samples are one-hot with the gradient of
        the probabilities (straight-through). Differentiable in every tensor but ``keep`` and ``noise``.

        Non-finite input: a NaN reaches the sample of its row (NaN) and from there every later step, as in
        the reference; ``keep`` multiplies the state for any value.
    """
    deter0 = _checks.tensor(_OP, "deter0", deter0)
    _checks.floating(_OP, "deter0", deter0)
    if deter0.dim() != 2:
        raise ValueError(f"{_OP}: `deter0` must be [B, D], got shape {list(deter0.shape)}")
    B, D = deter0.shape
    stoch0 = _checks.tensor(_OP, "stoch0", stoch0)
    if stoch0.dim() != 3 or stoch0.shape[0] != B:
        raise ValueError(f"{_OP}: `stoch0` must be [B, S, K] with B = {B}, got shape {list(stoch0.shape)}")
    S, K = stoch0.shape[1:]
    act_proj = _checks.tensor(_OP, "act_proj", act_proj)
    if act_proj.dim() != 3:
        raise ValueError(f"{_OP}: `act_proj` must be [T, B, H], got shape {list(act_proj.shape)}")
    T, H = act_proj.shape[0], act_proj.shape[2]
    expected = {
        "act_proj": (act_proj, (T, B, H), "[T, B, H]"),
        "emb_proj": (emb_proj, (T, B, H), "[T, B, H]"),
        "keep": (keep, (T, B), "[T, B]"),
        "stoch0": (stoch0, (B, S, K), "[B, S, K]"),
        "w_stoch_in": (w_stoch_in, (H, S * K), "[H, S*K]"),
        "w_gru": (w_gru, (3 * D, H + D), "[3*D, H+D]"),
        "b_gru": (b_gru, (3 * D,), "[3*D]"),
        "ln_w": (ln_w, (3 * D,), "[3*D]"),
        "ln_b": (ln_b, (3 * D,), "[3*D]"),
        "w_deter_out": (w_deter_out, (H, D), "[H, D]"),
        "w_post": (w_post, (S * K, H), "[S*K, H]"),
        "b_post": (b_post, (S * K,), "[S*K]"),
    }
    if noise is not None:
        expected["noise"] = (noise, (T, B, S), "[T, B, S]")
    for name, (t, shape, what) in expected.items():
        _checks.tensor(_OP, name, t)
        _checks.like(_OP, name, t, deter0, "deter0")
        _checks.shape(_OP, name, t, shape, what)
    unimix = _checks.number_in(_OP, "unimix", unimix, 0.0, 1.0)
    eps = _checks.number_in(_OP, "eps", eps, 0.0, math.inf)
    if gemm_dtype is not None and (not isinstance(gemm_dtype, torch.dtype) or not gemm_dtype.is_floating_point):
        raise TypeError(f"{_OP}: `gemm_dtype` must be a floating-point torch.dtype or None, got {gemm_dtype!r}")
    weights = (w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post)
    if not _backend.use_fused(_OP, deter0.device, backend):
        return observe_sequence_ref(act_proj, emb_proj, keep, deter0, stoch0, *weights, noise=noise, unimix=unimix,
                                    eps=eps, generator=generator, gemm_dtype=gemm_dtype)
    return call(act_proj, emb_proj, keep, deter0, stoch0, *weights, noise, unimix, eps, generator, gemm_dtype)


def call(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post,
         noise, unimix, eps, generator=None, gemm_dtype=None):
    """The fused op without the checks or the backend choice (for callers that have made both, as the RSSM):
    the arguments of :func:`observe_sequence`, positional."""
    T = act_proj.shape[0]
    weights = (w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post)
    if noise is None:
        # One seed per step, drawn in step order: the draws the per-step sampler (and the reference) make.
        seeds = torch.stack([draw_seed(generator) for _ in range(T)]) if T else torch.zeros(0, dtype=torch.int64)
    else:
        seeds = torch.zeros(T, dtype=torch.int64)  # unused
    outputs = torch.ops.dreamer_fast.observe_sequence.default(
        act_proj.contiguous(), emb_proj.contiguous(), keep.contiguous(), deter0.contiguous(), stoch0.contiguous(),
        *weights, None if noise is None else noise.contiguous(), seeds, unimix, eps, gemm_dtype
    )
    # Each output gets a graph node of its own (a view), as if it had come from its own op. Otherwise a gradient
    # asked for one output (autograd.grad(loss, [logits, ...])) would mark every path into the shared node as
    # needed, e.g. the prior head behind `deters`, and free its buffers although the call does not use it.
    return tuple(t.view(t.shape) for t in outputs)


def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _outputs(act_proj, deter0, stoch0):
    T, B = act_proj.shape[:2]
    return (deter0.new_empty(T, B, deter0.shape[1]), deter0.new_empty(T, B, *stoch0.shape[1:]),
            deter0.new_empty(T, B, *stoch0.shape[1:]))


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::observe_sequence")
    def _(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post,
          noise, seeds, unimix, eps, gemm_dtype):
        return _outputs(act_proj, deter0, stoch0)

    @torch.library.register_fake("dreamer_fast::observe_sequence_forward")
    def _(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post,
          noise, seeds, unimix, eps, gemm_dtype):
        T, B, H = act_proj.shape
        D = deter0.shape[1]
        stats = deter0.new_empty(T, B, dtype=_stats_dtype(deter0))
        return (*_outputs(act_proj, deter0, stoch0), deter0.new_empty(T, B, H), deter0.new_empty(T, B, 3 * D), stats,
                torch.empty_like(stats), deter0.new_empty(T, B, H), deter0.new_empty(T, B, *stoch0.shape[1:]))

    @torch.library.register_fake("dreamer_fast::observe_sequence_backward")
    def _(grad_deters, grad_samples, grad_logits, keep, deter0, stoch0, w_stoch_in, w_gru, ln_w, ln_b, w_deter_out,
          w_post, deters, samples, x, gates, mean, rstd, y, probs, unimix):
        # Every gradient is a fresh contiguous tensor (the weights may be column slices of a parameter).
        new = deters.new_empty
        return (new(x.shape), new(x.shape), new(deter0.shape), new(stoch0.shape), new(w_stoch_in.shape),
                new(w_gru.shape), new(ln_w.shape), new(ln_w.shape), new(ln_b.shape), new(w_deter_out.shape),
                new(w_post.shape), new(w_post.shape[:1]))


if _backend.extension_loaded():
    _register()
