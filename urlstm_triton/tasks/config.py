"""Configs of the validation-task trainers (``train/synthetic.py``, ``train/vision.py``) and their presets.

Each job config holds the shared ``run`` and ``train`` sections (``urlstm_triton.training.sections``) beside a
``model`` section (the variant, one flag for every cell of the paper's grid) and a ``task`` or ``data`` section.
Presets: the paper's settings (``copy``, ``adding``, ``smnist``, ``pmnist``, ``scifar``), the mnist-5k subset
(``smnist-5k``, ``pmnist-5k``) and CPU-sized versions (``*-tiny``) that finish in minutes on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..functional import BACKENDS
from ..gates import ALL_VARIANTS, parse_gate
from ..training.config import ConfigError, opt
from ..training.layer_options import CHUNK_HELP, KERNEL_HELP, KERNELS, layer_backend_options
from ..training.sections import RunConfig, TrainConfig
from .models import READOUTS, check_variant
from .synthetic import SYNTHETIC_TASKS
from .vision import VISION_TASKS

MNIST_5K = "data/mnist-5k/mnist_5k.csv.gz"  # shipped with the repository: data/README.md


@dataclass
class ModelConfig:
    variant: str = opt("UR", "gate variant, one of " + " ".join(ALL_VARIANTS) + " (UR: the UR-LSTM; lstm: "
                             "torch.nn.LSTM; paper names such as U-LSTM work too)")
    hidden: int = opt(256, "hidden units of the recurrent layer")
    layers: int = opt(1, "recurrent layers")
    backend: str = opt("auto", "recurrence backend of the URLSTM variants", choices=BACKENDS, resume_safe=True)
    chunk_size: str = opt("none", CHUNK_HELP, resume_safe=True)
    kernel: str = opt("auto", KERNEL_HELP, choices=KERNELS, resume_safe=True)
    forget_bias: Optional[float] = opt(None, "forget-gate bias of the standard init ('-' variants) and of lstm "
                                             "(default: 1 for '-', PyTorch's init for lstm)")
    chrono_tmax: Optional[float] = opt(None, "T_max of chrono init (C variants); default: the sequence length")
    master_chunk: int = opt(1, "ON-LSTM's chunk factor of the master-gate variants (-M, CM, UM, OM): each master "
                               "gate has hidden / master_chunk units")

    def validate(self, cfg) -> None:
        try:
            self.variant = check_variant(self.variant)
        except ValueError as e:
            raise ConfigError(f"--model.variant: {e}") from None
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        layer_backend_options(self.backend, self.chunk_size, self.kernel)
        try:
            parse_gate(self.variant).with_master_chunk(self.master_chunk).gate_rows(self.hidden)
        except ValueError as e:
            raise ConfigError(f"--model.master_chunk: {e}") from None
        if self.chrono_tmax is not None and not self.chrono_tmax > 2:
            raise ConfigError(f"model.chrono_tmax must be greater than 2, got {self.chrono_tmax}")


@dataclass
class SyntheticConfig:
    name: str = opt("copy", "synthetic task", choices=SYNTHETIC_TASKS)
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
    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class VisionDataConfig:
    task: str = opt("smnist", "smnist (784 steps of 1 pixel), pmnist (one fixed permutation), scifar "
                              "(1024 steps of RGB)", choices=tuple(VISION_TASKS))
    data: Optional[str] = opt(None, "local file (.csv/.csv.gz, .npz, .parquet); default: the hub data set")
    test_data: Optional[str] = opt(None, "local test file (else the data file's test split, or a split of it)")
    hub_name: Optional[str] = opt(None, "hub data set name (default ylecun/mnist or uoft-cs/cifar10)")
    test_fraction: float = opt(0.2, "share of a single file kept for testing (deterministic split)")
    split_seed: int = opt(0, "seed of the train/test split of a single file")
    valid_fraction: float = opt(0.1, "share of the training images held out for validation: periodic evaluations "
                                     "and model selection run on it, the test split is evaluated once, at the end")
    valid_seed: int = opt(0, "seed of the train/validation split (the same for every variant and training seed)")
    label_column: str = opt("last", "csv: where the label is", choices=("last", "first"))
    permutation_seed: int = opt(0, "pmnist: seed of the one fixed pixel permutation")
    max_train: Optional[int] = opt(None, "use only the first N training images")
    max_test: Optional[int] = opt(None, "use only the first N test images")
    batch_size: int = opt(50, "images per optimiser step (per process)")
    eval_batch_size: int = opt(500, "images per evaluation batch", resume_safe=True)
    epochs: float = opt(0.0, "train for this many epochs (sets train.steps from the training-set size; 0: use "
                             "train.steps)")
    readout: str = opt("last", "classifier input: the last hidden state, or all states concatenated (the "
                               "community port's)", choices=READOUTS)
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
