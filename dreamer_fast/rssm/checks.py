"""The RSSM's argument checks: each error names the method, the argument, what was expected and what was received.

Every check takes the RSSM (``m``, an :class:`RSSM` as the :class:`Model` protocol describes it) for its sizes,
device and parameter dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from dreamer_fast.ops import kl_balance as _kl_balance
from dreamer_fast.rssm.state import RSSMState


class Model(Protocol):
    """What the checks read of ``dreamer_fast.RSSM``."""

    action_dim: int
    embed_dim: int
    deter_size: int
    stoch_size: int
    classes: int
    unimix: float
    gru_norm: nn.LayerNorm

    def initial(self, batch_size: int) -> RSSMState: ...

    def _dtype(self) -> torch.dtype: ...


def check_config(sizes: dict[str, object], unimix: object) -> None:
    """The constructor's sizes (positive ints) and ``unimix`` (a number in [0, 1))."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"RSSM: `{name}` must be a positive int, got {value!r}")
    check_unimix(unimix)


def check_unimix(unimix: object) -> None:
    if isinstance(unimix, bool) or not isinstance(unimix, (int, float)) or not 0 <= unimix < 1:
        raise ValueError(f"RSSM: `unimix` must be a number in [0, 1), got {unimix!r}")


def describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {list(x.shape)}"
    return type(x).__name__


def check_input(m: Model, op: str, name: str, t: object, expected: Sequence[int], what: str) -> torch.Tensor:
    """A tensor on the parameters' device with shape ``expected`` (``what`` names its dims in the message)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"RSSM.{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    w = m.gru_norm.weight
    if t.device != w.device:
        raise ValueError(f"RSSM.{op}: `{name}` is on {t.device} but the RSSM's parameters are on {w.device}")
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"RSSM.{op}: `{name}` must have shape {what} = {list(expected)}, got {list(t.shape)}")
    return t


def check_float(m: Model, op: str, name: str, t: torch.Tensor) -> None:
    """The parameters' dtype, or any floating dtype under autocast."""
    dtype = m._dtype()
    if t.dtype == dtype or (t.is_floating_point() and torch.is_autocast_enabled(t.device.type)):
        return
    raise TypeError(f"RSSM.{op}: `{name}` has dtype {t.dtype} but the RSSM's parameters are {dtype}; they must "
                    f"match (or run under torch.autocast)")


def check_flags(op: str, t: torch.Tensor) -> None:
    if t.is_complex():
        raise TypeError(f"RSSM.{op}: `is_first` must be bool or 0/1 numbers, got {t.dtype}")


def check_sequence(m: Model, op: str, embed: object, action: object, is_first: object) -> tuple[int, int]:
    """observe's inputs: ``embed [T, B, embed_dim]``, ``action [T, B, action_dim]``, ``is_first [T, B]``; -> T, B."""
    if not isinstance(embed, torch.Tensor):
        raise TypeError(f"RSSM.{op}: `embed` must be a torch.Tensor, got {type(embed).__name__}")
    if embed.dim() != 3 or embed.shape[-1] != m.embed_dim:
        raise ValueError(f"RSSM.{op}: `embed` must be [T, B, embed_dim] with embed_dim = {m.embed_dim}, "
                         f"got {describe(embed)}")
    T, B = embed.shape[:2]
    check_input(m, op, "embed", embed, (T, B, m.embed_dim), "[T, B, embed_dim]")
    check_float(m, op, "embed", embed)
    check_input(m, op, "action", action, (T, B, m.action_dim), "[T, B, action_dim]")
    check_float(m, op, "action", action)
    check_input(m, op, "is_first", is_first, (T, B), "[T, B]")
    check_flags(op, is_first)
    return T, B


def check_action(m: Model, op: str, name: str, action: object) -> int:
    """A ``[B, action_dim]`` action; -> B."""
    if not isinstance(action, torch.Tensor) or action.dim() != 2:
        raise ValueError(f"RSSM.{op}: `{name}` must be [B, action_dim], got {describe(action)}")
    check_input(m, op, name, action, (action.shape[0], m.action_dim), "[B, action_dim]")
    check_float(m, op, name, action)
    return action.shape[0]


def check_actions(m: Model, op: str, action: object) -> tuple[int, int]:
    """A ``[H, B, action_dim]`` sequence of actions; -> H, B."""
    if not isinstance(action, torch.Tensor) or action.dim() != 3:
        raise ValueError(f"RSSM.{op}: `action` must be a [H, B, action_dim] tensor, got {describe(action)}")
    H, B = action.shape[:2]
    check_action(m, op, "action", action[0] if H else action.new_empty(B, action.shape[2]))
    return H, B


