"""Load weights written by other implementations."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .layer import URLSTM


def convert_ur_lstm_torch_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Map a state_dict of the community port ``ur-lstm-torch`` to :class:`URLSTM`'s parameter names.

    The port keeps two linear maps per layer (``layers.{i}.igates``, ``layers.{i}.hgates``, both with a bias)
    and a ``forget_bias`` that it adds to the f pre-activation and subtracts from the r pre-activation. Its
    gate order is f, r, u, o, as ours, so the fused bias is ``igates.bias + hgates.bias + [b, -b, 0, 0]``.
    """
    layers = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))})
    if not layers or layers != list(range(len(layers))):
        raise ValueError(
            "state_dict does not look like ur-lstm-torch's: expected keys 'layers.{i}.igates.weight', "
            f"'layers.{{i}}.hgates.weight', 'layers.{{i}}.forget_bias'; got {sorted(state_dict)[:6]}"
        )
    out = {}
    for i in layers:
        try:
            w_ih = state_dict[f"layers.{i}.igates.weight"]
            w_hh = state_dict[f"layers.{i}.hgates.weight"]
            b_i = state_dict[f"layers.{i}.igates.bias"]
            b_h = state_dict[f"layers.{i}.hgates.bias"]
            fb = state_dict[f"layers.{i}.forget_bias"]
        except KeyError as e:
            raise ValueError(f"ur-lstm-torch state_dict is missing key {e.args[0]!r}") from None
        hidden = w_hh.shape[1]
        if w_hh.shape[0] != 4 * hidden or fb.shape != (hidden,):
            raise ValueError(f"layer {i}: hgates.weight {tuple(w_hh.shape)} / forget_bias {tuple(fb.shape)} do not "
                             "describe a UR-LSTM layer (expected (4H, H) and (H,))")
        zeros = torch.zeros_like(fb)
        out[f"weight_ih_l{i}"] = w_ih.clone()
        out[f"weight_hh_l{i}"] = w_hh.clone()
        out[f"bias_l{i}"] = b_i + b_h + torch.cat([fb, -fb, zeros, zeros])
    return out


def urlstm_from_ur_lstm_torch(state_dict: Mapping[str, torch.Tensor], batch_first: bool = False,
                              **kwargs) -> URLSTM:
    """Build a :class:`URLSTM` (gate ``UR``) that computes what the ``ur-lstm-torch`` model did."""
    converted = convert_ur_lstm_torch_state_dict(state_dict)
    num_layers = sum(1 for k in converted if k.startswith("weight_hh_l"))
    w0 = converted["weight_ih_l0"]
    model = URLSTM(w0.shape[1], converted["weight_hh_l0"].shape[1], num_layers=num_layers, gate="UR",
                   batch_first=batch_first, dtype=w0.dtype, **kwargs)
    model.load_state_dict(converted)
    return model
