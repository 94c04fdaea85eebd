"""Triton kernels and their launch helpers (installed as ``urlstm_triton.kernels``).

No ``nn.Module``, no autograd here: the autograd Functions that string these helpers into a
differentiable recurrence live in ``urlstm_triton.triton_autograd``; ``urlstm_triton.triton_backend``
picks among them.

Launch-helper contract
======================
Every recurrence kernel family (``step``: one launch per time step, this package's
``recurrence_fwd``/``recurrence_bwd``; ``persistent``: one launch per chunk, ``kernels/persistent.py``)
exposes two helpers with these exact signatures and semantics, so the autograd layer can call any of them.
Notation: K steps in the chunk, B batch rows, H hidden units, G gate blocks (``common.num_gates(mode)``),
"compute dtype" = fp32, fp16 or bf16 (one dtype for xproj, w_hh, hs, dzs, d_out). Every tensor is
contiguous and on the same device; the helpers launch work asynchronously and return ``None``.

``forward_sequence(xproj, w_hh, hs, cs, gates, mode, config)``
    xproj  (K, B, G*H)   compute dtype, in:  ``x_t W^T + b`` for the chunk's steps (bias included).
    w_hh   (G*H, H)      compute dtype, in:  the recurrent weight U (gate blocks as ``mode`` says).
    hs     (K+1, B, H)   compute dtype, in/out: caller sets ``hs[0] = h_{start-1}``; the helper writes
                         ``hs[1:]`` = h of every step.
    cs     (K+1, B, H)   fp32, in/out: caller sets ``cs[0]``; the helper writes ``cs[1:]``.
    gates  (K, B, G*H)   fp32 or the compute dtype, out, or None: the activated gates of every step, in
                         gate-block order (``f,u,o`` / ``f,r,u,o`` / ``i,f,g,o``); None = do not save
                         (inference, or the forward pass of a chunked recurrence).
    mode   int           ``common.MODE_TIED`` | ``MODE_REFINE`` | ``MODE_CLASSIC``.
    config ``common.TileConfig`` (tile sizes per direction, warps, fp32 dot precision); a family may
                         ignore fields it does not use.

``backward_sequence(d_out, w_hh, gates, cs, dzs, dc, mode, config, *, dz_next=None, dh_last=None)``
    d_out  (K, B, H)     compute dtype, in:  gradient of the chunk's outputs h_t.
    w_hh, mode, config   as above.
    gates, cs            exactly what ``forward_sequence`` wrote for this chunk (cs[0] = boundary c).
    dzs    (K, B, G*H)   compute dtype, out: the pre-activation gradients dz_t (= d xproj_t).
    dc     (B, H)        fp32, in/out: in = dL/dc at the chunk's last step coming from later steps
                         (the final-state gradient for the last chunk); out = dL/dc_{start-1}.
    exactly one of
    dz_next (B, G*H)     compute dtype: dz of the step after the chunk (its first step's dzs) when a
                         later chunk exists; the helper adds ``dz_next @ U`` to the last step's dh;
    dh_last (B, H)       fp32: dL/dh of the chunk's last step from outside the sequence (the final-state
                         gradient ``d h_T``), for the last chunk.
    The helper does not compute ``dh_{start-1} = dz_0 U`` nor any weight gradient: the caller forms
    them with large GEMMs (``dU = dzs^T hs[:-1]``).

``graphs.GraphedKernels(family)`` wraps any family into one that follows this contract too and replays
each call signature from a cached CUDA graph.

Numerics: products on the tensor cores with fp32 accumulation; gate math, cell state and ``dc`` in fp32;
h and dz rounded to the compute dtype when stored (as the next step's GEMM operand); the saved gates rounded
to the dtype of the ``gates`` buffer (the compute dtype by default: half the bytes in half precision).
"""
from .common import MODE_CLASSIC, MODE_REFINE, MODE_TIED, TileConfig, Tiles, interpreting, num_gates
from .graphs import GraphedKernels
from .recurrence_bwd import backward_sequence
from .recurrence_fwd import forward_sequence
from .step_plan import pick_config

__all__ = [
    "MODE_TIED", "MODE_REFINE", "MODE_CLASSIC", "TileConfig", "Tiles", "num_gates", "pick_config", "interpreting",
    "forward_sequence", "backward_sequence", "GraphedKernels",
]
