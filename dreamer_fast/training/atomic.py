"""Atomic file writes: the bytes go to a temp file in the target's folder, are flushed to disk, then renamed over the
target, so a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None], tmp_prefix: str | None = None) -> Path:
    """Calls ``write(f)`` on a temp file beside ``path`` (named ``tmp_prefix``… or ``.<name>.``…``.tmp``), fsyncs it and
    renames it to ``path``; the temp file is removed if anything fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
