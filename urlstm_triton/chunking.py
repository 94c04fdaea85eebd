"""Memory accounting of the Triton recurrence, and the automatic kernel-chunk size.

"Save everything" keeps, per step, the activated gates (compute dtype, or fp32 with ``gate_storage="fp32"``),
the cell state (fp32) and h (compute dtype)
for backward, and backward adds the pre-activation gradients dz (compute dtype): O(T B 4H). A chunked
recurrence with chunks of K steps keeps only the chunk-boundary (h, c) (O(T/K B H)) and, in backward,
one chunk's worth of those buffers at a time (O(K B 4H)); it pays one recomputed forward per chunk.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from .options import check_chunk_size, check_memory_budget

_HALF = (torch.float16, torch.bfloat16)


def _sizes(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).element_size(), 4  # compute dtype bytes, fp32 bytes


def _gate_size(dtype: torch.dtype, gate_dtype: Optional[torch.dtype]) -> int:
    return torch.empty((), dtype=gate_dtype or dtype).element_size()


def full_activation_bytes(steps: int, batch: int, hidden: int, gates: int, dtype: torch.dtype,
                          gate_dtype: Optional[torch.dtype] = None) -> int:
    """Bytes one layer-direction of the save-everything path holds for backward, plus backward's dz:
    gates (T, B, G*H) in ``gate_dtype`` (default: the compute dtype), cs (T+1, B, H) fp32, hs (T+1, B, H) and
    dzs (T, B, G*H) in the compute dtype."""
    es, f4 = _sizes(dtype)
    gh = gates * hidden
    return steps * batch * gh * (_gate_size(dtype, gate_dtype) + es) + (steps + 1) * batch * hidden * (f4 + es)


def chunked_boundary_bytes(steps: int, batch: int, hidden: int, chunk: int, dtype: torch.dtype) -> int:
    """Bytes of the chunk-boundary states that a chunked forward saves: ``ceil(T/K)`` h's (compute dtype)
    and c's (fp32), each ``(B, H)``. (The autograd graph also keeps the layer input and the weights.)"""
    es, f4 = _sizes(dtype)
    return math.ceil(steps / chunk) * batch * hidden * (es + f4)


def chunked_working_bytes(batch: int, input_size: int, hidden: int, gates: int, chunk: int,
                          dtype: torch.dtype, gate_dtype: Optional[torch.dtype] = None) -> int:
    """Bytes of the per-chunk buffers of a chunked backward: recomputed xproj, hs, cs, gates, dz."""
    es, f4 = _sizes(dtype)
    gh = gates * hidden
    return chunk * batch * gh * (es + _gate_size(dtype, gate_dtype) + es) + (chunk + 1) * batch * hidden * (es + f4)


def default_memory_budget(device: torch.device) -> int:
    """Half the free memory of a CUDA device; 2 GiB elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 2 << 30


def auto_chunk_size(steps: int, batch: int, input_size: int, hidden: int, gates: int, dtype: torch.dtype,
                    budget: int, gate_dtype: Optional[torch.dtype] = None) -> Optional[int]:
    """``None`` (save everything: fastest) if that fits in ``budget`` bytes, else the largest chunk size
    whose boundary states plus one chunk's working buffers fit; if none fits, the one that needs least."""
    if full_activation_bytes(steps, batch, hidden, gates, dtype, gate_dtype) <= budget:
        return None

    def need(k):
        return chunked_boundary_bytes(steps, batch, hidden, k, dtype) + chunked_working_bytes(
            batch, input_size, hidden, gates, k, dtype, gate_dtype)

    candidates = sorted({min(steps, 2 ** p) for p in range(0, max(1, steps).bit_length() + 1)})
    fitting = [k for k in candidates if need(k) <= budget]
    return max(fitting) if fitting else min(candidates, key=need)


def resolve_chunk_size(chunk_size: Union[None, int, str], steps: int, batch: int, input_size: int, hidden: int,
                       gates: int, dtype: torch.dtype, device: torch.device,
                       memory_budget: Optional[int] = None, gate_dtype: Optional[torch.dtype] = None) -> Optional[int]:
    """The chunk size for the ``chunk_size`` option: ``None`` (save everything), a positive int, or ``"auto"``
    (from ``memory_budget`` bytes, default :func:`default_memory_budget`; ``gate_dtype``: how the saved gates are
    stored). The values are checked by the same rules as :class:`~urlstm_triton.options.LayerOptions`."""
    check_chunk_size("chunk_size", chunk_size)
    check_memory_budget("memory_budget", memory_budget)
    if chunk_size == "auto":
        if memory_budget is None:
            memory_budget = default_memory_budget(device)
        return auto_chunk_size(steps, batch, input_size, hidden, gates, dtype, memory_budget, gate_dtype)
    return chunk_size
