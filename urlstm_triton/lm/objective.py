"""``LMObjective``: the language model's side of the shared Trainer (``urlstm_triton.training.Objective``).

Each process owns contiguous rows of the training stream (``batching.TrainStream``) and one carried ``(h, c)``
state per micro-batch (a micro-batch is a contiguous block of the process's rows), detached after every window
(truncated BPTT) and reset at the start of each epoch and after a skipped step. The state and the data position
go into every checkpoint, so a resumed run continues the same text with the same state.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..training.objective import Objective
from .batching import TrainStream, eval_windows
from .config import check_batch_split
from .metrics import lm_metrics


class LMObjective(Objective):
    eval_splits = ("valid", "test")
    unit = "tokens"

    def __init__(self, cfg, data, accelerator):
        self.cfg = cfg
        self.data = data
        self.acc = accelerator
        self.device = accelerator.device
        world, rank = accelerator.num_processes, accelerator.process_index
        d = cfg.data
        check_batch_split(d.batch_size, world, cfg.train.grad_accum)
        self.stream = TrainStream(data.splits["train"].ids, d.batch_size, d.bptt, rank, world)
        self.n_micro = cfg.train.grad_accum
        self.carry: List[Optional[tuple]] = [None] * self.n_micro
        self.epoch_of_carry = 0

    # ------------------------------------------------------------------------------------------ training
    def train_batches(self, step: int, n_micro: int):
        epoch, window = self.stream.position(step)
        if window == 0 or epoch != self.epoch_of_carry:
            self.carry = [None] * n_micro  # the rows start again from their beginnings
            self.epoch_of_carry = epoch
        x, y = self.stream.window(step)
        per = x.shape[1] // n_micro
        return [(i, x[:, i * per:(i + 1) * per].to(self.device), y[:, i * per:(i + 1) * per].to(self.device))
                for i in range(n_micro)]

    def loss(self, model, micro_batch):
        i, x, y = micro_batch
        logits, state = model(x, self.carry[i])
        self.carry[i] = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, y.numel()

    def on_skipped_step(self) -> None:
        self.carry = [None if c is None or not all(torch.isfinite(s).all() for s in c) else c for c in self.carry]

    def state_dict(self) -> Dict[str, Any]:
        return {"carry": [None if c is None else tuple(s.cpu() for s in c) for c in self.carry],
                "epoch_of_carry": self.epoch_of_carry,
                "rows": (self.stream.first_row, self.stream.last_row)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if tuple(state["rows"]) != (self.stream.first_row, self.stream.last_row):
            raise ConfigError(f"checkpoint holds the state of rows {state['rows']}, this process owns rows "
                              f"{(self.stream.first_row, self.stream.last_row)}")
        self.carry = [None if c is None else tuple(s.to(self.device) for s in c) for c in state["carry"]]
        self.epoch_of_carry = int(state["epoch_of_carry"])

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model, split: str, max_batches: int = 0) -> Dict[str, float]:
        ts = self.data.splits[split]
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        state = None
        for x, y, m in eval_windows(ts.ids, self.data.eos_id, self.cfg.data.eval_batch_size, self.cfg.data.bptt,
                                    self.acc.process_index, self.acc.num_processes, max_batches):
            if x.shape[1] == 0:
                break
            x, y, m = x.to(self.device), y.to(self.device), m.to(self.device)
            logits, state = model(x, state)
            lp = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            nll += (lp * m.reshape(-1)).sum().double()
            count += m.sum().double()
        packed = torch.stack([nll, count])
        if self.acc.num_processes > 1:
            packed = self.acc.reduce(packed, reduction="sum")
        total_nll, tokens = float(packed[0]), int(packed[1])
        full = tokens == len(ts.ids)
        out = lm_metrics(total_nll, max(tokens, 1), ts.n_words if full else 0, ts.n_bytes if full else 0)
        if not math.isfinite(out["loss"]):
            out["loss"] = float("nan")
        return out
