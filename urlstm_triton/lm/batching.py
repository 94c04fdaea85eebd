"""Truncated-BPTT batching over contiguous token streams.

Training: the stream of N tokens is cut into ``batch_size`` rows of ``N // batch_size`` contiguous tokens (the
global layout, the same for any number of processes); process ``r`` of ``W`` owns rows
``[r*B/W, (r+1)*B/W)``, so its carried state always continues the text it saw last (Accelerate's default
sharding would hand each process every W-th batch, breaking that). Step ``s`` (1-based) reads window
``(s-1) mod windows_per_epoch`` of every row; a new epoch restarts the rows and the carried state.

Evaluation: every token of the split is predicted exactly once. The stream, preceded by the end-of-sequence id
as context for its first token, is cut into ``rows`` rows (the last padded and masked); each process takes a
contiguous block of rows and walks them window by window with its state carried.
"""
from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np
import torch

from ..errors import ConfigError


def rank_rows(n_rows: int, rank: int, world: int) -> Tuple[int, int]:
    per = n_rows // world
    return rank * per, (rank + 1) * per


class TrainStream:
    def __init__(self, ids: np.ndarray, batch_size: int, bptt: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ConfigError(f"data.batch_size={batch_size} is not divisible by the number of processes ({world})")
        row_len = len(ids) // batch_size
        if row_len < bptt + 1:
            raise ConfigError(
                f"the training split has {len(ids)} tokens: too few for data.batch_size={batch_size} rows of "
                f"data.bptt+1={bptt + 1} tokens; lower data.batch_size or data.bptt")
        self.bptt = bptt
        self.row_len = row_len
        self.first_row, self.last_row = rank_rows(batch_size, rank, world)
        self.rows = ids[: row_len * batch_size].reshape(batch_size, row_len)[self.first_row:self.last_row]
        self.windows_per_epoch = (row_len - 1) // bptt

    def position(self, step: int) -> Tuple[int, int]:
        """``(epoch, window)`` of 1-based optimiser step ``step``."""
        return divmod(step - 1, self.windows_per_epoch)

    def window(self, step: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)``, each ``(bptt, rows)`` int64, time-major."""
        _, w = self.position(step)
        a = w * self.bptt
        block = np.asarray(self.rows[:, a:a + self.bptt + 1]).astype(np.int64)
        t = torch.from_numpy(block).t().contiguous()
        return t[:-1], t[1:]


def eval_windows(ids: np.ndarray, start_id: int, rows: int, bptt: int, rank: int = 0, world: int = 1,
                 max_windows: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(inputs, targets, mask)`` windows, time-major ``(<=bptt, rows_of_this_rank)``; ``mask`` marks real
    targets (padding is 0). ``max_windows`` > 0 stops early (periodic evaluation)."""
    n = len(ids)
    row_len = math.ceil(n / rows)
    total = rows * row_len
    inp = np.zeros(total, dtype=np.int64)
    tgt = np.zeros(total, dtype=np.int64)
    mask = np.zeros(total, dtype=bool)
    inp[0] = start_id
    inp[1:n] = ids[: n - 1]
    tgt[:n] = ids
    mask[:n] = True
    per = math.ceil(rows / world)
    lo, hi = min(rows, rank * per), min(rows, (rank + 1) * per)
    shape = (rows, row_len)
    inp, tgt, mask = (a.reshape(shape)[lo:hi] for a in (inp, tgt, mask))
    count = 0
    for a in range(0, row_len, bptt):
        if max_windows and count >= max_windows:
            return
        sl = slice(a, min(a + bptt, row_len))
        yield (torch.from_numpy(inp[:, sl].T.copy()), torch.from_numpy(tgt[:, sl].T.copy()),
               torch.from_numpy(mask[:, sl].T.copy()))
        count += 1
