"""Every exception the training machinery raises on purpose, in one place. ``run_main`` (session.py) turns each
into one line on stderr and an exit status: 2 for ``ConfigError``/``DataError``/``StorageError`` (and their
subclasses), 3 for ``NonFiniteError``, 128+N for ``TrainingInterrupted`` by signal N."""
from __future__ import annotations

import signal
from typing import Optional


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, impossible value. The message names the key."""


class DataError(ValueError):
    """Bad input data: missing or empty corpus, stale cache, token ids beyond the vocabulary. Names the file."""


class RunDirectoryInUse(ConfigError):
    """Another job owns the run directory (runlock.py): names its pid and host."""


class StorageError(RuntimeError):
    """A file of the run could not be written (disk full, quota, read-only file system): names the file and what
    was kept (the last good checkpoint)."""


class IncompatibleCheckpoint(ConfigError):
    """The checkpoint was written by a run with a different model/data/optimiser config or process count."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint directory failed verification (missing file, wrong size, wrong checksum, bad manifest)."""


class NonFiniteError(RuntimeError):
    """Training hit a non-finite loss or gradient norm and the policy says stop."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM (or the launcher's death, as SIGTERM) stopped the run after a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Optional[str], cause: str = ""):
        self.signum = signum
        self.checkpoint = checkpoint
        cause = cause or f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{cause}; checkpoint saved at {checkpoint} (continue with --resume)")
