"""An optimiser step taken or skipped by a device flag, without reading the flag on the host (AMP's ``found_inf``
masking, for any optimiser whose step updates its parameters and per-parameter state tensors in place)."""

from __future__ import annotations

import weakref

import torch

# Per optimiser: the tensors last saved and their copies, kept from step to step (a fresh 3x-parameters allocation
# per step cost more than the copies themselves on the CPU) and remade when the optimiser's tensors change.
_SAVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def masked_step(opt: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """``opt.step()`` where the 0-d bool ``ok`` is true; where it is false, the parameters and the optimiser state end
    as they were (state first created by this step ends as zeros, which is what a fresh state holds, so the next step
    equals a first one).

    The tensors the step writes are copied first, the step runs, and each is then chosen with ``torch.where`` on
    ``ok``: a taken step leaves exactly the values ``opt.step()`` makes, bit for bit, and nothing waits for the
    device. ``ok`` must be on the device of the parameters, or on the CPU beside CPU state (Adam's non-capturable step
    counter). Cost: one copy and one select pass over parameters and state.
    """
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    tensors = [p.detach() for p in params] + [v for p in params for v in opt.state[p].values() if torch.is_tensor(v)]
    saved = _saved_copies(opt, tensors)
    torch._foreach_copy_(saved, tensors)
    opt.step()
    known = {id(t) for t in tensors}
    for t, old in zip(tensors, saved):
        torch.where(ok.to(t.device), t, old, out=t)
    for p in params:
        for value in opt.state[p].values():
            if torch.is_tensor(value) and id(value) not in known:  # created by this step
                torch.where(ok.to(value.device), value, torch.zeros((), dtype=value.dtype, device=value.device),
                            out=value)


def _saved_copies(opt: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    key = [(t.data_ptr(), t.shape, t.dtype, t.device) for t in tensors]
    entry = _SAVED.get(opt)
    if entry is None or entry[0] != key:
        entry = (key, [torch.empty_like(t) for t in tensors])
        _SAVED[opt] = entry
    return entry[1]


__all__ = ["masked_step"]
