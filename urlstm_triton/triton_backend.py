"""The Triton backend of :func:`urlstm_triton.functional.urlstm`: fused recurrence kernels on CUDA.

``functional.resolve_backend`` imports this module (an ImportError means "no Triton here") and uses
:func:`is_available`, :func:`unavailable_reason` and :func:`triton_recurrence`.

Backend options: the fields of :class:`urlstm_triton.options.LayerOptions` (``URLSTM(..., backend="triton",
kernel="step", chunk_size=64)`` makes one; ``triton_recurrence`` takes one as ``options=`` or its fields as keywords):

- ``kernel``: ``"auto"`` | ``"step"`` | ``"persistent"``: the kernel family. ``"step"`` launches one
  kernel per time step (any B, H). ``"persistent"`` (one launch per chunk; ``kernels/persistent.py``) is
  used only where that module exists. ``"auto"`` picks through :func:`choose_kernel`: the persistent
  kernels where they suit the problem and have passed their self-check on the device
  (:mod:`urlstm_triton.selfcheck`), else the step kernels.
- ``chunk_size``: ``None`` (save every step's gates for backward: fastest), an int K (save only the
  chunk-boundary states, recompute each chunk in backward: memory O(T/K B H + K B 4H)), or ``"auto"``
  (save everything if it fits ``memory_budget`` bytes, else the largest K that fits; see
  :mod:`urlstm_triton.chunking`).
- ``memory_budget``: bytes for ``chunk_size="auto"`` (default: half the free CUDA memory).
- ``dot_precision``: ``"ieee"`` (default; fp32 inputs multiply exactly) or ``"tf32"`` (fp32 inputs on the
  tensor cores, faster, ~3e-4 relative error). Half precision always uses the tensor cores.
- ``config``: a ``urlstm_triton.kernels.TileConfig`` to override the tile sizes.
- ``gate_storage``: ``"compute"`` (default) saves the activated gates for backward in the compute dtype (half
  the bytes in bf16/fp16; the error stays within the bf16 bounds) or ``"fp32"``.
- ``cuda_graph``: ``True`` to replay each sequence's K step launches from a cached CUDA graph
  (``kernels/graphs.py``): cuts the per-launch CPU overhead that dominates at small batch; CUDA only.

Mixed precision: the compute dtype is the dtype of the input projection (the input's dtype, or the autocast
dtype under ``torch.autocast``); weights and states are cast to it inside, products accumulate in fp32, the
cell state and all gate math stay in fp32, and ``c_T`` is returned in fp32.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels as _kernels
from . import selfcheck, tuning
from .chunking import resolve_chunk_size
from .gates import GateSpec
from .options import KERNEL_OPTION_NAMES, KERNELS, LayerOptions, make_options
from .triton_autograd import ChunkedRecurrence, FusedRecurrence, run_forward

OPTIONS = KERNEL_OPTION_NAMES
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernels_interpreted() -> bool:
    """True when the kernels were compiled for Triton's CPU interpreter (``TRITON_INTERPRET=1`` was set
    when ``urlstm_triton.kernels`` was imported)."""
    return type(_kernels.recurrence_fwd._fwd_step_kernel).__name__ == "InterpretedFunction"


def unavailable_reason(device) -> str:
    """Why the kernels cannot run on ``device`` (``''`` if they can)."""
    device = torch.device(device)
    if kernels_interpreted():
        return ""  # the interpreter runs the kernels on CPU tensors (slowly: tests only)
    if device.type == "cuda":
        return "" if torch.cuda.is_available() else "CUDA is not available"
    return (f"the triton kernels need a CUDA device, not {device.type} (on a CPU they run only in Triton's "
            "interpreter: set TRITON_INTERPRET=1 before importing urlstm_triton; slow, meant for tests)")


def is_available(device) -> bool:
    return unavailable_reason(device) == ""


def gate_mode(spec: GateSpec) -> int:
    """The kernels' gate mode for a variant (only elementwise variants have one)."""
    if spec.classic:
        return _kernels.MODE_CLASSIC
    if not spec.elementwise:
        raise ValueError(f"gate {spec.code!r} uses cumax, which the fused kernels do not implement")
    return _kernels.MODE_REFINE if spec.aux == "R" else _kernels.MODE_TIED


def _persistent_family():
    """``urlstm_triton.kernels.persistent`` if it is installed and follows the launch-helper contract."""
    try:
        module = importlib.import_module("urlstm_triton.kernels.persistent")
    except ModuleNotFoundError as e:
        if e.name != "urlstm_triton.kernels.persistent":
            raise
        return None
    if not all(callable(getattr(module, n, None)) for n in ("forward_sequence", "backward_sequence")):
        return None
    return module


