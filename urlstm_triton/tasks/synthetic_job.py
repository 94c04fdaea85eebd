"""The synthetic-task trainer (``train/synthetic.py``): the copy or adding task, any gate variant, on the shared
training machinery (``urlstm_triton.training``: config, Accelerate loop, checkpoints, resume, summary)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from ..training import RunSession, Task, Trainer, parse_config
from .config import SYNTHETIC_PRESETS, SyntheticJobConfig
from ..training.layer_options import layer_backend_options
from .models import AddingModel, CopyModel, make_recurrent
from .run_summary import complete_summary
from .synthetic import COPY_VOCAB, AddingTask, CopyTask, SyntheticTask, make_synthetic_task

EVAL_SPLIT = "test"


def build_task(cfg: SyntheticJobConfig) -> SyntheticTask:
    t = cfg.task
    return make_synthetic_task(t.name, lag=t.lag, length=t.length, batch_size=t.batch_size, seed=cfg.train.seed,
                               eval_batches=math.ceil(t.eval_size / t.batch_size))


def build_model(cfg: SyntheticJobConfig, task: SyntheticTask) -> torch.nn.Module:
    m = cfg.model
    rnn = make_recurrent(m.variant, task.input_size, m.hidden, num_layers=m.layers, backend=m.backend,
                         forget_bias=m.forget_bias, chrono_tmax=m.chrono_tmax or float(task.seq_len),
                         master_chunk=m.master_chunk, **layer_backend_options(m.backend, m.chunk_size, m.kernel))
    if isinstance(task, CopyTask):
        return CopyModel(rnn, m.hidden, COPY_VOCAB, task.output_slice)
    return AddingModel(rnn, m.hidden)


class SyntheticTrainTask(Task):
    """Copy: cross-entropy over the 10 cue steps, per-symbol accuracy. Adding: MSE of the sum."""

    eval_splits = (EVAL_SPLIT,)
    unit = "sequences"

    def __init__(self, task: SyntheticTask, session: RunSession):
        self.task = task
        self.acc = session.accelerator
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self._eval = None

    def train_batches(self, step: int, n_micro: int) -> List[Any]:
        # a pure function of (seed, step, rank): resuming at step s draws exactly the batches of the first run, and
        # each process draws its own batches; the evaluation set is shared (and sharded in evaluate)
        x, y = self.task.train_batch((step - 1) * self.world + self.rank)
        dev = self.acc.device
        return [(xs.to(dev), ys.to(dev)) for xs, ys in zip(x.chunk(n_micro), y.chunk(n_micro))]

    def _per_sequence(self, model, x, y):
        out = model(x)
        if isinstance(self.task, CopyTask):
            loss = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
            return loss.view(y.shape).mean(1), (out.argmax(-1) == y).float().mean(1)
        return (out.float() - y) ** 2, None

    def loss(self, model, micro_batch):
        x, y = micro_batch
        per_seq, _ = self._per_sequence(model, x, y)
        return per_seq.mean(), len(y)

    @torch.no_grad()
    def evaluate(self, model, split: str, max_batches: int = 0) -> Dict[str, float]:
        if self._eval is None:
            self._eval = self.task.eval_batches()
        batches = self._eval[: max_batches or None][self.rank::self.world]
        dev = self.acc.device
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss, accuracy, sequences
        for x, y in batches:
            per_seq, acc = self._per_sequence(model, x.to(dev), y.to(dev))
            sums[0] += per_seq.double().sum()
            sums[1] += acc.double().sum() if acc is not None else 0.0
            sums[2] += len(y)
        if self.world > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        n = max(float(sums[2]), 1.0)
        if isinstance(self.task, CopyTask):
            return {"loss": float(sums[0]) / n, "accuracy": float(sums[1]) / n}
        mse = float(sums[0]) / n
        return {"loss": mse, "mse": mse, "mse_vs_chance": mse / AddingTask.chance["mse"]}


def run(cfg: SyntheticJobConfig) -> Dict[str, Any]:
    session = RunSession(cfg, job=f"synthetic-{cfg.task.name}")
    task = build_task(cfg)
    model = build_model(cfg, task)
    extra = {"task": cfg.task.name, "variant": cfg.model.variant, "chance": task.chance,
             "seq_len": task.seq_len, "params": sum(p.numel() for p in model.parameters()),
             "device": str(session.accelerator.device)}
    try:
        summary = Trainer(session, model, SyntheticTrainTask(task, session)).fit()
    finally:  # a stopped or failed run's summary says what it was too (scripts/compare.py reads it)
        if session.is_main:
            summary = complete_summary(session.run_dir, EVAL_SPLIT, extra)
    return summary


def main(argv: Sequence[str] = None) -> Dict[str, Any]:
    cfg = parse_config(SyntheticJobConfig, argv, presets=SYNTHETIC_PRESETS, default_preset="copy",
                       prog="train/synthetic.py")
    return run(cfg)
