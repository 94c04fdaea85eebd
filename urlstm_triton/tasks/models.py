"""Task heads for the validation tasks around one recurrent layer (built from the ``model`` section by
``urlstm_triton.training.recurrent.build_recurrent``: any gate variant, ``lstm`` = torch.nn.LSTM, ``classic``)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_positive_int

READOUTS = ("last", "concat")


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
