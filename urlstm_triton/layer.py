"""``URLSTM`` and ``URLSTMCell``: modules shaped like ``torch.nn.LSTM`` and ``torch.nn.LSTMCell``."""
from __future__ import annotations

import dataclasses
import inspect
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .checks import check_dropout, check_float_tensor, check_positive_int, check_same_device, check_shape
from .functional import LayerWeights, check_keywords, check_no_projection, urlstm
from .gates import GateSpec, init_layer_, parse_gate
from .options import LayerOptions, make_options
from .reference import cell_update


def _check_gate_options(spec: GateSpec, chrono_tmax) -> None:
    if spec.primary == "C" and not spec.classic:
        if chrono_tmax is None:
            raise ValueError(
                f"gate {spec.code!r} uses chrono initialisation and needs chrono_tmax (the longest dependency "
                "in steps, e.g. the sequence length)"
            )
        if not chrono_tmax > 2:
            raise ValueError(f"chrono_tmax must be greater than 2, got {chrono_tmax}")


class _PlainPickleState:
    """Pickles the gate and the layer options as plain dicts and rebuilds them on load, so a whole model saved with
    ``torch.save(model)`` loads under ``torch.load(..., weights_only=True)`` with only the module class itself
    allow-listed (``torch.serialization.safe_globals([URLSTM])``), as ``nn.LSTM`` does: ``GateSpec`` and
    ``LayerOptions`` are internal classes that a user should not have to trust. (A ``config=`` tile override, a
    kernels object, stays as it is: its class then needs allow-listing too.) Pickles that hold the objects
    themselves still load."""

    def __getstate__(self):
        state = super().__getstate__().copy()
        state["spec"] = dataclasses.asdict(state["spec"])
        if "options" in state:
            state["options"] = {f.name: getattr(state["options"], f.name) for f in dataclasses.fields(LayerOptions)}
        return state

    def __setstate__(self, state):
        state = dict(state)
        if isinstance(state.get("spec"), dict):
            state["spec"] = GateSpec(**state["spec"])
        if isinstance(state.get("options"), dict):
            state["options"] = LayerOptions(**state["options"])
        super().__setstate__(state)