def check_step(m: Model, op: str, prev_action: object, embed: object, is_first: object) -> int:
    """obs_step's inputs: ``prev_action [B, action_dim]``, ``embed [B, embed_dim]``, ``is_first [B]``; -> B."""
    B = check_action(m, op, "prev_action", prev_action)
    check_input(m, op, "embed", embed, (B, m.embed_dim), "[B, embed_dim]")
    check_float(m, op, "embed", embed)
    check_input(m, op, "is_first", is_first, (B,), "[B]")
    check_flags(op, is_first)
    return B


def check_state(m: Model, op: str, name: str, state: object, B: int | None) -> RSSMState:
    """A state with ``[B]`` fields (any leading dims when B is None); None -> the initial state."""
    if state is None:
        if B is None:
            raise ValueError(f"RSSM.{op}: `{name}` is required")
        return m.initial(B)
    if not isinstance(state, tuple) or len(state) != 3:
        raise TypeError(f"RSSM.{op}: `{name}` must be an RSSMState(deter, stoch, logits), got "
                        f"{type(state).__name__}")
    state = RSSMState(*state)
    lead = tuple(state.deter.shape[:-1]) if B is None else (B,)
    D, S, K = m.deter_size, m.stoch_size, m.classes
    for field, t, tail, what in (("deter", state.deter, (D,), "D"), ("stoch", state.stoch, (S, K), "S, K"),
                                 ("logits", state.logits, (S, K), "S, K")):
        check_input(m, op, f"{name}.{field}", t, lead + tail, f"[{'B' if B is not None else '...'}, {what}]")
        if t.dtype != m._dtype():
            raise TypeError(f"RSSM.{op}: `{name}.{field}` has dtype {t.dtype} but the RSSM's parameters are "
                            f"{m._dtype()}")
    return state


def check_noise(m: Model, op: str, noise: object, lead: tuple[int, ...]) -> torch.Tensor | None:
    """``[*lead, S]`` floating-point noise (or None), in the parameters' dtype."""
    if noise is None:
        return None
    shape = (*lead, m.stoch_size)
    what = "[" + ", ".join(("T", "B") if len(lead) == 2 else ("B",)) + ", S]"
    if op in ("imagine", "imagine_with_action"):
        what = "[H, B, S]"
    check_input(m, op, "noise", noise, shape, what)
    if not noise.is_floating_point():
        raise TypeError(f"RSSM.{op}: `noise` must be floating point (uniform in [0, 1)), got {noise.dtype}")
    return noise.to(m._dtype())


def check_imagine(policy: object, horizon: object) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
        raise ValueError(f"RSSM.imagine: `horizon` must be an int >= 0, got {horizon!r}")
    if not callable(policy):
        raise TypeError(f"RSSM.imagine: `policy` must be callable (feat -> action), got {type(policy).__name__}")


def check_policy_action(m: Model, action: object, N: int) -> None:
    """What imagine's policy returned: a ``[N, action_dim]`` tensor."""
    if not isinstance(action, torch.Tensor) or tuple(action.shape) != (N, m.action_dim):
        raise ValueError(f"RSSM.imagine: `policy` must return a [N, action_dim] = {[N, m.action_dim]} "
                         f"tensor, got {describe(action)}")
    check_input(m, "imagine", "policy(feat)", action, (N, m.action_dim), "[N, action_dim]")
    check_float(m, "imagine", "policy(feat)", action)


def check_kl(m: Model, post: object, prior: object, balance: object, free: object,
             free_avg: object) -> tuple[torch.Tensor, torch.Tensor, float, float, bool]:
    """kl_loss's states (their logits ``[..., S, K]`` on the parameters' device) and numbers (as
    :func:`dreamer_fast.kl_balance` checks them); -> the two logits and the numbers."""
    w = m.gru_norm.weight
    for name, state in (("post", post), ("prior", prior)):
        logits = getattr(state, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"RSSM.kl_loss: `{name}` must be an RSSMState(deter, stoch, logits), got "
                            f"{type(state).__name__}")
        if logits.device != w.device:
            raise ValueError(f"RSSM.kl_loss: `{name}.logits` is on {logits.device} but the RSSM's parameters are on "
                             f"{w.device}")
    post_logits, prior_logits, balance, free, free_avg, _ = _kl_balance.check(
        post.logits, prior.logits, balance, free, free_avg, m.unimix, op="RSSM.kl_loss",
        names=("post.logits", "prior.logits"),
    )
    return post_logits, prior_logits, balance, free, free_avg
