"""Models for the validation tasks: one recurrent layer (any gate variant) and a small task head.

Every variant comes from one name (``urlstm_triton.ALL_VARIANTS``): ``"lstm"`` is ``torch.nn.LSTM`` itself (the
outside baseline, cuDNN on a GPU), every other name is a :class:`~urlstm_triton.URLSTM` with that gate.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int
from ..gates import ALL_VARIANTS, parse_gate
from ..layer import URLSTM

READOUTS = ("last", "concat")


def check_variant(name: str) -> str:
    """The canonical code of a gate variant (``"UR"``, ``"U-"``, ``"lstm"``...); ``ValueError`` if unknown."""
    try:
        return parse_gate(name).code
    except (ValueError, TypeError) as err:
        raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(ALL_VARIANTS)} "
                         f"(or a paper name such as 'UR-LSTM')") from err


def make_recurrent(variant: str, input_size: int, hidden_size: int, *, num_layers: int = 1, backend: str = "auto",
                   forget_bias: Optional[float] = None, chrono_tmax: Optional[float] = None, master_chunk: int = 1,
                   **backend_options) -> nn.Module:
    """A batch-first recurrent layer of the given variant.

    ``"lstm"`` gives ``torch.nn.LSTM``; ``forget_bias``, when given, sets its forget-gate bias (the ``f`` block
    of ``bias_ih``; ``bias_hh``'s ``f`` block is zeroed so the sum is exactly ``forget_bias``). Chrono
    variants need ``chrono_tmax``, which callers set to the task's dependency length; master-gate variants take
    ON-LSTM's ``master_chunk``. ``backend_options``
    (``chunk_size``, ``kernel``) go to the URLSTM's Triton backend; ``torch.nn.LSTM`` has none.
    """
    code = check_variant(variant)
    if code == "lstm":
        if master_chunk != 1:
            raise ValueError(f"master_chunk={master_chunk} applies only to the master-gate variants, not to lstm")
        rnn = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        if forget_bias is not None:
            with torch.no_grad():
                for layer in range(num_layers):
                    getattr(rnn, f"bias_ih_l{layer}")[hidden_size:2 * hidden_size].fill_(float(forget_bias))
                    getattr(rnn, f"bias_hh_l{layer}")[hidden_size:2 * hidden_size].zero_()
        return rnn
    return URLSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True, gate=code, backend=backend,
                  forget_bias=forget_bias, chrono_tmax=chrono_tmax, master_chunk=master_chunk, **backend_options)


class CopyModel(nn.Module):
    """Copy task: one-hot tokens -> recurrent layer -> linear readout at the cue steps, logits over the vocabulary."""

    def __init__(self, rnn: nn.Module, hidden_size: int, vocab_size: int, output_slice: slice):
        super().__init__()
        self.rnn = rnn
        self.vocab_size = vocab_size
        self.output_slice = output_slice
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        x = F.one_hot(tokens, self.vocab_size).to(self.head.weight.dtype)
        out, _ = self.rnn(x)
        return self.head(out[:, self.output_slice])  # (B, 10, vocab)


class AddingModel(nn.Module):
    """Adding task: (value, marker) steps -> recurrent layer -> linear regression from the last hidden state."""

    def __init__(self, rnn: nn.Module, hidden_size: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


class SequenceClassifier(nn.Module):
    """Pixel-by-pixel image classification: recurrent layer -> readout -> ReLU layer -> class logits.

    ``readout="last"`` (default, the paper's) reads the last hidden state; ``"concat"`` concatenates the hidden
    states of every step, as the community port does (a ``T*H x mlp_hidden`` linear layer: large).
    """

    def __init__(self, rnn: nn.Module, hidden_size: int, seq_len: int, num_classes: int = 10,
                 readout: str = "last", mlp_hidden: int = 256):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.rnn = rnn
        self.readout = readout
        features = hidden_size * (check_positive_int("seq_len", seq_len) if readout == "concat" else 1)
        self.mlp = nn.Sequential(nn.Linear(features, check_positive_int("mlp_hidden", mlp_hidden)), nn.ReLU(),
                                 nn.Linear(mlp_hidden, check_positive_int("num_classes", num_classes)))

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        feats = out[:, -1] if self.readout == "last" else out.reshape(out.shape[0], -1)
        return self.mlp(feats)
