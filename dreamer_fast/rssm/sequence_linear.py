"""A Linear applied at every step of a recurrence, whose weight gradient is one GEMM over the whole sequence.

Autograd would compute ``dW += dy_t^T x_t`` at every step: T small GEMMs, each writing (and then adding) a full
``[out, in]`` matrix. Here each step's backward only records ``dy_t`` and returns ``dx_t``; a sink node that every
step depends on runs after the last of them and computes ``dW = cat(dy)^T cat(x)`` at once (as cuDNN's RNNs do).

Usage (inside ``torch.enable_grad``)::

    lin = SequenceLinear(weight)            # weight [out, in], e.g. a column slice of a parameter
    for t in ...: y_t = lin(acc_t, x_t)     # acc_t + x_t @ weight^T; acc_t [B, out] or a bias [out]

Under autocast (enabled when the SequenceLinear is made) every GEMM runs in autocast's dtype, as autograd does for
``torch.addmm`` under autocast: the forward, the input gradient ``dy_t @ W`` and each step's weight gradient
``dy_t^T x_t``; the weight is cast once per sequence instead of at every call, and the per-step weight gradients are
summed in the weight's dtype (as autograd sums the gradients of a float32 parameter used at several steps). For large
weights (``_TRANSPOSED_MIN_NUMEL``) the weight gradient is instead one low-precision GEMM over all the steps, which
sums in float32 inside and rounds once. Under ``torch.compile`` it is a plain ``addmm`` (autograd's per-step weight
gradients). The products call the fused linear op unchecked (``dreamer_fast.ops.linear.call``): this layer is the
fused RSSM backend's, whose arguments the RSSM has checked.
"""

from __future__ import annotations

import torch

from dreamer_fast.ops.linear import call as linear

# Rows per step from which the per-step GEMMs are efficient on their own (e.g. imagination's B = 800): the weight
# gradient is then summed step by step, which moves less memory than concatenating all the steps.
_ROWS_PER_STEP_FOR_GEMM = 256
# Under autocast, weights from this size on (the RSSM's GRU, 1800 x 1200 at the Atari sizes) get their gradient from
# one GEMM over all the steps, its left operand written transposed by each step's backward (_Record). Measured at the
# Atari imagination (bf16, 2 threads): the GRU's weight gradient 73 -> ~45 ms a rollout; for the 600-1024-wide layers
# the transposed copies cost as much as they save, so those keep the per-step GEMMs.
_TRANSPOSED_MIN_NUMEL = 1 << 20


class SequenceLinear:
    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        # Under torch.compile a plain addmm: dynamo cannot trace the record's side effects in _Step.backward (a
        # mutation of state from outside the autograd.Function), and AOTAutograd derives the weight gradient itself.
        tracked = weight.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        self._token = None
        if not tracked:
            return
        device = weight.device.type
        # Under autocast: its dtype for every GEMM, the weight cast once for the whole sequence (autocast itself would
        # cast it at every call), each input cast once for its forward GEMM and its weight gradient.
        autocast = weight.is_floating_point() and torch.is_autocast_enabled(device)
        self._cast = torch.get_autocast_dtype(device) if autocast else None
        # What the graph's nodes share; it holds no reference back to the graph (no reference cycle).
        self._record = _Record(weight, self._cast or weight.dtype)
        self._gemm_weight = weight.detach().to(self._record.gemm_dtype)
        self._token = _Sink.apply(weight, self._record)

    def __call__(self, acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._token is None:
            return _addmm_t(acc, x, self.weight)
        index = len(self._record.inputs)
        if self._cast is not None and x.is_floating_point():
            x = x.to(self._cast)
        self._record.inputs.append(x.detach())
        return _Step.apply(acc, x, self._gemm_weight, self._token, self._record, index)


class _Record:
    """What a SequenceLinear's steps and its sink share: the inputs, and the output gradients as the steps' backward
    produces them. Under autocast those are written transposed into one ``[out, rows of all steps]`` matrix (the
    left operand of the sink's single GEMM), each while it is still in cache."""

    def __init__(self, weight: torch.Tensor, gemm_dtype: torch.dtype) -> None:
        self.dtype, self.device, self.gemm_dtype = weight.dtype, weight.device, gemm_dtype
        self.inputs: list[torch.Tensor] = []
        self.grads: dict[int, torch.Tensor] = {}
        self.transposed = gemm_dtype != weight.dtype and weight.numel() >= _TRANSPOSED_MIN_NUMEL
        self.dyt: torch.Tensor | None = None  # [out, Σ rows]: transposed output gradients (autocast)

    def add_grad(self, index: int, dy: torch.Tensor) -> None:
        if not self.transposed:
            self.grads[index] = dy
            return
        if self.dyt is None:
            self.dyt = dy.new_empty(dy.shape[1], sum(x.shape[0] for x in self.inputs))
        start = sum(x.shape[0] for x in self.inputs[:index])
        _copy_transposed(dy, self.dyt[:, start:start + dy.shape[0]])
        self.grads[index] = None

    def clear(self) -> None:
        self.grads.clear()
        self.dyt = None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acc, x, weight, token, record, index):
        # weight: already in the GEMMs' dtype (the autocast dtype under autocast)
        ctx.save_for_backward(weight)
        ctx.record, ctx.index = record, index
        ctx.x_dtype, ctx.acc_dtype, ctx.acc_is_row = x.dtype, acc.dtype, acc.dim() == 1
        return _addmm_t(acc, x, weight)

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        # Cast once to the GEMMs' dtype (weight.dtype): this step's input gradient and the sink's weight gradient
        # both read it.
        dy_gemm = dy.to(weight.dtype)
        ctx.record.add_grad(ctx.index, dy_gemm)
        dx = None
        if ctx.needs_input_grad[1]:
            with torch.autocast(dy.device.type, enabled=False):
                dx = linear(dy_gemm, weight.t()).to(ctx.x_dtype)
        d_acc = None
        if ctx.needs_input_grad[0]:
            d_acc = (dy.sum(0) if ctx.acc_is_row else dy).to(ctx.acc_dtype)
        d_token = torch.zeros((), dtype=weight.dtype, device=weight.device)  # orders the sink after this step
        return d_acc, dx, None, d_token, None, None


