"""Philox4x32-10 in plain PyTorch: the random stream of the sampling ops, as a readable specification.

The fused kernels draw from the same stream (csrc/include/dreamer_fast/philox.h), so reference and fused ops give the
same samples for the same seed, on any device. Counter-based: element ``n`` of the stream under ``seed`` is a pure
function of (n, seed), with counter ``(lo32(n), hi32(n), 0, 0)`` and key ``(lo32(seed), hi32(seed))``; its uniform is
the first output word's top 24 bits times 2^-24 (exact in float32 and float64 alike).

Words are held in int64 tensors; 32x32-bit products are split into 16-bit halves so nothing overflows int64.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF
_MUL = (0xD2511F53, 0xCD9E8D57)  # round multipliers
_WEYL = (0x9E3779B9, 0xBB67AE85)  # key schedule increments


def draw_seed(generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh int64 seed as a CPU scalar tensor, from ``generator`` (None: torch's default CPU generator).

    A tensor rather than a Python int, so that torch.compile traces the draw without an ``.item()`` graph break.
    """
    return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of the 64-bit product a * b (a, b < 2^32)."""
    p_hi = a * (b >> 16)  # < 2^48
    p_lo = a * (b & 0xFFFF)  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK
    return hi, lo


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], key: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Ten Philox rounds on 32-bit words held in int64 tensors (broadcasting); returns the four output words."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(_MUL[0], x0)
        hi1, lo1 = _mulhilo(_MUL[1], x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
        k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
    return x0, x1, x2, x3


def philox_uniform(
    seed: torch.Tensor,
    shape: torch.Size | tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str,
    offset: torch.Tensor | int = 0,
) -> torch.Tensor:
    """Uniforms in [0, 1) of shape ``shape``: element n (flat, row-major) is stream element ``offset + n`` (modulo
    2^64) under ``seed``. ``offset`` may be a 0-d int64 tensor on ``device`` (it is not read on the host)."""
    n = torch.arange(torch.Size(shape).numel(), dtype=torch.int64, device=device) + offset
    seed = seed.to(device=device, dtype=torch.int64)
    zero = torch.zeros_like(n)
    key = (seed & _MASK, (seed >> 32) & _MASK)  # the two's complement words of a negative seed
    x0 = philox4x32_10((n & _MASK, (n >> 32) & _MASK, zero, zero), key)[0]
    return ((x0 >> 8).to(dtype) * 2.0**-24).reshape(shape)


class PhiloxStream:
    """A Philox stream whose key and offset live in a tensor on a device: ``state``, int64 ``[key, offset]``.

    A draw of n uniforms takes stream elements ``offset .. offset + n - 1`` under ``key`` and advances ``offset`` by n,
    in place and on the device: nothing is read on the host, so a draw inside a captured CUDA graph draws new numbers
    at every replay. ``straight_through_categorical(..., stream=)`` takes it (the fused op reads and advances
    ``state`` itself); :meth:`uniform` is the same draw in plain PyTorch, e.g. the noise of the other sampling ops. With offset 0 the stream under key ``seed`` gives the samples
    of the ops' ``generator`` path for that seed.

    Args:
        seed: the key, an integer in [-2^63, 2^63) (None: drawn from ``generator``, None: torch's default CPU one).
        device: where ``state`` lives: the device of the tensors it draws for.
        generator: a CPU ``torch.Generator`` for the key when ``seed`` is None.
    """

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu", *,
                 generator: torch.Generator | None = None) -> None:
        if seed is None:
            key = draw_seed(generator)
        else:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"PhiloxStream: `seed` must be an int or None, got {type(seed).__name__}")
            if not -(2**63) <= seed < 2**63:
                raise ValueError(f"PhiloxStream: `seed` must be in [-2^63, 2^63), got {seed}")
            key = torch.tensor(seed, dtype=torch.int64)
        self.state = torch.stack([key, torch.zeros((), dtype=torch.int64)]).to(device)

    @property
    def device(self) -> torch.device:
        return self.state.device

    def uniform(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The next ``numel(shape)`` uniforms of the stream, in [0, 1), on :attr:`device`; advances the offset."""
        u = philox_uniform(self.state[0], shape, dtype, self.state.device, offset=self.state[1])
        self.state[1:].add_(u.numel())
        return u

    def state_dict(self) -> dict[str, int]:
        """``{"key": int, "offset": int}`` (reads ``state`` on the host: for checkpoints, not inside an update)."""
        key, offset = self.state.tolist()
        return {"key": key, "offset": offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`'s values into ``state`` in place (a captured graph keeps reading it)."""
        if not isinstance(state, dict) or set(state) != {"key", "offset"}:
            raise ValueError(
                f"PhiloxStream.load_state_dict: expected a dict with keys 'key' and 'offset', got {state!r}"
            )
        values = torch.tensor([state["key"], state["offset"]], dtype=torch.int64)
        self.state.copy_(values)

    def __repr__(self) -> str:
        return f"PhiloxStream(device={self.device})"
