"""The paper's synthetic long-memory tasks, generated on the fly and reproducibly from a seed.

Copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016; Gu et al. 2020, appendix D.1): the input is
``10`` symbols drawn from an alphabet of ``8`` (tokens 1..8), then ``lag`` blanks (token 0), then ``10`` cue
markers (token 9); at the ten cue steps the model must output the ten symbols in order. Length ``lag + 20``.
Chance: per-symbol accuracy 1/8, cross-entropy log 8 = 2.079.

Adding task (Hochreiter & Schmidhuber 1997): ``T`` steps of two channels, a value drawn from U[0, 1] and a
marker that is 1 at exactly two steps, one in each half of the sequence; the target is the sum of the two
marked values. Predicting the mean 1.0 gives an MSE of Var(U1 + U2) = 2/12 = 0.167, the chance baseline.

Every batch is a pure function of ``(seed, stream, step)``, so a resumed run sees exactly the batches an
uninterrupted run would have seen, and the evaluation set is the same for every variant of a comparison.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch

from ..checks import check_positive_int

BLANK = 0
CUE = 9
NUM_SYMBOLS = 8  # symbols are tokens 1..NUM_SYMBOLS
COPY_LENGTH = 10  # symbols to remember, and cue markers that ask for them
COPY_VOCAB = 10  # blank, 8 symbols, cue
ADDING_CHANCE_MSE = 2.0 / 12.0  # MSE of always predicting E[U1 + U2] = 1
COPY_CHANCE_LOSS = float(np.log(NUM_SYMBOLS))

TRAIN_STREAM = 0
EVAL_STREAM = 1


def batch_generator(seed: int, stream: int, step: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, stream, step)`` through numpy's SeedSequence, which mixes the
    three integers so that nearby seeds and steps give unrelated batches."""
    state = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def copy_batch(batch_size: int, lag: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One copy-task batch: ``inputs`` (B, lag + 20) int64 tokens and ``targets`` (B, 10) int64 symbols.

    The outputs to score are those at the last 10 steps (the cue markers), see :func:`copy_output_slice`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
        raise ValueError(f"lag must be a non-negative integer, got {lag!r}")
    symbols = torch.randint(1, NUM_SYMBOLS + 1, (batch_size, COPY_LENGTH), generator=generator)
    inputs = torch.full((batch_size, lag + 2 * COPY_LENGTH), BLANK, dtype=torch.long)
    inputs[:, :COPY_LENGTH] = symbols
    inputs[:, COPY_LENGTH + lag:] = CUE
    return inputs, symbols


def copy_output_slice(lag: int) -> slice:
    """The steps whose outputs are the copied symbols: the 10 cue steps at the end."""
    return slice(COPY_LENGTH + lag, 2 * COPY_LENGTH + lag)


def adding_batch(batch_size: int, length: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One adding-task batch: ``inputs`` (B, T, 2) float32 (value, marker) and ``targets`` (B,) float32."""
    batch_size = check_positive_int("batch_size", batch_size)
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (one marker in each half), got {length!r}")
    values = torch.rand(batch_size, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch_size,), generator=generator)
    second = torch.randint(half, length, (batch_size,), generator=generator)
    markers = torch.zeros(batch_size, length)
    rows = torch.arange(batch_size)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), targets


class SyntheticTask:
    """A synthetic task bound to its size and seed: ``train_batch(step)`` and a fixed ``eval_batches()``."""

    name: str = ""
    input_size: int = 0
    seq_len: int = 0

    def __init__(self, batch_size: int, seed: int, eval_batches: int = 10):
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self.num_eval_batches = check_positive_int("eval_batches", eval_batches)

    def make_batch(self, generator: torch.Generator):
        raise NotImplementedError

    def train_batch(self, step: int):
        return self.make_batch(batch_generator(self.seed, TRAIN_STREAM, step))

    def eval_batches(self) -> List:
        return [self.make_batch(batch_generator(self.seed, EVAL_STREAM, k)) for k in range(self.num_eval_batches)]


class CopyTask(SyntheticTask):
    name = "copy"
    input_size = COPY_VOCAB
    num_classes = COPY_VOCAB
    chance = {"loss": COPY_CHANCE_LOSS, "accuracy": 1.0 / NUM_SYMBOLS}

    def __init__(self, lag: int = 480, batch_size: int = 10, seed: int = 0, eval_batches: int = 10):
        super().__init__(batch_size, seed, eval_batches)
        if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
            raise ValueError(f"lag must be a non-negative integer, got {lag!r}")
        self.lag = lag
        self.seq_len = lag + 2 * COPY_LENGTH
        self.output_slice = copy_output_slice(lag)

    def make_batch(self, generator):
        return copy_batch(self.batch_size, self.lag, generator)


class AddingTask(SyntheticTask):
    name = "adding"
    input_size = 2
    chance = {"mse": ADDING_CHANCE_MSE}

    def __init__(self, length: int = 2000, batch_size: int = 10, seed: int = 0, eval_batches: int = 10):
        super().__init__(batch_size, seed, eval_batches)
        if not isinstance(length, int) or isinstance(length, bool) or length < 2:
            raise ValueError(f"length must be an integer >= 2 (one marker in each half), got {length!r}")
        self.length = length
        self.seq_len = length

    def make_batch(self, generator):
        return adding_batch(self.batch_size, self.length, generator)


SYNTHETIC_TASKS = ("copy", "adding")


def make_synthetic_task(name: str, *, lag: int = 480, length: int = 2000, batch_size: int = 10, seed: int = 0,
                        eval_batches: int = 10) -> SyntheticTask:
    """The task called ``name`` (``"copy"`` or ``"adding"``); raises ``ValueError`` naming the known tasks."""
    if name == "copy":
        return CopyTask(lag=lag, batch_size=batch_size, seed=seed, eval_batches=eval_batches)
    if name == "adding":
        return AddingTask(length=length, batch_size=batch_size, seed=seed, eval_batches=eval_batches)
    raise ValueError(f"unknown synthetic task {name!r}: expected one of {SYNTHETIC_TASKS}")
