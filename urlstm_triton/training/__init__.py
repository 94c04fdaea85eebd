"""Training machinery shared by every job (``train/lm.py``, ``train/synthetic.py``, ``train/vision.py``).

A training script does, in order::

    cfg = parse_config(MyJobConfig, argv, presets=PRESETS, default_preset="...")   # config.py
    with RunSession(cfg, job="myjob") as session:   # session.py: run dir (held till the end), Accelerator, seed
        model = build_model(cfg)                    # the job's own model around build_recurrent(cfg.model, ...)
        objective = MyObjective(cfg, session)       # an Objective subclass (objective.py): batches, loss, evaluation
        summary = Trainer(session, model, objective).fit()   # trainer.py: the loop, checkpoints, guards, summary

and wraps ``main`` in ``run_main`` for clean error exits. ``MyJobConfig`` is a dataclass with sections
``run: RunConfig`` and ``train: TrainConfig`` (sections.py) beside its own; its ``model`` section is (or extends)
``RecurrentConfig`` (recurrent.py). Modules:

- config: dataclass configs read by simple-parsing: presets, YAML, ``--section.field`` overrides, config hash;
- sections, recurrent: the shared ``run``/``train`` sections; the recurrent model section and its builder;
- checkpoint: crash-safe checkpoints through ``accelerator.save_state`` with manifest and checksums, fallback,
  compatibility check, retention;
- runlock: one job per run directory (an OS lock and an owner lease, taken by the session);
- trainer: the loop (accumulation, clipping, mixed precision, non-finite guard, evaluation, logs, summary);
- the package's ``urlstm_triton.errors`` and ``urlstm_triton.files`` (shared with the LM, the tasks and the kernel
  caches): every exception raised on purpose (re-exported here); checksums, fsync and atomic writes;
- guard, signals, faults, schedule, records: the non-finite guard, SIGINT/SIGTERM stop and the launcher watch,
  fault injection for tests (``URLSTM_FAULTS``), warmup + cosine schedule, metrics log and JSON summary.
"""
from ..errors import (ConfigError, CorruptCheckpoint, DataError, IncompatibleCheckpoint, NonFiniteError,
                      RunDirectoryInUse, StorageError, TrainingInterrupted)
from .checkpoint import CheckpointManager
from .config import config_hash, config_to_dict, hashed_fields, opt, optional, parse_config, read_config
from .faults import Faults
from .guard import NonFiniteGuard
from .objective import Objective
from .records import MetricsLog, read_metrics, write_summary
from .recurrent import RecurrentConfig, build_recurrent
from .schedule import lr_factor, warmup_cosine
from .sections import RunConfig, TrainConfig
from .session import RunSession, run_main
from .signals import GracefulStop
from .trainer import Trainer, build_optimizer

__all__ = [
    "CheckpointManager", "CorruptCheckpoint", "IncompatibleCheckpoint", "ConfigError", "DataError",
    "NonFiniteError", "RunDirectoryInUse", "StorageError", "TrainingInterrupted", "config_hash", "config_to_dict",
    "hashed_fields", "opt", "optional",
    "parse_config", "read_config", "Faults", "NonFiniteGuard", "Objective", "MetricsLog", "read_metrics",
    "write_summary", "RecurrentConfig", "build_recurrent", "lr_factor", "warmup_cosine", "RunConfig",
    "TrainConfig", "RunSession", "run_main", "GracefulStop", "Trainer", "build_optimizer",
]
