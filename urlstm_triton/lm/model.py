"""The language model: embedding -> dropout -> recurrent layers -> dropout -> projection -> tied decoder.

The recurrent core is a ``URLSTM`` (any gate variant, any backend) or, as the outside baseline,
``torch.nn.LSTM`` (cuDNN on a GPU). A linear projection maps the hidden size to the embedding size so the
decoder can share the embedding's weight (Press & Wolf 2017), the layout the community port used on
WikiText-103 (embedding 1024, hidden 3072). Inputs are time-major ``(T, B)`` token ids.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from ..layer import URLSTM
from ..training.layer_options import layer_backend_options
from ..gates import parse_gate

State = Tuple[Tensor, Tensor]


class LanguageModel(nn.Module):
    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int = 1, dropout: float = 0.0,
                 rnn: str = "urlstm", gate: str = "UR", backend: str = "auto", tie_weights: bool = True,
                 chrono_tmax: Optional[float] = None, **backend_options):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed)
        self.drop = nn.Dropout(dropout)
        inner = dropout if layers > 1 else 0.0
        if rnn == "urlstm":
            spec = parse_gate(gate)
            tmax = chrono_tmax if (spec.primary == "C" and not spec.classic) else None
            self.rnn = URLSTM(embed, hidden, layers, dropout=inner, gate=gate, backend=backend, chrono_tmax=tmax,
                              **backend_options)
        elif rnn == "lstm":
            self.rnn = nn.LSTM(embed, hidden, layers, dropout=inner)
        else:
            raise ValueError(f"model.rnn must be 'urlstm' or 'lstm', got {rnn!r}")
        self.projection = nn.Linear(hidden, embed) if (tie_weights and hidden != embed) else nn.Identity()
        out_in = embed if tie_weights else hidden
        self.decoder = nn.Linear(out_in, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """``tokens`` ``(T, B)`` -> logits ``(T, B, V)`` and the final ``(h, c)``, each ``(layers, B, H)``."""
        x = self.drop(self.embedding(tokens))
        out, state = self.rnn(x, state)
        out = self.drop(out)
        return self.decoder(self.projection(out)), state


def build_model(model_cfg, vocab_size: int, bptt: int) -> LanguageModel:
    m = model_cfg
    options = layer_backend_options(m.backend, m.chunk_size, m.kernel) if m.rnn == "urlstm" else {}
    return LanguageModel(vocab_size, m.embed, m.hidden, m.layers, m.dropout, m.rnn, m.gate, m.backend,
                         m.tie_weights, chrono_tmax=float(max(bptt, 3)), **options)
