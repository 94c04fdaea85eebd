"""The functional entry point: a multi-layer, optionally bidirectional UR-LSTM with explicit weights.

``urlstm`` validates its inputs, then runs one recurrence per layer and direction through a backend:
``"reference"`` (pure PyTorch, any device), ``"triton"`` (fused kernels) or ``"auto"`` (Triton on CUDA
when it can run the variant, else the reference).
"""
from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Callable, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_dropout, check_float_tensor, check_same_device, check_shape
from .gates import GateSpec, parse_gate
from .options import BACKENDS, NAMES as OPTION_NAMES, LayerOptions, make_options
from .reference import reference_recurrence

LayerWeights = Tuple[Tensor, Tensor, Optional[Tensor]]
_warned = set()


def _warn_once(key, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def check_keywords(extra: dict, own: Iterable[str], what: str) -> None:
    """The keywords a caller passed beyond its own parameters ``own`` must be backend options; any other is a
    ``TypeError`` naming it (``what`` says what the caller calls them), as ``nn.LSTM``'s is, with the closest name
    when there is one (``batch_frist`` -> ``batch_first``)."""
    unknown = sorted(set(extra) - set(OPTION_NAMES))
    if unknown:
        names = list(own) + list(OPTION_NAMES)
        close = [repr(m) for n in unknown for m in difflib.get_close_matches(n, names, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TypeError(f"unknown {what}(s) {unknown}{hint}; the backend options are {list(OPTION_NAMES)}")


def check_no_projection(proj_size, who: str) -> None:
    """``nn.LSTM``'s ``proj_size`` (a learnt projection of ``h``) does not exist here: 0, its default, is accepted
    so that code written for ``nn.LSTM`` runs; anything else is refused rather than silently ignored."""
    if proj_size:
        raise NotImplementedError(f"proj_size={proj_size!r}: {who} has no projection of h (nn.LSTM's proj_size); "
                                  "apply an nn.Linear to the output instead")


def _triton_module():
    """The Triton backend module, or ``None`` if it cannot be imported here."""
    try:
        from . import triton_backend
    except ImportError:
        return None
    return triton_backend


def resolve_backend(
    backend: str, spec: GateSpec, device: torch.device, dtype: Optional[torch.dtype] = None
) -> Callable:
    """Pick the recurrence function for ``backend`` (see module docstring).

    ``"auto"`` takes the kernels only on a CUDA device and for a dtype they run (``dtype``, when given):
    Triton's CPU interpreter (which tests turn on) is far too slow to be picked by default.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return reference_recurrence
    tb = _triton_module()
    if backend == "auto":
        if (tb is not None and spec.elementwise and device.type == "cuda" and tb.is_available(device)
                and (dtype is None or dtype in tb.SUPPORTED_DTYPES)):
            return tb.triton_recurrence
        return reference_recurrence
    # backend == "triton"
    if tb is None:
        raise RuntimeError(
            "backend='triton' needs the fused Triton kernels (urlstm_triton.triton_backend), which could not "
            "be imported: install triton (Linux) or use backend='reference'"
        )
    if not spec.elementwise:
        _warn_once(
            ("fallback", spec.code),
            f"gate {spec.code!r} ({spec.paper_name}) uses cumax over hidden units, which the fused kernels do "
            "not implement: running the reference recurrence instead",
        )
        return reference_recurrence
    reason = tb.unavailable_reason(device)
    if reason:
        raise RuntimeError(f"backend='triton' cannot run on {device}: {reason}")
    return tb.triton_recurrence


def _check_weights(weights, spec, num_directions, input_size, hidden_size) -> int:
    if len(weights) == 0 or len(weights) % num_directions:
        raise ValueError(
            f"weights must hold one (w_ih, w_hh, bias) tuple per layer and direction "
            f"({num_directions} per layer), got {len(weights)}"
        )
    gh = spec.gate_rows(hidden_size)
    for k, lw in enumerate(weights):
        if not isinstance(lw, (tuple, list)) or len(lw) != 3:
            raise TypeError(f"weights[{k}] must be a (w_ih, w_hh, bias) tuple (bias may be None)")
        w_ih, w_hh, b = lw
        layer = k // num_directions
        in_l = input_size if layer == 0 else hidden_size * num_directions
        check_float_tensor(f"weights[{k}][0] (w_ih)", w_ih)
        check_float_tensor(f"weights[{k}][1] (w_hh)", w_hh)
        check_shape(f"weights[{k}][0] (w_ih)", w_ih, (gh, in_l), f" for gate {spec.code!r}")
        check_shape(f"weights[{k}][1] (w_hh)", w_hh, (gh, hidden_size), f" for gate {spec.code!r}")
        if b is not None:
            check_float_tensor(f"weights[{k}][2] (bias)", b)
            check_shape(f"weights[{k}][2] (bias)", b, (gh,), f" for gate {spec.code!r}")
    return len(weights) // num_directions


def _check_lengths(lengths, steps: int, batch: int) -> Tensor:
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.numel() != batch or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-D integer tensor of {batch} sequence lengths, got "
                         f"{tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.to("cpu", torch.int64)
    if batch and (lengths.min() < 1 or lengths.max() > steps or bool((lengths[1:] > lengths[:-1]).any())):
        raise ValueError(f"lengths must be sorted in decreasing order and lie in [1, {steps}], got {lengths.tolist()}")
    return lengths


def _reverse_within_lengths(lengths: Tensor, steps: int, device) -> Tensor:
    """``(T, B)`` time indices that reverse each sequence within its own length and leave the padding in place;
    the map is its own inverse, so the same index turns the reversed outputs back."""
    t = torch.arange(steps).unsqueeze(1)
    index = torch.where(t < lengths.unsqueeze(0), lengths.unsqueeze(0) - 1 - t, t)
    return index.to(device)


def _gather_time(seq: Tensor, index: Tensor) -> Tensor:
    return seq.gather(0, index.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))


def _ragged_recurrence(recurrence, seq, lengths, w_ih, w_hh, bias, h0, c0, spec, run_options):
    """Run a batch sorted by decreasing length as segments of constant batch (cuDNN's packed layout): while
    only the first ``b`` sequences are still running, the backend runs on those ``b`` rows alone, from the
    state they reached. As many backend calls as distinct lengths, T steps in all; the state of a finished
    sequence is its state at its own last step."""
    steps, batch = seq.shape[0], seq.shape[1]
    hidden = w_hh.shape[1]
    h, c = h0, c0
    pieces = []
    t0 = 0
    while t0 < steps:
        active = int((lengths > t0).sum())
        if active == 0:
            break
        t1 = int(lengths[active - 1])  # the shortest running sequence ends here
        out, h_b, c_b = recurrence(seq[t0:t1, :active], w_ih, w_hh, bias, h[:active], c[:active], spec, **run_options)
        if active < batch:
            out = torch.cat([out, out.new_zeros(t1 - t0, batch - active, hidden)], dim=1)
        pieces.append(out)
        h = torch.cat([h_b, h[active:].to(h_b.dtype)], dim=0)
        c = torch.cat([c_b, c[active:].to(c_b.dtype)], dim=0)
        t0 = t1
    if t0 < steps:  # padding past the longest sequence
        pieces.append(pieces[-1].new_zeros(steps - t0, batch, hidden))
    return torch.cat(pieces, dim=0), h, c


def urlstm(
    input: Tensor,
    weights: Sequence[LayerWeights],
    state: Optional[Tuple[Tensor, Tensor]] = None,
    *,
    gate="UR",
    bidirectional: bool = False,
    batch_first: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str = "auto",
    lengths: Optional[Tensor] = None,
    options: Optional[LayerOptions] = None,
    **kernel_options,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """Run a stacked (bi)directional UR-LSTM with the given weights; conventions of ``torch.nn.LSTM``.

    Args:
        input: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``) or unbatched ``(T, I)``.
        weights: per layer and direction (layer-major, forward before reverse) a tuple
            ``(w_ih (G*H, I_l), w_hh (G*H, H), bias (G*H,) or None)``; G is the variant's gate count.
        state: optional ``(h_0, c_0)``, each ``(num_layers * num_directions, B, H)`` (or ``(L*D, H)``).
        gate: variant name (``"UR"``, ``"U-"``, ``"lstm"`` ...) or a :class:`GateSpec`.
        dropout: probability of dropout on the outputs of every layer but the last, when ``training``.
        backend: ``"auto"``, ``"reference"`` or ``"triton"`` (ignored when ``options`` is given).
        lengths: optional ``(B,)`` sequence lengths of a padded batch, sorted in decreasing order (what a
            ``PackedSequence`` holds): each sequence stops at its own length (its final state is taken there, the
            reverse direction starts there, outputs past it are zero). ``URLSTM`` passes it for packed input.
        options: a :class:`~urlstm_triton.options.LayerOptions` (what ``URLSTM`` passes); without it, ``backend``
            and ``kernel_options`` (``kernel=``, ``chunk_size=`` ... the Triton backend's options) make one.
            An unknown keyword is a ``TypeError`` naming it, as ``nn.LSTM``'s is; ``proj_size`` (an ``nn.LSTM``
            feature the URLSTM lacks) is a ``NotImplementedError`` unless 0.

    Returns:
        ``(output, (h_n, c_n))`` with ``output`` ``(T, B, D*H)`` (batch-first if ``batch_first``).
    """
    if options is None:
        check_no_projection(kernel_options.pop("proj_size", 0), "urlstm")
        check_keywords(kernel_options, inspect.signature(urlstm).parameters, "triton backend option")
        options = make_options(backend=backend, **kernel_options)
    elif kernel_options or backend != "auto":
        raise TypeError("give either options= or the backend/kernel keywords, not both")
    spec = parse_gate(gate)
    dropout = check_dropout(dropout)
    check_float_tensor("input", input)
    num_directions = 2 if bidirectional else 1
    if input.dim() not in (2, 3):
        raise ValueError(
            f"input must be 3-D (seq, batch, feature) or 2-D (seq, feature) for unbatched input, "
            f"got {input.dim()}-D with shape {tuple(input.shape)}"
        )
    first = weights[0] if len(weights) else None
    if first is None or not isinstance(first, (tuple, list)) or len(first) != 3:
        raise ValueError("weights must be a non-empty sequence of (w_ih, w_hh, bias) tuples")
    hidden_size = first[1].shape[-1]
    input_size = first[0].shape[-1]
    num_layers = _check_weights(weights, spec, num_directions, input_size, hidden_size)

    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
    if x.shape[-1] != input_size:
        raise ValueError(f"input has {x.shape[-1]} features but the layer expects input_size={input_size}")
    batch = x.shape[1]

    expected_state = (num_layers * num_directions, hidden_size) if unbatched else (
        num_layers * num_directions, batch, hidden_size)
    if state is None:
        h0 = c0 = x.new_zeros(num_layers * num_directions, batch, hidden_size)
    else:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("state must be a tuple (h_0, c_0) of two tensors")
        h0, c0 = state
        for name, t in (("h_0", h0), ("c_0", c0)):
            check_float_tensor(f"state {name}", t)
            check_shape(f"state {name}", t, expected_state, " (num_layers * num_directions, batch, hidden_size)"
                        if not unbatched else " (num_layers * num_directions, hidden_size) for unbatched input")
            if t.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
                raise TypeError(
                    f"state {name} has dtype {t.dtype} but input is {input.dtype}; convert with .to({input.dtype})"
                )
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
    tensors = {"input": input, "state h_0": h0, "state c_0": c0}
    for k, lw in enumerate(weights):
        tensors.update({f"weights[{k}][0]": lw[0], f"weights[{k}][1]": lw[1], f"weights[{k}][2]": lw[2]})
    check_same_device(tensors)
    if first[0].dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
        raise TypeError(
            f"input has dtype {input.dtype} but the weights are {first[0].dtype}; convert the input or the "
            "module (e.g. module.to(input.dtype)), or run under torch.autocast"
        )

    recurrence = resolve_backend(options.backend, spec, x.device, x.dtype)
    run_options = {}
    if recurrence is not reference_recurrence:
        run_options = {"options": options}
    elif options.kernel_options():
        # Options such as chunk_size tune the kernels (LayerOptions refuses them with backend='reference'); a
        # model configured for a GPU still runs on a laptop, where auto picks the reference.
        names = sorted(options.kernel_options())
        _warn_once(("ignored", tuple(names)),
                   f"backend options {names} tune the Triton kernels; the reference recurrence that runs here "
                   f"(device {x.device.type}, gate {spec.code!r}) ignores them")
    if lengths is not None:
        if unbatched:
            raise ValueError("lengths needs a batched 3-D input (one length per batch row)")
        lengths = _check_lengths(lengths, x.shape[0], batch)
        reverse_index = _reverse_within_lengths(lengths, x.shape[0], x.device)
    h_n, c_n = [], []
    layer_input = x
    for layer in range(num_layers):
        outs = []
        for d in range(num_directions):
            k = layer * num_directions + d
            w_ih, w_hh, b = weights[k]
            if lengths is None:
                seq = layer_input.flip(0) if d == 1 else layer_input
                out, h_last, c_last = recurrence(seq, w_ih, w_hh, b, h0[k], c0[k], spec, **run_options)
                outs.append(out.flip(0) if d == 1 else out)
            else:
                seq = _gather_time(layer_input, reverse_index) if d == 1 else layer_input
                out, h_last, c_last = _ragged_recurrence(recurrence, seq, lengths, w_ih, w_hh, b, h0[k], c0[k],
                                                         spec, run_options)
                outs.append(_gather_time(out, reverse_index) if d == 1 else out)
            h_n.append(h_last)
            c_n.append(c_last.to(h_last.dtype))
        layer_input = outs[0] if num_directions == 1 else torch.cat(outs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    output = layer_input
    h_n, c_n = torch.stack(h_n, 0), torch.stack(c_n, 0)
    if unbatched:
        return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
    if batch_first:
        output = output.transpose(0, 1)
    return output, (h_n, c_n)