class URLSTM(_PlainPickleState, nn.Module):
    """A multi-layer UR-LSTM (or any gate variant of Gu et al. 2020), a drop-in for ``torch.nn.LSTM``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as ``nn.LSTM``.
        gate: the variant, ``"UR"`` (UR-LSTM, default), ``"U-"``, ``"-R"``, ``"--"``, ``"C-"``, ``"OM"`` ...
            or ``"lstm"`` for the classic LSTM (then numerically identical to ``nn.LSTM``).
        backend: ``"auto"`` (Triton on CUDA when possible, else the PyTorch reference), ``"reference"`` or
            ``"triton"``.
        forget_bias: forget-gate bias for the standard init (``-``; default 1.0) or, if given, for ``lstm``.
        chrono_tmax: ``T_max`` of chrono initialisation (required for ``C`` variants).
        master_chunk: ON-LSTM's chunk factor C for the master-gate variants (``-M``, ``CM``, ``UM``, ``OM``):
            each master gate has ``hidden_size / C`` units (default 1).
        options: a :class:`~urlstm_triton.options.LayerOptions` instead of ``backend`` and the keywords below.
        kernel_options: the Triton backend's options (``kernel``, ``chunk_size``, ``memory_budget``,
            ``dot_precision``, ``cuda_graph``, ``config``), validated here. Any other keyword is a ``TypeError``
            naming it, as ``nn.LSTM`` does; ``proj_size`` (an ``nn.LSTM`` feature the URLSTM lacks) is a
            ``NotImplementedError`` unless 0.

    Parameters per layer ``k`` (suffix ``_reverse`` for the backward direction): ``weight_ih_l{k}``
    ``(G*H, I_k)``, ``weight_hh_l{k}`` ``(G*H, H)`` and one ``bias_l{k}`` ``(G*H,)``, gate blocks in the order
    ``f, r, u, o`` (``i, f, g, o`` for ``lstm``; ``f, u, o`` without an auxiliary gate; ``f, mf, mi, u, o``
    with the master gates, ``3H + 2H/C`` rows). Formulas: docs/variants.md.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        gate="UR",
        backend: str = "auto",
        forget_bias: Optional[float] = None,
        chrono_tmax: Optional[float] = None,
        master_chunk: int = 1,
        device=None,
        dtype=None,
        proj_size: int = 0,
        options: Optional[LayerOptions] = None,
        **kernel_options,
    ):
        super().__init__()
        check_no_projection(proj_size, "URLSTM")
        if options is not None and (kernel_options or backend != "auto"):
            raise TypeError("give either options= or the backend/kernel keywords, not both")
        check_keywords(kernel_options, inspect.signature(URLSTM.__init__).parameters, "URLSTM keyword argument")
        self.options = make_options(options, backend=backend, **kernel_options) if options is None else options
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.num_layers = check_positive_int("num_layers", num_layers)
        self.dropout = check_dropout(dropout)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.spec = parse_gate(gate).with_master_chunk(master_chunk)
        _check_gate_options(self.spec, chrono_tmax)
        self.forget_bias = forget_bias
        self.chrono_tmax = chrono_tmax
        if self.dropout > 0 and self.num_layers == 1:
            import warnings

            warnings.warn(
                f"dropout is applied to the outputs of every layer but the last, so dropout={dropout} with "
                "num_layers=1 has no effect",
                stacklevel=2,
            )
        factory = {"device": device, "dtype": dtype}
        gh = self.spec.gate_rows(hidden_size)
        self._weight_names: List[Tuple[str, str, Optional[str]]] = []
        for layer in range(num_layers):
            for suffix in ([""] + (["_reverse"] if bidirectional else [])):
                in_size = input_size if layer == 0 else hidden_size * self.num_directions
                names = (f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}",
                         f"bias_l{layer}{suffix}" if bias else None)
                self.register_parameter(names[0], nn.Parameter(torch.empty(gh, in_size, **factory)))
                self.register_parameter(names[1], nn.Parameter(torch.empty(gh, hidden_size, **factory)))
                if bias:
                    self.register_parameter(names[2], nn.Parameter(torch.empty(gh, **factory)))
                self._weight_names.append(names)
        self.reset_parameters()

    @property
    def gate(self) -> str:
        return self.spec.code

    @property
    def backend(self) -> str:
        return self.options.backend

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Initialise every layer as the paper does for the chosen variant (see :func:`init_layer_`)."""
        for w_ih, w_hh, b in self.layer_weights():
            init_layer_(w_ih, w_hh, b, self.spec, self.forget_bias, self.chrono_tmax)

    def layer_weights(self) -> List[LayerWeights]:
        """``(w_ih, w_hh, bias)`` per layer and direction, in the order :func:`urlstm` takes them."""
        return [
            (getattr(self, a), getattr(self, b), getattr(self, c) if c else None) for a, b, c in self._weight_names
        ]

    @property
    def all_weights(self) -> List[List[Tensor]]:
        return [[t for t in lw if t is not None] for lw in self.layer_weights()]

    def flatten_parameters(self) -> None:
        """No-op, for code written for ``nn.LSTM`` (the weights are already one tensor per gate group)."""

    def forward(self, input, state: Optional[Tuple[Tensor, Tensor]] = None):
        """``input`` ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), unbatched ``(T, I)``, or a
        ``PackedSequence`` (then the output is one too, and ``h_n, c_n`` hold each sequence's state at its own
        last step, in the batch's original order, as ``nn.LSTM`` does)."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return self._forward_packed(input, state)
        return self._run(input, state)

    def _run(self, input: Tensor, state, lengths: Optional[Tensor] = None, batch_first: Optional[bool] = None):
        return urlstm(
            input,
            self.layer_weights(),
            state,
            gate=self.spec,
            bidirectional=self.bidirectional,
            batch_first=self.batch_first if batch_first is None else batch_first,
            dropout=self.dropout,
            training=self.training,
            lengths=lengths,
            options=self.options,
        )

    def _forward_packed(self, packed: nn.utils.rnn.PackedSequence, state):
        rnn_utils = nn.utils.rnn
        padded, lengths = rnn_utils.pad_packed_sequence(packed)  # (T, B, I) in the batch's original order
        batch = padded.shape[1]
        order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(batch)
        order = order.to(padded.device)
        x = padded.index_select(1, order)  # decreasing length, as the packed data stores the batch
        lens = lengths.index_select(0, order.cpu())
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError("state must be a tuple (h_0, c_0) of two tensors")
            # reorder only a well-shaped state: anything else goes through unchanged, so urlstm's check names it
            state = tuple(t.index_select(1, order) if isinstance(t, Tensor) and t.dim() == 3 and t.shape[1] == batch
                          else t for t in state)
        out, (h_n, c_n) = self._run(x, state, lengths=lens, batch_first=False)
        data = rnn_utils.pack_padded_sequence(out, lens, enforce_sorted=True)
        result = rnn_utils.PackedSequence(data.data, data.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        if packed.unsorted_indices is not None:
            back = packed.unsorted_indices.to(h_n.device)
            h_n, c_n = h_n.index_select(1, back), c_n.index_select(1, back)
        return result, (h_n, c_n)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, gate={self.spec.code!r}"
        if self.spec.master_chunk != 1:
            s += f", master_chunk={self.spec.master_chunk}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("backend", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        for name, value in self.options.kernel_options().items():
            s += f", {name}={value!r}"
        return s

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **kwargs) -> "URLSTM":
        """A classic-LSTM ``URLSTM`` (``gate="lstm"``) with the weights of ``lstm``; same outputs."""
        if lstm.proj_size:
            raise ValueError("nn.LSTM with proj_size > 0 has no URLSTM equivalent")
        p = next(lstm.parameters())
        mod = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, bias=lstm.bias, batch_first=lstm.batch_first,
                  dropout=lstm.dropout, bidirectional=lstm.bidirectional, gate="lstm", device=p.device,
                  dtype=p.dtype, **kwargs)
        with torch.no_grad():
            for (a, b, c) in mod._weight_names:
                suffix = a[len("weight_ih"):]
                getattr(mod, a).copy_(getattr(lstm, f"weight_ih{suffix}"))
                getattr(mod, b).copy_(getattr(lstm, f"weight_hh{suffix}"))
                if c:
                    getattr(mod, c).copy_(getattr(lstm, f"bias_ih{suffix}") + getattr(lstm, f"bias_hh{suffix}"))
        return mod


class URLSTMCell(_PlainPickleState, nn.Module):
    """One step of the UR-LSTM (or any variant), shaped like ``torch.nn.LSTMCell``.

    ``forward(input (B, I) or (I,), hx=None) -> (h_1, c_1)``. Parameters ``weight_ih`` ``(G*H, I)``,
    ``weight_hh`` ``(G*H, H)``, ``bias`` ``(G*H,)``, laid out and initialised as in :class:`URLSTM`, so a cell
    can load a one-layer ``URLSTM``'s weights (``weight_ih_l0`` -> ``weight_ih`` ...).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, gate="UR",
                 forget_bias: Optional[float] = None, chrono_tmax: Optional[float] = None, master_chunk: int = 1,
                 device=None, dtype=None):
        super().__init__()
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.spec = parse_gate(gate).with_master_chunk(master_chunk)
        _check_gate_options(self.spec, chrono_tmax)
        self.forget_bias, self.chrono_tmax = forget_bias, chrono_tmax
        factory = {"device": device, "dtype": dtype}
        gh = self.spec.gate_rows(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size, **factory))
        self.bias = nn.Parameter(torch.empty(gh, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_layer_(self.weight_ih, self.weight_hh, self.bias, self.spec, self.forget_bias, self.chrono_tmax)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        check_float_tensor("input", input)
        if input.dim() not in (1, 2):
            raise ValueError(f"input must be 2-D (batch, feature) or 1-D (feature,), got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has {input.shape[-1]} features but input_size={self.input_size}")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        shape = (x.shape[0], self.hidden_size)
        if hx is None:
            h = c = x.new_zeros(shape)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("hx must be a tuple (h_0, c_0) of two tensors")
            h, c = hx
            for name, t in (("h_0", h), ("c_0", c)):
                check_float_tensor(f"hx {name}", t)
                check_shape(f"hx {name}", t, shape[1:] if unbatched else shape)
                if t.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
                    raise TypeError(f"hx {name} has dtype {t.dtype} but input is {input.dtype}")
            if unbatched:
                h, c = h.unsqueeze(0), c.unsqueeze(0)
        check_same_device({"input": input, "hx h_0": h, "hx c_0": c, "weight_ih": self.weight_ih})
        z = nn.functional.linear(x, self.weight_ih, self.bias) + nn.functional.linear(h, self.weight_hh)
        cell_dtype = torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype
        h1, c1 = cell_update(z, c.to(cell_dtype), self.spec)
        h1, c1 = h1.to(z.dtype), c1.to(z.dtype)
        if unbatched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, gate={self.spec.code!r}, bias={self.bias is not None}"
