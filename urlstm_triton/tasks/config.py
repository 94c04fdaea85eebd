"""Configs of the validation-task trainers (``train/synthetic.py``, ``train/vision.py``) and their presets.

Each job config holds the shared ``run`` and ``train`` sections (``urlstm_triton.training.sections``) beside a
``model`` section (the variant, one flag for every cell of the paper's grid) and a ``task`` or ``data`` section.
Presets: the paper's settings (``copy``, ``adding``, ``smnist``, ``pmnist``, ``scifar``), the mnist-5k subset
(``smnist-5k``, ``pmnist-5k``) and CPU-sized versions (``*-tiny``) that finish in minutes on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..errors import ConfigError
from ..training.config import opt, optional
from ..training.recurrent import RecurrentConfig
from ..training.sections import RunConfig, TrainConfig
from .models import READOUTS
from .synthetic import SYNTHETIC_TASKS
from .vision import VISION_TASKS

MNIST_5K = "data/mnist-5k/mnist_5k.csv.gz"  # shipped with the repository: data/README.md

# the model section of both jobs is the shared recurrent config (variant, hidden, layers, backend, ...)
ModelConfig = RecurrentConfig


@dataclass
class SyntheticConfig:
    """The synthetic task (--task.*): copy or adding, its length and the batch."""

    name: Literal[SYNTHETIC_TASKS] = opt("copy", "synthetic task")
    lag: int = opt(480, "copy task: blanks between the 10 symbols and the 10 cue markers")
    length: int = opt(2000, "adding task: sequence length T")
    batch_size: int = opt(10, "sequences per optimiser step (per process)")
    eval_size: int = opt(1000, "sequences in the fixed evaluation set (rounded up to whole batches)")

    def validate(self, cfg) -> None:
        if self.lag < 0:
            raise ConfigError(f"task.lag must be >= 0, got {self.lag}")
        if self.length < 2:
            raise ConfigError(f"task.length must be >= 2 (one marker in each half), got {self.length}")
        for name in ("batch_size", "eval_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SyntheticJobConfig:
    """Settings of the synthetic-task job, by section."""

    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class VisionDataConfig:
    """The image task and its data (--data.*)."""

    task: Literal[tuple(VISION_TASKS)] = opt("smnist", "smnist (784 steps of 1 pixel), pmnist (one fixed "
                                                       "permutation), scifar (1024 steps of RGB)")
    data: Optional[str] = opt(None, "local file (.csv/.csv.gz, .npz, .parquet); default: the hub data set",
                              parse=optional(str))
    test_data: Optional[str] = opt(None, "local test file (else the data file's test split, or a split of it)",
                                   parse=optional(str))
    hub_name: Optional[str] = opt(None, "hub data set name (default ylecun/mnist or uoft-cs/cifar10)",
                                  parse=optional(str))
    test_fraction: float = opt(0.2, "share of a single file kept for testing (deterministic split)")
    split_seed: int = opt(0, "seed of the train/test split of a single file")
    valid_fraction: float = opt(0.1, "share of the training images held out for validation: periodic evaluations "
                                     "and model selection run on it, the test split is evaluated once, at the end")
    valid_seed: int = opt(0, "seed of the train/validation split (the same for every variant and training seed)")
    label_column: Literal["last", "first"] = opt("last", "csv: where the label is")
    permutation_seed: int = opt(0, "pmnist: seed of the one fixed pixel permutation")
    max_train: Optional[int] = opt(None, "use only the first N training images", parse=optional(int))
    max_test: Optional[int] = opt(None, "use only the first N test images", parse=optional(int))
    batch_size: int = opt(50, "images per optimiser step (per process)")
    eval_batch_size: int = opt(500, "images per evaluation batch", resume_safe=True)
    epochs: float = opt(0.0, "train for this many epochs (sets train.steps from the training-set size; 0: use "
                             "train.steps)")
    readout: Literal[READOUTS] = opt("last", "classifier input: the last hidden state, or all states concatenated "
                                             "(the community port's)")
    mlp_hidden: int = opt(256, "units of the ReLU layer between the readout and the 10 classes")

    def validate(self, cfg) -> None:
        for name in ("test_fraction", "valid_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"data.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "mlp_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ConfigError(f"data.epochs must be >= 0, got {self.epochs}")
        if self.test_data is not None and self.data is None:
            raise ConfigError("data.test_data was given without data.data (the training file)")


@dataclass
class VisionJobConfig:
    """Settings of the pixel-by-pixel image job, by section."""

    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(schedule="constant"))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden=1024))
    data: VisionDataConfig = field(default_factory=VisionDataConfig)


# The paper's setup (Gu et al. 2020, appendix D): Adam 1e-3, gradient clipping 1, no schedule; hidden 256 and
# batch 10 for the synthetic tasks, hidden 1024 and batch 50 for images. Step counts are ours.
_PAPER_TRAIN = {"lr": 1e-3, "grad_clip": 1.0, "schedule": "constant", "optimizer": "adam"}

SYNTHETIC_PRESETS = {
    "copy": {"task": {"name": "copy", "lag": 480, "batch_size": 10}, "model": {"hidden": 256},
             "train": {**_PAPER_TRAIN, "steps": 30000, "eval_every": 500, "save_every": 1000}},
    "adding": {"task": {"name": "adding", "length": 2000, "batch_size": 10}, "model": {"hidden": 256},
               "train": {**_PAPER_TRAIN, "steps": 30000, "eval_every": 500, "save_every": 1000}},
    # CPU-sized: the copy task at lag 20 is learned to > 90% per-symbol accuracy in ~1000 steps by the UR-LSTM
    "copy-tiny": {"task": {"name": "copy", "lag": 20, "batch_size": 32, "eval_size": 256},
                  "model": {"hidden": 128},
                  "train": {**_PAPER_TRAIN, "lr": 1e-2, "steps": 1000, "eval_every": 100, "save_every": 500}},
    "adding-tiny": {"task": {"name": "adding", "length": 100, "batch_size": 32, "eval_size": 256},
                    "model": {"hidden": 128},
                    "train": {**_PAPER_TRAIN, "lr": 3e-3, "steps": 1000, "eval_every": 100, "save_every": 500}},
}

VISION_PRESETS = {
    "smnist": {"data": {"task": "smnist", "batch_size": 50, "epochs": 150}, "model": {"hidden": 1024},
               "train": {**_PAPER_TRAIN, "eval_every": 1000, "save_every": 1000}},
    "pmnist": {"data": {"task": "pmnist", "batch_size": 50, "epochs": 150}, "model": {"hidden": 1024},
               "train": {**_PAPER_TRAIN, "eval_every": 1000, "save_every": 1000}},
    "scifar": {"data": {"task": "scifar", "batch_size": 50, "epochs": 100}, "model": {"hidden": 1024},
               "train": {**_PAPER_TRAIN, "eval_every": 1000, "save_every": 1000}},
    # the 5,000 real digits of data/mnist-5k (4,000 train / 1,000 test), paper-sized model
    "smnist-5k": {"data": {"task": "smnist", "data": MNIST_5K, "batch_size": 50, "epochs": 50},
                  "model": {"hidden": 1024}, "train": {**_PAPER_TRAIN, "eval_every": 400, "save_every": 400}},
    "pmnist-5k": {"data": {"task": "pmnist", "data": MNIST_5K, "batch_size": 50, "epochs": 50},
                  "model": {"hidden": 1024}, "train": {**_PAPER_TRAIN, "eval_every": 400, "save_every": 400}},
    # CPU-sized: mnist-5k, a small model, a few epochs
    "smnist-tiny": {"data": {"task": "smnist", "data": MNIST_5K, "batch_size": 50, "epochs": 5,
                             "eval_batch_size": 250},
                    "model": {"hidden": 64},
                    "train": {**_PAPER_TRAIN, "lr": 3e-3, "eval_every": 100, "save_every": 200}},
    "pmnist-tiny": {"data": {"task": "pmnist", "data": MNIST_5K, "batch_size": 50, "epochs": 5,
                             "eval_batch_size": 250},
                    "model": {"hidden": 64},
                    "train": {**_PAPER_TRAIN, "lr": 3e-3, "eval_every": 100, "save_every": 200}},
}
