"""The recurrent core of every trainer's model: one config section (``RecurrentConfig``, the ``model`` section or
its base) and one builder (:func:`build_recurrent`), shared by the LM job and the validation-task jobs.

``--model.variant`` means the same in every job:

- a gate code of the paper's grid (``UR``, ``U-``, ``-R``, ``--``, ``C-``, ``CR``, ``O-``, ``OR``, ``-M``, ``CM``,
  ``UM``, ``OM``) or a paper name (``UR-LSTM``, ``U-LSTM``): a ``URLSTM`` with that gate;
- ``lstm``: ``torch.nn.LSTM`` itself, the outside baseline (cuDNN on a GPU);
- ``classic``: the ``URLSTM`` in its classic-LSTM mode (``nn.LSTM``'s gating, run by our backends and kernels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..gates import ALL_VARIANTS, parse_gate
from ..layer import URLSTM
from ..options import Backend, ChunkSize, Kernel, LayerOptions, parse_chunk_size
from .config import opt, optional

NN_LSTM = "lstm"  # torch.nn.LSTM
CLASSIC = "classic"  # URLSTM(gate="lstm")
VARIANTS = tuple(v for v in ALL_VARIANTS if v != "lstm") + (NN_LSTM, CLASSIC)


def check_variant(name: str) -> str:
    """The canonical name of a variant (``"UR"``, ``"U-"``, ``"lstm"``, ``"classic"`` ...); ValueError if unknown."""
    if isinstance(name, str) and name.strip().lower() == CLASSIC:
        return CLASSIC
    try:
        return parse_gate(name).code  # "lstm"/"LSTM" -> "lstm": torch.nn.LSTM
    except (ValueError, TypeError) as err:
        raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(VARIANTS)} (or a paper name such "
                         "as 'UR-LSTM')") from err


@dataclass
class RecurrentConfig:
    variant: str = opt("UR", "recurrent layer: a gate variant (" + " ".join(VARIANTS[:-2]) + "; UR is the UR-LSTM), "
                             "lstm (torch.nn.LSTM, the cuDNN baseline) or classic (the URLSTM's classic-LSTM mode)")
    hidden: int = opt(256, "hidden units per recurrent layer")
    layers: int = opt(1, "recurrent layers")
    backend: Backend = opt("auto", "URLSTM backend: auto (Triton on CUDA when possible), reference, triton (this "
                                   "and the two below do not apply to lstm)", resume_safe=True)
    chunk_size: ChunkSize = opt(None, "Triton backend: kernel chunks for long sequences: none (save every step: "
                                      "fastest), K (save every K-th state, recompute in backward), or auto (from "
                                      "free GPU memory)", resume_safe=True, parse=parse_chunk_size,
                                metavar="none|auto|K")
    kernel: Kernel = opt("auto", "Triton backend: kernel family (auto; step: one launch per step; persistent: one "
                                 "launch per chunk)", resume_safe=True)
    cuda_graph: bool = opt(False, "Triton backend: replay each sequence's step launches from a CUDA graph (on an "
                                  "H200 1.5-7x faster at small batch and big-batch; BENCHMARKS.md)", resume_safe=True)
    forget_bias: Optional[float] = opt(None, "forget-gate bias of the standard init ('-' variants) and of lstm/classic "
                                             "(default: 1 for '-', PyTorch's init for lstm)", parse=optional(float))
    chrono_tmax: Optional[float] = opt(None, "T_max of chrono init (C variants); default: the job's dependency "
                                             "length (sequence length, or bptt for the LM)", parse=optional(float))
    master_chunk: int = opt(1, "ON-LSTM's chunk factor of the master-gate variants (-M, CM, UM, OM): each master "
                               "gate has hidden / master_chunk units")

    def validate(self, cfg) -> None:
        try:
            self.variant = check_variant(self.variant)
        except ValueError as e:
            raise ConfigError(f"--model.variant: {e}") from None
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.chrono_tmax is not None and not self.chrono_tmax > 2:
            raise ConfigError(f"model.chrono_tmax must be greater than 2, got {self.chrono_tmax}")
        try:
            spec = parse_gate("lstm" if self.variant in (NN_LSTM, CLASSIC) else self.variant)
            spec.with_master_chunk(self.master_chunk).gate_rows(self.hidden)
        except ValueError as e:
            raise ConfigError(f"--model.master_chunk: {e}") from None
        self.layer_options()  # checked for every variant; torch.nn.LSTM (lstm) has no use for them

    def layer_options(self) -> LayerOptions:
        try:
            return LayerOptions(backend=self.backend, kernel=self.kernel, chunk_size=self.chunk_size,
                                cuda_graph=self.cuda_graph)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model.{e}") from None  # its messages start with the field's name


def build_recurrent(cfg: RecurrentConfig, input_size: int, *, batch_first: bool, dropout: float = 0.0,
                    default_tmax: Optional[float] = None) -> nn.Module:
    """The recurrent layer ``cfg`` describes. For ``lstm`` (torch.nn.LSTM) ``forget_bias``, when given, sets the
    ``f`` block of ``bias_ih`` and zeroes ``bias_hh``'s, so the sum is exactly ``forget_bias``. Chrono variants
    take ``cfg.chrono_tmax`` or ``default_tmax`` (the job's dependency length)."""
    variant = check_variant(cfg.variant)
    if variant == NN_LSTM:
        rnn = nn.LSTM(input_size, cfg.hidden, num_layers=cfg.layers, dropout=dropout, batch_first=batch_first)
        if cfg.forget_bias is not None:
            with torch.no_grad():
                for layer in range(cfg.layers):
                    getattr(rnn, f"bias_ih_l{layer}")[cfg.hidden:2 * cfg.hidden].fill_(float(cfg.forget_bias))
                    getattr(rnn, f"bias_hh_l{layer}")[cfg.hidden:2 * cfg.hidden].zero_()
        return rnn
    return URLSTM(input_size, cfg.hidden, cfg.layers, dropout=dropout, batch_first=batch_first,
                  gate="lstm" if variant == CLASSIC else variant, forget_bias=cfg.forget_bias,
                  chrono_tmax=cfg.chrono_tmax or default_tmax, master_chunk=cfg.master_chunk,
                  options=cfg.layer_options())
