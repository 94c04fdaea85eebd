"""The language model: embedding -> dropout -> recurrent layers -> dropout -> projection -> tied decoder.

The recurrent core is a ``URLSTM`` (any gate variant, any backend) or, as the outside baseline,
``torch.nn.LSTM`` (cuDNN on a GPU). A linear projection maps the hidden size to the embedding size so the
decoder can share the embedding's weight (Press & Wolf 2017), the layout the community port used on
WikiText-103 (embedding 1024, hidden 3072). Inputs are time-major ``(T, B)`` token ids.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from ..training.recurrent import build_recurrent

State = Tuple[Tensor, Tensor]


class LanguageModel(nn.Module):
    """``model_cfg``: the job's ``model`` section (``urlstm_triton.lm.config.ModelConfig``); chrono variants take
    ``bptt`` as their ``T_max`` unless ``model.chrono_tmax`` says otherwise."""

    def __init__(self, vocab_size: int, model_cfg, bptt: int):
        super().__init__()
        m = model_cfg
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, m.embed)
        self.drop = nn.Dropout(m.dropout)
        self.rnn = build_recurrent(m, m.embed, batch_first=False, dropout=m.dropout if m.layers > 1 else 0.0,
                                   default_tmax=float(max(bptt, 3)))
        self.projection = nn.Linear(m.hidden, m.embed) if (m.tie_weights and m.hidden != m.embed) else nn.Identity()
        self.decoder = nn.Linear(m.embed if m.tie_weights else m.hidden, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if m.tie_weights:
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
    return LanguageModel(vocab_size, model_cfg, bptt)