def choose_kernel(kernel: str, batch: int, hidden: int, device: torch.device, *, dtype: torch.dtype = torch.float32,
                  steps: Optional[int] = None, mode: int = _kernels.MODE_REFINE, cuda_graph: bool = False):
    """The kernel family (a module with ``forward_sequence``/``backward_sequence``) for the ``kernel``
    option. ``"auto"`` takes the step kernels when they are replayed from a CUDA graph (``cuda_graph``: the
    graph removes their per-step host launch cost, and then they were faster than the persistent kernels on
    every small-batch config measured on an H200: adding 18.0 vs 28.0 ms, smnist 16.9 vs 31.3, lm-1k 6.3 vs
    13.3; BENCHMARKS.md). Otherwise it takes the step kernels unless a persistent family exists, says it suits
    the problem
    (``persistent.suits(batch, hidden, device, dtype=, steps=, gates=)``, where ``steps`` is the number of
    steps per launch, the chunk size when chunked; the rule is written down in ``kernels/persistent.py``:
    ``unsuitable_reason``) and has passed its self-check on this device for ``mode`` and ``dtype``
    (``selfcheck.passed``: checked against the float64 oracle on first use, cached on disk; a failure
    warns once and the step kernels run)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "step":
        return _kernels
    persistent = _persistent_family()
    if kernel == "persistent":
        if persistent is None:
            raise ValueError("kernel='persistent' needs urlstm_triton.kernels.persistent with forward_sequence and "
                             "backward_sequence (the launch-helper contract of urlstm_triton.kernels)")
        return persistent
    suits = getattr(persistent, "suits", None)
    if (persistent is not None and callable(suits) and not cuda_graph
            and suits(batch, hidden, device, dtype=dtype, steps=steps, gates=_kernels.num_gates(mode))
            and selfcheck.passed(device, mode, dtype)):
        return persistent
    return _kernels


_GRAPHED = {}


def graphed(family):
    """The CUDA-graph wrapper of a kernel family (one per family, so its graph cache is shared)."""
    if family not in _GRAPHED:
        _GRAPHED[family] = _kernels.GraphedKernels(family)
    return _GRAPHED[family]


_SMS = {}


def _num_sms(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def _compute_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def triton_recurrence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor, spec: GateSpec,
    options: Optional[LayerOptions] = None, **kernel_options,
):
    """One layer, one direction: same contract as :func:`urlstm_triton.reference.reference_recurrence`
    (``(out (T, B, H), h_T, c_T)``; ``c_T`` in fp32 for half precision). ``options``: a ``LayerOptions``, or its
    kernel fields as keywords (see the module docstring)."""
    opts = make_options(options, **kernel_options)
    reason = unavailable_reason(x.device)
    if reason:
        raise RuntimeError(f"backend='triton' cannot run on {x.device}: {reason}")
    dtype = _compute_dtype(x)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the triton backend runs float32, float16 and bfloat16, got input dtype {dtype}; "
                        "use backend='reference' for other dtypes")
    mode = gate_mode(spec)
    steps, batch, in_size = x.shape
    hidden = w_hh.shape[1]
    gates = w_hh.shape[0] // hidden
    gate_dtype = torch.float32 if opts.gate_storage == "fp32" else dtype
    chunk = resolve_chunk_size(opts.chunk_size, steps, batch, in_size, hidden, gates, dtype, x.device,
                               opts.memory_budget, gate_dtype)
    family = choose_kernel(opts.kernel, batch, hidden, x.device, dtype=dtype, steps=min(chunk or steps, steps),
                           mode=mode, cuda_graph=opts.cuda_graph)
    if opts.cuda_graph:
        if x.device.type != "cuda" or kernels_interpreted():
            raise ValueError(f"cuda_graph=True needs the compiled kernels on a CUDA device, got {x.device}"
                             + (" under TRITON_INTERPRET" if kernels_interpreted() else ""))
        family = graphed(family)
    on_gpu = x.device.type == "cuda" and not kernels_interpreted()
    config = opts.config or _kernels.pick_config(
        batch, hidden, on_gpu, opts.dot_precision, _num_sms(x.device) if on_gpu else None,
        torch.empty((), dtype=dtype).element_size(), gates, torch.empty((), dtype=gate_dtype).element_size())
    if on_gpu and opts.config is None and opts.tiles == "tuned" and getattr(family, "family", family) is _kernels:
        # the step kernels' tiles as measured on this GPU (once per size; cached on disk): urlstm_triton.tuning
        config = tuning.tuned_config(batch, hidden, mode, dtype, gate_dtype, x.device, opts.dot_precision, config)
    if steps == 0:
        return (x.new_empty(0, batch, hidden, dtype=dtype), h0.to(dtype),
                c0.to(torch.float32 if dtype != torch.float32 else c0.dtype))
    h0c, c0c, w_hhc = h0.to(dtype), c0.to(torch.float32), w_hh.to(dtype).contiguous()
    # Triton launches on the current CUDA device: make it the tensors' one.
    on_device = torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()
    with on_device, torch.autocast(x.device.type, enabled=False):
        if chunk is None:
            xproj = F.linear(x.to(dtype), w_ih.to(dtype), None if bias is None else bias.to(dtype)).contiguous()
            grad = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, w_ih, w_hh, bias, h0, c0))
            if not grad:  # inference: no per-step gates are written or kept
                hs, cs, _ = run_forward(xproj, w_hhc, h0c, c0c, mode, family, config, None)
                return hs[1:], hs[steps].clone(), cs[steps].clone()
            return FusedRecurrence.apply(xproj, w_hhc, h0c, c0c, mode, family, config, gate_dtype)
        return ChunkedRecurrence.apply(x.to(dtype), w_ih.to(dtype), None if bias is None else bias.to(dtype),
                                       w_hhc, h0c, c0c, mode, chunk, family, config, gate_dtype)
