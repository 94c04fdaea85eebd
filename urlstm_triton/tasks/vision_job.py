"""The pixel-sequence trainer (``train/vision.py``): sequential MNIST, permuted MNIST, sequential CIFAR-10, any
gate variant, on the shared training machinery (``urlstm_triton.training``).

The data are read and checked in full before the run starts, so a malformed file fails at once with its name.
Permuted MNIST draws its one permutation from ``data.permutation_seed`` and writes it to
``<run>/permutation.json``; a resumed run checks that it draws the same one.

Model selection: a seeded validation split (``data.valid_fraction`` of the training images, drawn with
``data.valid_seed``) is carved from the training set. The periodic evaluations run on it, and the task keeps the
weights of the best validation evaluation (in its checkpoint state, so resuming keeps them). The test split is
evaluated once, at the end, with those selected weights; the summary holds the validation history (``best``,
``final``) and the selected model's test metrics (``test``, ``selected``).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..files import write_json_atomic
from ..training import ConfigError, Objective, RunSession, Trainer, read_config
from ..training.recurrent import build_recurrent
from ..training.sections import launched_world_size
from .config import VISION_PRESETS, VisionJobConfig
from .models import SequenceClassifier
from .run_summary import complete_summary
from .synthetic import batch_generator
from .vision import ImageSet, PixelSequences, fixed_permutation, load_vision_data, split_train_test, vision_task

EVAL_SPLIT = "valid"  # the periodic evaluations and the model selection; "test" is evaluated once, at the end
PAPER_ACCURACY = {"smnist": 0.9928, "pmnist": 0.9696, "scifar": 0.7100}  # UR-LSTM, Gu et al. 2020, full data


def load_data(cfg: VisionJobConfig) -> Tuple[ImageSet, ImageSet, ImageSet]:
    """Train, validation and test sets: the validation set is a seeded share of the training images."""
    d = cfg.data
    train, test = load_vision_data(d.task, d.data, d.test_data, d.hub_name, d.test_fraction, d.split_seed,
                                   d.label_column, d.max_train, d.max_test)
    train, valid = split_train_test(train, d.valid_fraction, d.valid_seed)
    return train, valid, test


def permutation_for(cfg: VisionJobConfig):
    spec, permuted = vision_task(cfg.data.task)
    return fixed_permutation(spec.seq_len, cfg.data.permutation_seed) if permuted else None


def save_permutation(run_dir: Path, perm: torch.Tensor, seed: int, resuming: bool) -> None:
    """Write the permutation beside the run; refuse to continue a run whose saved permutation differs."""
    path = Path(run_dir) / "permutation.json"
    if resuming and path.exists():
        saved = json.loads(path.read_text())
        if saved.get("permutation") != perm.tolist():
            raise ConfigError(f"{path} holds another permutation than data.permutation_seed={seed} draws: this run "
                              "directory belongs to a different permuted-MNIST task")
        return
    write_json_atomic({"seed": seed, "permutation": perm.tolist()}, path)


def build_model(cfg: VisionJobConfig, seq_len: int, channels: int) -> torch.nn.Module:
    m, d = cfg.model, cfg.data
    rnn = build_recurrent(m, channels, batch_first=True, default_tmax=float(seq_len))
    return SequenceClassifier(rnn, m.hidden, seq_len, readout=d.readout, mlp_hidden=d.mlp_hidden)


class VisionObjective(Objective):
    """Cross-entropy classification of pixel sequences. Batches come from an endless stream of epochs, each a
    fresh shuffle drawn from ``(seed, epoch)``: the batch of a step is a pure function of the step.

    Every evaluation of ``valid`` that beats the best so far (higher accuracy, then lower loss) keeps a copy of
    the weights; ``test`` evaluates that copy (model selection on validation, the test split seen once)."""

    eval_splits = (EVAL_SPLIT, "test")
    unit = "images"

    def __init__(self, train: PixelSequences, valid: PixelSequences, test: PixelSequences, batch_size: int,
                 eval_batch_size: int, seed: int, session: RunSession):
        self.train, self.splits = train, {"valid": valid, "test": test}
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.acc = session.accelerator
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self._orders: Dict[int, torch.Tensor] = {}
        self.step = 0  # the last step trained: the step an evaluation belongs to
        self.best: Optional[Dict[str, Any]] = None  # {"step", "metrics", "state"} of the best validation so far

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(len(self.train), generator=batch_generator(self.seed, 2, epoch))}
        return self._orders[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Training-set indices of this process's batch at optimiser step ``step`` (1-based)."""
        n = len(self.train)
        start = ((step - 1) * self.world + self.rank) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            out.append(int(self._epoch_order(pos // n)[pos % n]))
        return torch.tensor(out)

    def train_batches(self, step: int, n_micro: int) -> List[Any]:
        self.step = step
        idx = self.indices(step)
        x = self.train.images[idx].float().div_(255.0).to(self.acc.device)
        y = self.train.labels[idx].to(self.acc.device)
        return list(zip(x.chunk(n_micro), y.chunk(n_micro)))

    def loss(self, model, micro_batch):
        x, y = micro_batch
        return F.cross_entropy(model(x).float(), y), len(y)

    @staticmethod
    def _better(res: Dict[str, float], than: Dict[str, float]) -> bool:
        return (res["accuracy"], -res["loss"]) > (than["accuracy"], -than["loss"])

    @torch.no_grad()
    def evaluate(self, model, split: str, max_batches: int = 0) -> Dict[str, float]:
        if split == "test" and self.best is not None:  # the weights selected on validation, not the last ones
            model = copy.deepcopy(model)
            model.load_state_dict(self.best["state"])
            model.eval()
        res = self._evaluate(model, self.splits[split], max_batches)
        if split == EVAL_SPLIT and (self.best is None or self._better(res, self.best["metrics"])):
            self.best = {"step": self.step, "metrics": dict(res),
                         "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
        return res

    def _evaluate(self, model, data: PixelSequences, max_batches: int) -> Dict[str, float]:
        dev = self.acc.device
        n = len(data)
        starts = list(range(0, n, self.eval_batch_size))[: max_batches or None][self.rank::self.world]
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss, correct, images
        for s in starts:
            x = data.images[s:s + self.eval_batch_size].float().div_(255.0).to(dev)
            y = data.labels[s:s + self.eval_batch_size].to(dev)
            logits = model(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == y).sum().double()
            sums[2] += len(y)
        if self.world > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        count = max(float(sums[2]), 1.0)
        return {"loss": float(sums[0]) / count, "accuracy": float(sums[1]) / count}

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = state.get("best")


def _selection(summary: Dict[str, Any], task: VisionObjective) -> Optional[Dict[str, Any]]:
    """Which weights the test split was evaluated with: the step and validation metrics of the selection."""
    if "test" not in summary.get("eval", {}) or task.best is None:
        return None
    return {"step": task.best["step"], "valid": task.best["metrics"], "on": f"{EVAL_SPLIT} accuracy"}


def run(cfg: VisionJobConfig) -> Dict[str, Any]:
    train_set, valid_set, test_set = load_data(cfg)  # every check on the files happens here, before anything else
    world = launched_world_size()  # the session does not exist yet
    if cfg.data.epochs > 0:
        per_step = cfg.data.batch_size * world  # batch_size is per process
        cfg.train.steps = max(1, math.ceil(cfg.data.epochs * len(train_set) / per_step))
    perm = permutation_for(cfg)
    with RunSession(cfg, job=f"vision-{cfg.data.task}") as session:
        if perm is not None and session.is_main:
            save_permutation(session.run_dir, perm, cfg.data.permutation_seed,
                             resuming=bool(cfg.run.resume or cfg.run.resume_from))
        train, valid, test = (PixelSequences(s, perm) for s in (train_set, valid_set, test_set))
        spec, _ = vision_task(cfg.data.task)
        model = build_model(cfg, spec.seq_len, spec.channels)
        task = VisionObjective(train, valid, test, cfg.data.batch_size, cfg.data.eval_batch_size, cfg.train.seed,
                               session)
        images_per_step = cfg.data.batch_size * session.accelerator.num_processes
        extra = {"task": cfg.data.task, "variant": cfg.model.variant, "chance": {"accuracy": 0.1},
                 "paper_ur_lstm_accuracy": PAPER_ACCURACY[cfg.data.task], "train_images": len(train_set),
                 "valid_images": len(valid_set), "test_images": len(test_set),
                 "test": lambda summary: summary.get("eval", {}).get("test", {}),
                 "selected": lambda summary: _selection(summary, task),
                 "epochs": lambda summary: summary["step"] * images_per_step / len(train_set),
                 "seq_len": spec.seq_len, "params": sum(p.numel() for p in model.parameters()),
                 "device": str(session.accelerator.device)}
        try:
            summary = Trainer(session, model, task).fit()
        finally:  # a stopped or failed run's summary says what it was too (scripts/compare.py reads it)
            if session.is_main and not session.ownership_lost:
                summary = complete_summary(session.run_dir, EVAL_SPLIT, extra)
    return summary


def main(argv: Sequence[str] = None) -> Dict[str, Any]:
    cfg, given = read_config(VisionJobConfig, argv, presets=VISION_PRESETS, default_preset="smnist",
                             prog="train/vision.py")
    # presets count in epochs; a step count given on the command line wins over a preset's epochs
    if "train.steps" in given:
        if "data.epochs" in given and cfg.data.epochs > 0:
            raise ConfigError("give either --data.epochs or --train.steps, not both")
        cfg.data.epochs = 0.0
    return run(cfg)
