"""Fault injection for the reliability tests: make a run fail on purpose at a chosen step.

Set ``URLSTM_FAULTS`` to a comma-separated list of ``kind@step``:

- ``nan_loss@N``: the loss of step N becomes NaN (exercises the non-finite guard);
- ``kill@N``: SIGKILL this process after the optimiser step of step N (before any checkpoint of that step);
- ``kill_in_save@N``: SIGKILL half-way through writing the checkpoint of step N (after its first file);
- ``sigterm@N`` / ``sigint@N``: send that signal to this process after step N (graceful-stop path);
- ``error@N``: raise ``RuntimeError`` after step N (an unexpected crash, e.g. out of memory);
- ``enospc@N``: the checkpoint of step N fails half-way (after Accelerate wrote its files) with ``OSError(ENOSPC)``,
  as on a full disk.

Only the main process (rank 0) is affected unless the entry is suffixed ``:all`` (``kill@5:all``). The variable
is read once, when a ``Faults`` is made (by the run session, before any work: a bad entry is a ``ConfigError``
naming it); it is not part of the config, so a resumed run without it is clean.
"""
from __future__ import annotations

import errno
import os
import signal
from typing import Dict, Set

from ..errors import ConfigError

ENV = "URLSTM_FAULTS"
KINDS = ("nan_loss", "kill", "kill_in_save", "sigterm", "sigint", "error", "enospc")


class Faults:
    def __init__(self, spec: str | None = None, process_index: int = 0):
        spec = os.environ.get(ENV, "") if spec is None else spec
        self.at: Dict[str, Set[int]] = {k: set() for k in KINDS}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            entry, _, scope = item.partition(":")
            kind, _, step = entry.partition("@")
            if kind not in KINDS or not step.isdigit() or scope not in ("", "all"):
                raise ConfigError(f"{ENV}: bad entry {item!r}; expected kind@step[:all] with kind in "
                                  f"{', '.join(KINDS)}")
            if scope == "all" or process_index == 0:
                self.at[kind].add(int(step))

    def nan_loss(self, step: int) -> bool:
        return step in self.at["nan_loss"]

    def after_step(self, step: int) -> None:
        if step in self.at["kill"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if step in self.at["sigterm"]:
            os.kill(os.getpid(), signal.SIGTERM)
        if step in self.at["sigint"]:
            os.kill(os.getpid(), signal.SIGINT)
        if step in self.at["error"]:
            raise RuntimeError(f"injected fault: error@{step}")

    def save_hook(self, step: int):
        """What happens half-way through writing the checkpoint of ``step`` (called with the stage), or None."""
        if step in self.at["kill_in_save"]:
            def hook(stage: str) -> None:
                os.kill(os.getpid(), signal.SIGKILL)
        elif step in self.at["enospc"]:
            def hook(stage: str) -> None:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected fault: enospc@{step})")
        else:
            return None
        return hook
