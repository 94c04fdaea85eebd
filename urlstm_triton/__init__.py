"""urlstm-triton: the UR-LSTM (Gu et al., ICML 2020) and its gate ablation, with fused Triton kernels."""
from .convert import convert_ur_lstm_torch_state_dict, urlstm_from_ur_lstm_torch
from .functional import urlstm
from .gates import ALL_VARIANTS, GateSpec, parse_gate
from .layer import URLSTM, URLSTMCell
from .options import LayerOptions
from .reference import cell_update, reference_recurrence

__version__ = "0.1.0"

__all__ = [
    "URLSTM",
    "URLSTMCell",
    "urlstm",
    "LayerOptions",
    "GateSpec",
    "parse_gate",
    "ALL_VARIANTS",
    "reference_recurrence",
    "cell_update",
    "convert_ur_lstm_torch_state_dict",
    "urlstm_from_ur_lstm_torch",
]
