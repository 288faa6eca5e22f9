"""An optimiser step taken or skipped by a device flag, without reading the flag on the host (AMP's ``found_inf``
masking, for any optimiser whose step writes only its parameters and its per-parameter state)."""

from __future__ import annotations

import torch


def masked_step(opt: torch.optim.Optimizer, ok: torch.Tensor) -> None:
    """``opt.step()`` where the 0-d bool ``ok`` is true; where it is false, the parameters and the optimiser state end
    as they were (state first created by this step ends as zeros, which is what a fresh state holds, so the next step
    equals a first one).

    The step runs either way and every written tensor is then chosen with ``torch.where``: a taken step leaves exactly
    the tensors ``opt.step()`` makes, bit for bit, and nothing waits for the device. ``ok`` must be on the device of
    the parameters, or on the CPU beside CPU state (Adam's non-capturable step counter).
    """
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)})
              for p in params]
    opt.step()
    for p, (old, old_state) in zip(params, before):
        _keep(p.detach(), old, ok)
        for key, value in opt.state[p].items():
            if torch.is_tensor(value):
                _keep(value, old_state.get(key, torch.zeros_like(value)), ok)


def _keep(new: torch.Tensor, old: torch.Tensor, ok: torch.Tensor) -> None:
    """``new = ok ? new : old``, in place."""
    new.copy_(torch.where(ok.to(new.device), new, old))


__all__ = ["masked_step"]
