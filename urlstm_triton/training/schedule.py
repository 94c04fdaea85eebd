"""Learning-rate schedules: linear warmup then cosine decay to ``min_lr_ratio * lr`` (or constant)."""
from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.1) -> float:
    """Multiplier of the peak lr for the optimiser step number ``step`` (0-based, as LambdaLR counts)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.1):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, schedule, min_ratio))
