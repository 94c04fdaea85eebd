"""Training machinery shared by every job (``train/lm.py``, ``train/synthetic.py``, ``train/vision.py``).

A training script does, in order::

    cfg = parse_config(MyJobConfig, argv, presets=PRESETS, default_preset="...")   # config.py
    session = RunSession(cfg, job="myjob")      # session.py: run dir, Accelerator, logging, seed
    model = build_model(cfg)                    # the job's own model
    task = MyTask(cfg, session)                 # a Task subclass (task.py): batches, loss, evaluation, state
    summary = Trainer(session, model, task).fit()   # trainer.py: the loop, checkpoints, guards, summary

and wraps ``main`` in ``run_main`` for clean error exits. ``MyJobConfig`` is a dataclass with sections
``run: RunConfig`` and ``train: TrainConfig`` (sections.py) beside its own. Modules:

- config: dataclass configs, presets, ``--section.field`` overrides, validation, config hash;
- sections: the shared ``run`` and ``train`` sections;
- checkpoint: crash-safe checkpoints with manifest and checksums, fallback, compatibility check, RNG capture;
- trainer: the loop (accumulation, clipping, mixed precision, non-finite guard, evaluation, logs, summary);
- guard, signals, faults, schedule, records: the non-finite guard, SIGINT/SIGTERM stop, fault injection for
  tests (``URLSTM_FAULTS``), warmup + cosine schedule, metrics log and JSON summary.
"""
from .checkpoint import CheckpointManager, CorruptCheckpoint, IncompatibleCheckpoint, capture_rng, restore_rng
from .config import ConfigError, config_hash, config_to_dict, hashed_fields, opt, parse_config
from .faults import Faults
from .guard import NonFiniteError, NonFiniteGuard
from .records import MetricsLog, read_metrics, write_summary
from .schedule import lr_factor, warmup_cosine
from .sections import RunConfig, TrainConfig
from .session import DataError, RunSession, run_main
from .signals import GracefulStop, TrainingInterrupted
from .task import Task
from .trainer import Trainer, build_optimizer

__all__ = [
    "CheckpointManager", "CorruptCheckpoint", "IncompatibleCheckpoint", "capture_rng", "restore_rng",
    "ConfigError", "config_hash", "config_to_dict", "hashed_fields", "opt", "parse_config", "Faults",
    "NonFiniteError", "NonFiniteGuard", "MetricsLog", "read_metrics", "write_summary", "lr_factor",
    "warmup_cosine", "RunConfig", "TrainConfig", "DataError", "RunSession", "run_main", "GracefulStop",
    "TrainingInterrupted", "Task", "Trainer", "build_optimizer",
]
