"""The config sections every training job shares: ``RunConfig`` (where and how a run executes) and
``TrainConfig`` (optimisation, checkpointing, numerical guards). A job's config dataclass holds these two next
to its own ``model`` and ``data`` sections; see ``urlstm_triton.lm.config`` for an example.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .config import opt


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, set by ``accelerate launch``/``torchrun``; 1 for a
    plain ``python`` run). For checks that must stop a run before its Accelerator (and data) exist."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class RunConfig:
    """Where and how the run executes (--run.*): its directory, resume, devices, logging."""

    dir: str = opt("", "run directory (checkpoints, logs, summary); default runs/<job>-<preset>", resume_safe=True)
    preset: str = opt("", "the preset this config started from (set by --preset)", resume_safe=True)
    resume: bool = opt(False, "continue from the newest complete checkpoint in the run directory", resume_safe=True)
    resume_from: str = opt("", "continue from this checkpoint directory instead", resume_safe=True)
    overwrite: bool = opt(False, "start fresh even if the run directory holds checkpoints (deletes them)",
                          resume_safe=True)
    cpu: bool = opt(False, "run on the CPU even if a GPU is present", resume_safe=True)
    tensorboard: bool = opt(True, "log scalars to TensorBoard (through Accelerate's trackers)", resume_safe=True)
    progress: bool = opt(True, "show a tqdm progress bar on the main process when stderr is a terminal (a log "
                               "file or pipe gets the periodic log lines only)", resume_safe=True)
    log_every: int = opt(10, "steps between log lines and TensorBoard points", resume_safe=True)
    threads: int = opt(0, "torch CPU threads (0: torch's default)", resume_safe=True)

    def validate(self, cfg) -> None:
        if self.log_every < 1:
            raise ConfigError(f"run.log_every must be >= 1, got {self.log_every}")
        if self.threads < 0:
            raise ConfigError(f"run.threads must be >= 0, got {self.threads}")


@dataclass
class TrainConfig:
    """The optimisation (--train.*): steps, optimiser, schedule, clipping, precision, evaluation, checkpoints."""

    steps: int = opt(1000, "optimiser steps in total", resume_safe=True)
    seed: int = opt(0, "seed for parameters, dropout and data order")
    optimizer: Literal["adam", "adamw", "sgd"] = opt("adam", "optimiser")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(0.0, "weight decay")
    warmup_steps: int = opt(0, "linear warmup steps")
    schedule: Literal["cosine", "constant"] = opt("cosine", "learning-rate schedule after warmup")
    min_lr_ratio: float = opt(0.1, "final learning rate of the cosine schedule, as a fraction of lr")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0: no clipping)")
    grad_accum: int = opt(1, "micro-batches per optimiser step (the batch is split across them)")
    mixed_precision: Literal["no", "bf16", "fp16"] = opt("no", "autocast precision (fp16 uses a loss scaler)")
    eval_every: int = opt(0, "steps between validation evaluations (0: only at the end)", resume_safe=True)
    eval_batches: int = opt(0, "batches per periodic validation (0: all); the final evaluation uses all",
                            resume_safe=True)
    save_every: int = opt(100, "steps between checkpoints (one is always written at the end)", resume_safe=True)
    keep_checkpoints: int = opt(3, "how many checkpoints to keep (oldest are deleted)", resume_safe=True)
    nonfinite: Literal["skip", "stop"] = opt("stop", "on a non-finite loss or gradient norm: skip the step or stop "
                                                     "the run", resume_safe=True)
    max_nonfinite_skips: int = opt(10, "with nonfinite=skip, stop after this many skipped steps", resume_safe=True)

    def validate(self, cfg) -> None:
        for name in ("steps", "grad_accum", "keep_checkpoints", "max_nonfinite_skips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {self.grad_clip}")
