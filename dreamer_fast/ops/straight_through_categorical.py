"""Straight-through categorical sampling: the fused op (torch.ops.dreamer_fast.straight_through_categorical) with
its checks, fake kernel and autograd."""

from __future__ import annotations

import torch

from dreamer_fast import _backend, _checks
from dreamer_fast.reference.philox import PhiloxStream, draw_seed
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref

_OP = "straight_through_categorical"


def _check_generator(generator: object) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{_OP}: `generator` must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"{_OP}: `generator` must be a CPU torch.Generator (it only draws the seed; the samples are drawn on the"
            f" logits' device), got one on {generator.device}"
        )


def _check_stream(stream: object, generator: object, logits: torch.Tensor) -> None:
    if stream is None:
        return
    if not isinstance(stream, PhiloxStream):
        raise TypeError(f"{_OP}: `stream` must be a dreamer_fast.PhiloxStream or None, got {type(stream).__name__}")
    if generator is not None:
        raise ValueError(f"{_OP}: give `generator` or `stream`, not both")
    if stream.device != logits.device:
        raise ValueError(f"{_OP}: `stream` must be on the device of `logits` ({logits.device}), got {stream.device}")


def straight_through_categorical(
    logits: torch.Tensor,
    unimix: float = 0.0,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stream: PhiloxStream | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-hot categorical sample with DreamerV2's straight-through gradient, in one fused pass (and one back).

    ``probs = (1 - unimix) * softmax(logits, -1) + unimix / K``; ``sample`` is one-hot with the value of the draw
    and the gradient of ``probs`` (``onehot + probs - probs.detach()``).

    Args:
        logits: ``[..., K]``, any number of leading dims, K >= 1; float32/float64 (float16/bfloat16 on CUDA).
        unimix: the uniform mixture weight in [0, 1] (DreamerV2: 0.01).
        noise: optional uniforms in [0, 1) of shape ``logits.shape[:-1]`` (same dtype and device): the class is the
            smallest k with ``noise < cumsum(probs)[k]``, at most K - 1. Makes the draw explicit and reproducible.
        generator: a CPU ``torch.Generator`` (None: torch's default) that gives the seed of the Philox stream used
            when ``noise`` is None. Same seed, same samples: on CPU and CUDA, fused and reference alike. (Inside
            ``torch.compile(fullgraph=True)`` keep the default: dynamo cannot trace an explicit generator.)
        stream: a :class:`dreamer_fast.PhiloxStream` on the logits' device, instead of ``generator``: row n draws
            stream element ``offset + n`` and the op advances the stream's offset by the number of rows, on the
            device (no host read, so a captured CUDA graph draws new samples at each replay). Unused, and not
            advanced, when ``noise`` is given. A stream at offset 0 under key ``s`` draws what seed ``s`` draws.
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto").

    Returns:
        ``(sample, probs)``, both ``[..., K]`` in the dtype of ``logits`` and both differentiable.

        Non-finite input: a row with a NaN or +inf logit (or only -inf) has NaN probs, and its sample is NaN
        (as the reference's ``onehot + probs - probs.detach()``), gradient included. The draw's cumsum is float64
        for every dtype, so float32 draws agree with float64 ones at any K.
    """
    logits = _checks.tensor(_OP, "logits", logits)
    _checks.floating(_OP, "logits", logits)
    _checks.ndim_at_least(_OP, "logits", logits, 1, "[..., K]")
    if logits.shape[-1] < 1:
        raise ValueError(f"{_OP}: `logits` must have K >= 1 classes in its last dim, got shape {list(logits.shape)}")
    unimix = _checks.number_in(_OP, "unimix", unimix, 0.0, 1.0)
    if noise is not None:
        _checks.tensor(_OP, "noise", noise)
        _checks.like(_OP, "noise", noise, logits, "logits")
        _checks.shape(_OP, "noise", noise, logits.shape[:-1], "logits.shape[:-1]")
    _check_generator(generator)
    _check_stream(stream, generator, logits)
    from_stream = noise is None and stream is not None
    if _backend.use_fused(f"{_OP}_stream" if from_stream else _OP, logits.device, backend):
        return call(logits, unimix, noise, generator, stream)
    return straight_through_categorical_ref(logits, unimix, noise=noise, generator=generator, stream=stream)


def call(
    logits: torch.Tensor, unimix: float, noise: torch.Tensor | None, generator: torch.Generator | None = None,
    stream: PhiloxStream | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused op without the checks or the backend choice (for callers that have made both, as the RSSM)."""
    if noise is None and stream is not None:
        return torch.ops.dreamer_fast.straight_through_categorical_stream.default(
            logits.contiguous(), stream.state, unimix
        )
    # With noise the seed is unused (and the stream not advanced): pass zero rather than advance the generator.
    seed = draw_seed(generator) if noise is None else torch.zeros((), dtype=torch.int64)
    return torch.ops.dreamer_fast.straight_through_categorical.default(
        logits.contiguous(), None if noise is None else noise.contiguous(), seed, unimix
    )


def _register() -> None:
    @torch.library.register_fake("dreamer_fast::straight_through_categorical")
    def _(logits, noise, seed, unimix):
        # The kernels read the seed on the host; a seed elsewhere (e.g. meta) would dispatch here instead.
        if seed.device.type != "cpu" or seed.dtype != torch.int64 or seed.numel() != 1:
            raise ValueError(
                f"{_OP}: `seed` must be a one-element int64 tensor on the CPU, got {seed.dtype} of shape"
                f" {list(seed.shape)} on {seed.device}"
            )
        return torch.empty_like(logits), torch.empty_like(logits)

    @torch.library.register_fake("dreamer_fast::straight_through_categorical_stream")
    def _(logits, stream, unimix):
        if stream.dtype != torch.int64 or stream.shape != (2,) or stream.device != logits.device:
            raise ValueError(
                f"{_OP}_stream: `stream` must be int64 [key, offset] of shape [2] on the device of `logits`"
                f" ({logits.device}), got {stream.dtype} of shape {list(stream.shape)} on {stream.device}"
            )
        return torch.empty_like(logits), torch.empty_like(logits)

    @torch.library.register_fake("dreamer_fast::straight_through_categorical_backward")
    def _(grad_sample, grad_probs, probs, unimix):
        return torch.empty_like(probs)

    def setup_context(ctx, inputs, output):
        _, _, _, unimix = inputs
        ctx.save_for_backward(output[1])  # probs: (1 - u) softmax = probs - u / K is all the backward needs
        ctx.unimix = unimix
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None instead of a tensor of zeros

    def backward(ctx, grad_sample, grad_probs):
        (probs,) = ctx.saved_tensors
        grads = [None if g is None else g.contiguous() for g in (grad_sample, grad_probs)]
        grad_logits = torch.ops.dreamer_fast.straight_through_categorical_backward.default(*grads, probs, ctx.unimix)
        return grad_logits, None, None, None

    torch.library.register_autograd(
        "dreamer_fast::straight_through_categorical", backward, setup_context=setup_context
    )


if _backend.extension_loaded():
    _register()
