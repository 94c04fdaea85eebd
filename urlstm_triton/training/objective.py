"""The contract between a job (language modelling, a synthetic task, image classification) and the Trainer: the
``Objective``, what is optimised.

A job subclasses ``Objective`` and fills in how to get the micro-batches of a step, how to compute a loss, how to
evaluate, and what per-process state (data position, carried recurrent state) a checkpoint must hold. Batches
must be a pure function of the step number and the task's state, so that a resumed run sees the same data.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch


class Objective:
    #: evaluation splits; the first is the one evaluated periodically during training
    eval_splits: Sequence[str] = ("valid",)
    #: the unit of the throughput shown and logged ("tokens", "samples")
    unit: str = "samples"

    def train_batches(self, step: int, n_micro: int) -> List[Any]:
        """The ``n_micro`` micro-batches of optimiser step ``step`` (1-based) for this process."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, micro_batch: Any) -> Tuple[torch.Tensor, int]:
        """``(mean loss tensor, number of units)`` for one micro-batch (may update carried state)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, max_batches: int = 0) -> Dict[str, float]:
        """Metrics of ``split`` (at least ``"loss"``), reduced over all processes. ``model`` is unwrapped and in
        eval mode; ``max_batches`` > 0 limits the work (periodic evaluation)."""
        raise NotImplementedError

    def on_skipped_step(self) -> None:
        """Called when the non-finite guard drops a step: reset anything (carried state) that may hold NaN."""

    def state_dict(self) -> Dict[str, Any]:
        """This process's data position and carried state, saved in its ``rankNNN.pt`` of every checkpoint."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
