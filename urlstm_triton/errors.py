"""Every exception the package raises on purpose, in one place: the training machinery's, the LM's and the
validation tasks' (data, summaries, sweeps, gate analysis). The trainers' ``run_main`` (training/session.py) turns
each into one line on stderr and an exit status: 2 for ``ConfigError``/``DataError``/``StorageError`` (and their
subclasses), 3 for ``NonFiniteError``, 128+N for ``TrainingInterrupted`` by signal N; the tools
(``scripts/compare.py``, ``sweep.py``, ``gate_analysis.py``) print theirs in one line and exit 2."""
from __future__ import annotations

import signal
from typing import Optional


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, impossible value. The message names the key."""


class DataError(ValueError):
    """Bad input data: missing or empty corpus, stale cache, token ids beyond the vocabulary, a data file of the
    vision tasks that cannot be used. Names the file and what is wrong with it."""


class DataFileNotFound(DataError, FileNotFoundError):
    """A data file does not exist where it was looked for."""


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


class SummaryError(ValueError):
    """A summary file that is missing, unreadable or not a validation-task summary; names the file."""


class SweepError(ValueError):
    """A sweep file that cannot be read or does not describe a grid; names the file and the field."""


class GateAnalysisError(ValueError):
    """A run directory that cannot be analysed (no config, no checkpoint, an LM run); names the directory."""


class Inconclusive(Exception):
    """The persistent kernels' self-check (selfcheck.py) could not run to a verdict for a passing reason (the GPU's
    memory was full): its result is not stored on disk. Caught there, never raised to the caller."""
