"""Graceful stop on SIGINT/SIGTERM: the handler only sets a flag; the training loop sees it after the current
step, writes a checkpoint and exits with ``TrainingInterrupted`` (exit status 128 + signal number). A second
signal while that happens aborts at once with KeyboardInterrupt; the checkpoint being written is then left as a
temporary directory that resume ignores.
"""
from __future__ import annotations

import signal
import threading


class GracefulStop:
    """Context manager: ``.signum`` is the first stop signal received (0 if none)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handler(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False
