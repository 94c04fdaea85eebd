"""Graceful stop on SIGINT/SIGTERM, and when the launcher dies: the handler only sets a flag; the training loop sees
it after the current step, writes a checkpoint and exits with ``TrainingInterrupted`` (exit status 128 + signal
number). A second signal while that happens aborts at once with KeyboardInterrupt; the checkpoint being written is
then left as a temporary directory that resume ignores. The one exception is SIGTERM after SIGINT: Ctrl-C reaches
both ``accelerate launch`` and its training process, and accelerate (>= 1.16) then terminates its child itself, so
that SIGTERM is the same request passed on, not a second one (accelerate kills the child 5 s later: a stop under
it has that long to finish the step and write the checkpoint).

A launcher (``accelerate launch``, ``torchrun``) that is killed (SIGKILL; before accelerate 1.16, SIGTERM too)
does not pass the signal on: its training processes would run on, orphaned, to the end (and into a restarted
job's run directory). So under a launcher a thread watches the parent process: when it is gone (the process is
re-parented), the loop stops as on SIGTERM. accelerate 1.16's launcher also relays its child's stderr through a
pipe it reads: once it is dead nothing reads that pipe and every write to it fails (``BrokenPipeError``), so the
watcher points such streams at ``/dev/null`` (the run's ``train.log`` keeps every line).
"""
from __future__ import annotations

import os
import select
import signal
import threading
from typing import Optional

# set in the training processes' environment by torchrun (accelerate launch --multi_gpu) and by accelerate
# launch's single-process launcher respectively; a plain `python train/lm.py` (maybe under nohup) has neither,
# and its parent (a shell) may well exit while it trains on
LAUNCHER_VARS = ("TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")
WATCH_INTERVAL_S = 0.5


def silence_unread_pipes(fds=(1, 2)) -> None:
    """Point each of ``fds`` whose reader is gone (a pipe whose read end is closed: ``poll`` reports an error on
    the write end) at ``/dev/null``, so that later writes (log lines, the closing message, the interpreter's
    final flush) neither raise nor leave the process with a traceback."""
    for fd in fds:
        try:
            poller = select.poll()
            poller.register(fd, 0)  # POLLERR is always reported
            broken = any(ev & (select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))
        except (OSError, ValueError):
            continue
        if broken:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)


def launcher_pid() -> Optional[int]:
    """The pid of the launcher this process runs under (its parent), or None when not started by one."""
    return os.getppid() if any(v in os.environ for v in LAUNCHER_VARS) else None


class GracefulStop:
    """Context manager: ``.signum`` is the first stop signal received (0 if none), ``.cause`` says what it was.
    ``parent``: the launcher's pid, to stop as on SIGTERM when this process stops being its child."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, parent: Optional[int] = None):
        self.signum = 0
        self.cause = ""
        self.parent = parent
        self._previous = {}
        self._done = threading.Event()

    def _handler(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGTERM:
            return  # Ctrl-C passed on by the launcher (see the module docstring): the stop is under way already
        if self.signum:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
        self.signum = signum
        self.cause = f"stopped by {signal.Signals(signum).name}"

    def _watch(self) -> None:
        while not self._done.wait(WATCH_INTERVAL_S):
            if os.getppid() != self.parent:
                silence_unread_pipes()
                if not self.signum:
                    self.cause = f"stopped because the launcher (pid {self.parent}) died"
                    self.signum = signal.SIGTERM
                return

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        if self.parent is not None:
            threading.Thread(target=self._watch, name="urlstm-launcher-watch", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False
