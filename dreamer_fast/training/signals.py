"""Stopping a run at a step boundary on SIGINT / SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignals:
    """While training, SIGINT and SIGTERM ask it to stop at the next step boundary (checkpoint, exit status 130):
    the handler only sets :attr:`requested`, so no signal lands inside a replay chunk, metrics or checkpoint write.

    Also when the process was started in the background (``cmd &``) by a non-interactive shell, which starts it with
    SIGINT ignored: Python then inherits ``SIG_IGN`` and ``kill -INT`` would do nothing. The previous handlers are
    restored afterwards. Only in the main thread (where Python delivers signals).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
