"""Checkpoints: atomic ``torch.save`` with a format tag, loading with clear errors, and global RNG states.

``save_checkpoint(path, payload)`` never leaves a half-written file at ``path``: it writes a temp file in the same
folder, fsyncs it and renames it over ``path``. ``load_checkpoint`` loads with ``weights_only=True`` (tensors,
containers, numbers, strings: no arbitrary code on load), so payloads should hold state dicts and plain values.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_fast.training.atomic import atomic_write

FORMAT = "dreamer_fast/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt, or is not a dreamer_fast checkpoint."""


def load_agent_state(agent: Any, state: dict[str, Any], mismatch: str) -> None:
    """``agent.load_checkpoint_state(state)``; a state that does not fit the model raises one CheckpointError line:
    ``mismatch`` and the first lines of torch's message."""
    try:
        agent.load_checkpoint_state(state)
    except (RuntimeError, ValueError, KeyError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise CheckpointError(f"{mismatch} ({' '.join(lines[:2])[:300]})") from None


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Saves ``payload`` plus ``{"format": FORMAT}`` to ``path`` atomically; returns the path."""
    if not isinstance(payload, dict):
        raise TypeError(f"save_checkpoint: payload must be a dict, got {type(payload).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save({**payload, "format": FORMAT}, f))
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The payload saved by :func:`save_checkpoint` (with its ``format`` key); ``CheckpointError`` when unusable."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file (a run's folder holds "
                              f"{str(path / 'checkpoint.pt')!r})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated, corrupt or not a torch file "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
                              ) from error
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{str(path)!r} is a torch file but not a dreamer_fast checkpoint (no 'format' key)")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {payload['format']!r}; "
                              f"this version reads {FORMAT!r}")
    return payload


def rng_state() -> dict[str, Any]:
    """The global RNG states: Python ``random``, NumPy's global generator, torch CPU and (if available) CUDA.

    Only tensors, lists, tuples, ints, floats and strings, so it loads with ``weights_only=True``.
    """
    legacy = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(legacy["state"]["key"].astype(np.int64)), "pos": int(legacy["state"]["pos"]),
                  "has_gauss": int(legacy["has_gauss"]), "gauss": float(legacy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned. CUDA states are restored when CUDA is available."""
    random.setstate(_to_tuple(state["python"]))
    numpy = state["numpy"]
    key = np.asarray(numpy["key"], dtype=np.int64).astype(np.uint32)
    np.random.set_state(("MT19937", key, int(numpy["pos"]), int(numpy["has_gauss"]), float(numpy["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value: Any) -> Any:
    """random.setstate needs tuples; some serialisations hand lists back."""
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