class _Sink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, record):
        ctx.record = record
        ctx.shape = weight.shape
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        record: _Record = ctx.record
        steps = [i for i in range(len(record.inputs)) if i in record.grads]
        if not steps:
            return torch.zeros(ctx.shape, dtype=record.dtype, device=record.device), None
        with torch.autocast(record.device.type, enabled=False):
            if record.transposed:
                # Autocast, large weights: one low-precision GEMM over all the steps, dW = DY^T X, which accumulates
                # in float32 inside and rounds once (autograd rounds each step's product and sums those in float32:
                # the two differ by about one bfloat16 rounding). DY^T was written out by the steps' backward:
                # oneDNN's bf16 GEMM reading a transposed view runs at about half speed, and per-step products would
                # each need a cast-and-add pass into the float32 sum.
                dyt = record.dyt
                if len(steps) < len(record.inputs):  # steps whose output reached no loss: zero gradient
                    start = 0
                    for i, x in enumerate(record.inputs):
                        if i not in record.grads:
                            dyt[:, start:start + x.shape[0]] = 0
                        start += x.shape[0]
                xs = [x.to(record.gemm_dtype) for x in record.inputs]
                d_weight = (dyt @ torch.cat(xs)).to(record.dtype)
            else:
                dys = [record.grads[i] for i in steps]
                xs = [record.inputs[i].to(record.gemm_dtype) for i in steps]
                if record.gemm_dtype != record.dtype:
                    # Autocast: each step's gradient in the low precision, summed in the weight's dtype (as autograd
                    # does with autocast's per-call casts of a float32 weight).
                    d_weight = (dys[0].t() @ xs[0]).to(record.dtype)
                    for dy, x in zip(dys[1:], xs[1:]):
                        d_weight += dy.t() @ x
                elif dys[0].shape[0] >= _ROWS_PER_STEP_FOR_GEMM:
                    # Each step's GEMM is big enough already: accumulate in place instead of copying all steps.
                    d_weight = linear(dys[0].t(), xs[0].t())
                    for dy, x in zip(dys[1:], xs[1:]):
                        d_weight += linear(dy.t(), x.t())
                else:
                    d_weight = linear(torch.cat(dys).t(), torch.cat(xs).t())
        record.clear()  # a second backward (retain_graph) records them again
        return d_weight, None


def _addmm_t(acc: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``acc + x @ weight^T``, ``acc`` a bias ``[out]`` or ``[rows, out]``. Outside autocast and compilation the product
    is the fused linear op (oneDNN for float32 on CPUs that are not Intel: ~2.2x MKL's GEMMs on an AMD EPYC Zen 5);
    under autocast, ``addmm`` with autocast's casts."""
    if torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling():
        return torch.addmm(acc, x, weight.t())
    if acc.dim() == 1:
        return linear(x, weight, acc)
    return linear(x, weight).add_(acc)


_TILE = 8  # side of the tiles of _copy_transposed


def _copy_transposed(m: torch.Tensor, dst: torch.Tensor) -> None:
    """``dst.copy_(m.t())`` for a contiguous ``[rows, cols]`` matrix ``m``, written tile by tile.

    ATen copies a transposed view element by element along the destination's rows (strided reads); seen as 8 x 8
    tiles the same copy runs ~3x faster here (a [800, 1800] bfloat16 matrix: 0.29 ms against 1.0 ms, 2 threads).
    """
    rows, cols = m.shape
    if rows % _TILE == 0 and cols % _TILE == 0 and m.is_contiguous():
        tiles = m.unflatten(0, (rows // _TILE, _TILE)).unflatten(2, (cols // _TILE, _TILE))
        dst.unflatten(0, (cols // _TILE, _TILE)).unflatten(2, (rows // _TILE, _TILE)).copy_(tiles.permute(2, 3, 0, 1))
    else:
        dst.copy_(m.t())
