"""Shared pieces of the recurrence kernels: gate modes, tile configuration, activation helpers.

Nothing here knows about ``GateSpec`` or autograd: callers pass an integer ``mode`` (see ``MODE_*``).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

try:  # grid dependency control, for programmatic dependent launch (sm_90+): triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    HAS_GDC = True
except ImportError:  # an older triton: Tiles.pdl is never honoured (pdl_supported), these are never traced
    HAS_GDC = False

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass

# Gate modes (a ``tl.constexpr`` in every kernel). The fused weight's gate blocks, in order:
MODE_TIED = 0     # f, u, o        tied input gate 1 - f          (gates "--", "C-", "U-")
MODE_REFINE = 1   # f, r, u, o     g = 2rf + (1-2r)f^2, input 1-g  (gates "-R", "CR", "UR")
MODE_CLASSIC = 2  # i, f, g, o     torch.nn.LSTM                  (gate "lstm")
MODES = (MODE_TIED, MODE_REFINE, MODE_CLASSIC)


def num_gates(mode: int) -> int:
    """Gate blocks of a mode: 3 for the tied gate without an auxiliary gate, else 4."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (MODE_TIED, MODE_REFINE, MODE_CLASSIC), got {mode!r}")
    return 3 if mode == MODE_TIED else 4


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at kernel import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _capability_major(index: Optional[int]) -> int:
    return torch.cuda.get_device_capability(index)[0] if torch.cuda.is_available() else 0


def pdl_supported(device) -> bool:
    """Whether step launches on ``device`` can use programmatic dependent launch (``Tiles.pdl``): a CUDA GPU of
    compute capability 9.0 or newer (Hopper; ``griddepcontrol`` is sm_90 PTX), a triton with grid dependency
    control, and not Triton's interpreter (which has none)."""
    device = torch.device(device)
    if not HAS_GDC or interpreting() or device.type != "cuda":
        return False
    return _capability_major(device.index) >= 9


def pdl_launch_options(tiles: "Tiles", device) -> dict:
    """Launch keywords of a fused step kernel: the ``PDL`` constexpr, and Triton's ``launch_pdl`` option when
    it is on (the programmatic-serialization attribute on the launch)."""
    pdl = tiles.pdl and pdl_supported(device)
    return {"PDL": True, "launch_pdl": True} if pdl else {"PDL": False}


@triton.jit
def wait_for_previous_step(PDL: tl.constexpr):
    """With programmatic dependent launch (``PDL``): wait until the previous kernel on the stream has finished
    and its writes are visible (every read of this step's inputs comes after this), then let the next step's
    kernel launch. Waiting first keeps at most two steps' programs resident: the next step's programs are
    placed while this one computes, never one further ahead."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@dataclass(frozen=True)
class Tiles:
    """The tiling of one step-kernel launch (one direction).

    ``block_b`` batch rows x ``block_h`` hidden units per program; ``block_k`` is the reduction slice of one
    MMA step. Forward: the program's MMA is ``(block_b x block_k) @ (block_k x 4 block_h)``, all gate blocks of
    its units side by side (a 4th, zero block in the tied mode), so its width is ``4 block_h``. Backward: the
    MMA is ``(block_b x block_k) @ (block_k x block_h)`` over the ``G H`` gate units of ``dz``.
    ``split_k`` programs share one output tile, each reducing a ``1/split_k`` slice; the last of them to
    finish sums the fp32 partials and runs the gate math, ``epi_h`` units at a time (with one split and
    ``epi_h == block_h``, straight from the accumulator).
    ``tl.dot`` needs every MMA dimension >= 16: ``block_b``, ``block_k`` and the MMA width.

    ``gemm=True`` runs each step's product as a library GEMM instead (``torch.mm`` with fp32 output: cuBLAS
    on a GPU) into an fp32 scratch slab, then a Triton kernel of ``block_b x block_h`` tiles runs the gate
    math on it: two launches per step, and the product at whatever rate cuBLAS reaches on the problem. It
    pays where ``U`` streams from HBM every step (lm-seed: 75 MB in bf16) and the fused kernels' tiles read
    it at a fraction of the bandwidth; the tuner (``urlstm_triton.tuning``) times it beside the fused tilings
    for 16-bit operands and keeps it only where it measures faster. ``block_k``, ``split_k`` and ``epi_h``
    do not apply to it (``split_k`` must be 1).

    ``pdl=True`` launches the fused step kernels with programmatic dependent launch where the GPU and triton
    have it (:func:`pdl_supported`: compute capability 9.0+, triton with grid dependency control; elsewhere it
    is ignored): each program waits for the previous step's kernel at its start (``gdc_wait``, before any
    memory access) and then lets the next step's kernel launch (``gdc_launch_dependents``), so that launch
    and its programs' scheduling overlap this step's work instead of following it. The tuner times it for
    its fastest fused tiling and keeps it only where it measures faster. Not with ``gemm=True`` (cuBLAS's
    kernels between the steps do not take part)."""

    block_b: int = 16
    block_h: int = 16
    block_k: int = 16
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    epi_h: Optional[int] = None  # None: block_h
    gemm: bool = False
    pdl: bool = False

    def __post_init__(self):
        if self.epi_h is None:
            object.__setattr__(self, "epi_h", self.block_h)
        for name in ("block_b", "block_h", "block_k", "epi_h"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v!r}")
        if self.block_b < 16 or self.block_k < 16:
            raise ValueError(f"block_b and block_k must be >= 16 (tl.dot), got {self.block_b}, {self.block_k}")
        if not (isinstance(self.split_k, int) and self.split_k >= 1):
            raise ValueError(f"split_k must be an int >= 1, got {self.split_k!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        if not isinstance(self.gemm, bool):
            raise ValueError(f"gemm must be True or False, got {self.gemm!r}")
        if self.gemm and self.split_k != 1:
            raise ValueError(f"gemm=True runs the product as one library GEMM: split_k must be 1, got {self.split_k}")
        if not isinstance(self.pdl, bool):
            raise ValueError(f"pdl must be True or False, got {self.pdl!r}")
        if self.gemm and self.pdl:
            raise ValueError("pdl=True applies to the fused step kernels, not to gemm=True (cuBLAS runs between steps)")


@dataclass(frozen=True)
class TileConfig:
    """Tiles of the step kernels, per direction, and the fp32 dot precision: ``"ieee"`` (exact fp32
    products; fp32 parity < 1e-4) or ``"tf32"`` (fp32 on the tensor cores, ~3e-4). Half-precision inputs
    always use the tensor cores. :func:`urlstm_triton.kernels.pick_config` chooses them per problem; the
    defaults are the interpreter's (small tiles: its cost grows with tile area)."""

    fwd: Tiles = Tiles()
    bwd: Tiles = Tiles()
    dot_precision: str = "ieee"

    def __post_init__(self):
        if self.dot_precision not in ("ieee", "tf32"):
            raise ValueError(f"dot_precision must be 'ieee' or 'tf32', got {self.dot_precision!r}")
        if self.fwd.block_h * 4 < 16:
            raise ValueError(f"the forward MMA is 4 * block_h wide and must be >= 16, got block_h={self.fwd.block_h}")
        if self.bwd.block_h < 16:
            raise ValueError(f"the backward MMA is block_h wide and must be >= 16, got {self.bwd.block_h}")
        for name, t in (("fwd", self.fwd), ("bwd", self.bwd)):
            if t.epi_h > t.block_h:
                raise ValueError(f"{name}.epi_h ({t.epi_h}) must not exceed {name}.block_h ({t.block_h})")


def dot_precision(config: TileConfig, dtype) -> str:
    """``tl.dot``'s input_precision for operands of ``dtype`` (a torch dtype): the configured one for fp32;
    for half precision the default ("tf32", which only concerns fp32 operands) so the tensor cores run."""
    return config.dot_precision if str(dtype) == "torch.float32" else "tf32"


def library_gemm_fp32_out() -> bool:
    """Whether this torch has ``torch.mm``'s ``out_dtype`` (the ``aten::mm.dtype_out`` overload, added in torch
    2.8): cuBLAS products of 16-bit operands with an fp32 output, which the library-GEMM step (``Tiles.gemm``)
    needs for 16-bit operands. Without it the tuner does not offer that step and the doctor skips its check."""
    return "dtype_out" in torch.ops.aten.mm.overloads()


def check_library_gemm(operand: torch.Tensor) -> None:
    """Raise before any launch when ``Tiles.gemm`` cannot run on ``operand``'s dtype and device with this torch."""
    if operand.device.type != "cpu" and operand.dtype != torch.float32 and not library_gemm_fp32_out():
        raise RuntimeError(
            f"Tiles(gemm=True) with {operand.dtype} operands needs torch.mm's out_dtype (torch >= 2.8) for an fp32 "
            f"product; torch {torch.__version__} lacks it: use the fused tiles (gemm=False) or a newer torch")


def product_fp32(a, b, out) -> None:
    """``out = a @ b`` in fp32 (``out`` an fp32 ``(m, n)`` tensor): for 16-bit ``a``/``b`` on a GPU, cuBLAS with
    fp32 accumulation *and* output (``torch.mm``'s ``out_dtype``), so the product is not rounded to 16 bits
    before the gate math; fp32 operands, and the CPU (the interpreter's tests), in fp32. The library GEMM of
    ``Tiles.gemm`` (callers check :func:`check_library_gemm` first)."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        torch.mm(a, b, out=out)
    elif a.device.type == "cpu":
        torch.mm(a.float(), b.float(), out=out)
    else:
        torch.mm(a, b, torch.float32, out=out)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # No tl.tanh in triton 3.6 and no libdevice in the interpreter: tanh(x) = 2 sigmoid(2x) - 1.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def cell_forward(z0, z1, z2, z3, c_prev, MODE: tl.constexpr):
    """(h_t, c_t, activated gates a0..a3 in gate-block order) of one tile; z3/a3 unused in MODE_TIED.

    The one place the kernels hold the cell's forward math: the step and persistent kernels both call it."""
    if MODE == 2:  # i, f, g, o (nn.LSTM)
        a0 = sigmoid(z0)
        a1 = sigmoid(z1)
        a2 = tanh(z2)
        a3 = sigmoid(z3)
        c = a1 * c_prev + a0 * a2
        o = a3
    elif MODE == 1:  # f, r, u, o;  g = f^2 + 2 r f (1 - f)
        a0 = sigmoid(z0)
        a1 = sigmoid(z1)
        a2 = tanh(z2)
        a3 = sigmoid(z3)
        g = a0 * a0 + 2.0 * a1 * a0 * (1.0 - a0)
        c = g * c_prev + (1.0 - g) * a2
        o = a3
    else:  # f, u, o
        a0 = sigmoid(z0)
        a1 = tanh(z1)
        a2 = sigmoid(z2)
        a3 = a2
        c = a0 * c_prev + (1.0 - a0) * a1
        o = a2
    return o * tanh(c), c, a0, a1, a2, a3


@triton.jit
def cell_backward(a0, a1, a2, a3, c_prev, c, dh, dc, MODE: tl.constexpr):
    """(dz0..dz3, dc_{t-1}) of one tile from the activated gates, dL/dh_t (all paths) and dL/dc_t (from
    step t+1). Formulas: ``kernels/recurrence_bwd.py``'s docstring and DESIGN.md. The one place the kernels
    hold the gate derivatives: the step and persistent kernels both call it."""
    tc = tanh(c)
    if MODE == 2:
        i = a0
        f = a1
        gg = a2
        o = a3
        d3 = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        d0 = dc * gg * i * (1.0 - i)
        d1 = dc * c_prev * f * (1.0 - f)
        d2 = dc * i * (1.0 - gg * gg)
        dc_prev = dc * f
    elif MODE == 1:
        f = a0
        r = a1
        u = a2
        o = a3
        g = f * f + 2.0 * r * f * (1.0 - f)
        d3 = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        dg = dc * (c_prev - u)
        d0 = dg * (2.0 * r + 2.0 * (1.0 - 2.0 * r) * f) * f * (1.0 - f)
        d1 = dg * 2.0 * f * (1.0 - f) * r * (1.0 - r)
        d2 = dc * (1.0 - g) * (1.0 - u * u)
        dc_prev = dc * g
    else:
        f = a0
        u = a1
        o = a2
        d2 = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        d0 = dc * (c_prev - u) * f * (1.0 - f)
        d1 = dc * (1.0 - f) * (1.0 - u * u)
        d3 = d2
        dc_prev = dc * f
    return d0, d1, d2, d3, dc_prev


@triton.jit
def split_gates(acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Four ``(BLOCK_B, BLOCK_H)`` gate tiles from a ``(BLOCK_B, 4 BLOCK_H)`` tile whose column ``4 j + q`` is
    gate ``q`` of unit ``j`` (the forward MMA's gate-minor layout): reshape to ``(BLOCK_B, BLOCK_H, 2, 2)``
    (``q = 2 i + l``) and split the two trailing axes."""
    z = tl.reshape(acc, (BLOCK_B, BLOCK_H, 2, 2))
    z02, z13 = tl.split(z)
    z0, z2 = tl.split(z02)
    z1, z3 = tl.split(z13)
    return z0, z1, z2, z3


@triton.jit
def split_range(pid_s, length, SPLIT_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """``[lo, hi)``: the slice of a reduction of ``length`` that split ``pid_s`` of ``SPLIT_K`` owns (whole
    ``BLOCK_K`` steps; the last slice may be shorter or empty)."""
    per = tl.cdiv(tl.cdiv(length, SPLIT_K), BLOCK_K) * BLOCK_K
    lo = pid_s * per
    return lo, tl.minimum(length, lo + per)


@triton.jit
def arrive(count_ptr, SPLIT_K: tl.constexpr):
    """Split-K hand-off: after every thread of this program has stored its partial tile, count this program
    in (release: the partials are visible before the count; acquire: the last program sees all of them).
    True for the program that completes the group, which then sums the partials. The counter is never reset
    within a launch sequence: it counts ``SPLIT_K`` arrivals per step, and launches of consecutive steps are
    ordered by the stream (with ``Tiles.pdl``, by :func:`wait_for_previous_step` at every program's start)."""
    tl.debug_barrier()
    old = tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu")
    return old % SPLIT_K == SPLIT_K - 1


@triton.jit
def load_gate_blocks(ptr, H, mask, G: tl.constexpr):
    """The ``G`` gate blocks of a tile of a ``(B, G H)`` slab (``ptr`` at gate block 0), as fp32; the fourth is
    the third again when ``G == 3`` (the tied mode has none; callers ignore it)."""
    b0 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    b1 = tl.load(ptr + H, mask=mask, other=0.0).to(tl.float32)
    b2 = tl.load(ptr + 2 * H, mask=mask, other=0.0).to(tl.float32)
    b3 = b2
    if G == 4:
        b3 = tl.load(ptr + 3 * H, mask=mask, other=0.0).to(tl.float32)
    return b0, b1, b2, b3


@triton.jit
def store_gate_blocks(ptr, b0, b1, b2, b3, H, mask, G: tl.constexpr):
    """Store ``G`` gate-block tiles into a ``(B, G H)`` slab (``ptr`` at gate block 0), in its dtype."""
    ty = ptr.dtype.element_ty
    tl.store(ptr, b0.to(ty), mask=mask)
    tl.store(ptr + H, b1.to(ty), mask=mask)
    tl.store(ptr + 2 * H, b2.to(ty), mask=mask)
    if G == 4:
        tl.store(ptr + 3 * H, b3.to(ty), mask=mask)


@triton.jit
def forward_epilogue(acc, rb, mb, u0, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE: tl.constexpr,
                     G: tl.constexpr, SAVE_GATES: tl.constexpr, BLOCK_B: tl.constexpr, EPI_H: tl.constexpr):
    """Forward gate math of step ``t64`` for rows ``rb`` and units ``u0 .. u0 + EPI_H``, from their gate-minor
    pre-activations ``acc`` (``(BLOCK_B, 4 EPI_H)``, without the input projection): adds ``xproj``, reads
    ``c_{t-1}``, writes ``h_t``, ``c_t`` and (``SAVE_GATES``) the activated gates in the ``gates`` buffer's
    dtype. The step and the persistent forward kernels both end their steps with it."""
    a0, a1, a2, a3 = split_gates(acc, BLOCK_B, EPI_H)
    rh = u0 + tl.arange(0, EPI_H)
    forward_cell_store(a0, a1, a2, a3, rb, mb, rh, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE, G,
                       SAVE_GATES)


@triton.jit
def forward_cell_store(a0, a1, a2, a3, rb, mb, rh, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE: tl.constexpr,
                       G: tl.constexpr, SAVE_GATES: tl.constexpr):
    """The rest of :func:`forward_epilogue` from the four gate blocks' pre-activations ``a0..a3`` of rows ``rb``
    and units ``rh`` (without the input projection, which it adds); ``a3`` is ignored when ``G == 3``."""
    m2 = mb[:, None] & (rh < H)[None, :]
    bh = B * H
    gh = G * H
    row = rb[:, None] * gh + rh[None, :]  # gate block 0 of (b, j) in a (B, G*H) step
    x0, x1, x2, x3 = load_gate_blocks(xp_ptr + t64 * B * gh + row, H, m2, G)
    hc = rb[:, None] * H + rh[None, :]
    c_prev = tl.load(cs_ptr + t64 * bh + hc, mask=m2, other=0.0)
    h, c, g0, g1, g2, g3 = cell_forward(a0 + x0, a1 + x1, a2 + x2, a3 + x3, c_prev, MODE)
    tl.store(cs_ptr + (t64 + 1) * bh + hc, c, mask=m2)
    tl.store(hs_ptr + (t64 + 1) * bh + hc, h.to(hs_ptr.dtype.element_ty), mask=m2)
    if SAVE_GATES:
        store_gate_blocks(gates_ptr + t64 * B * gh + row, g0, g1, g2, g3, H, m2, G)


@triton.jit
def backward_epilogue(dh, rb, mb, units, t64, B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, MODE: tl.constexpr,
                      G: tl.constexpr):
    """Gate derivatives of step ``t64`` for rows ``rb`` and ``units``, given ``dh`` (every path but
    ``d_out[t]``, which it adds): reads the saved gates and cell states and ``dc`` (this tile's, updated in
    place to ``dc_{t-1}``), writes ``dz_t``. The step and the persistent backward kernels both use it."""
    mu = units < H
    m2 = mb[:, None] & mu[None, :]
    bh = B * H
    gh = G * H
    hc = rb[:, None] * H + units[None, :]
    dh = dh + tl.load(dout_ptr + t64 * bh + hc, mask=m2, other=0.0).to(tl.float32)
    row = rb[:, None] * gh + units[None, :]
    a0, a1, a2, a3 = load_gate_blocks(gates_ptr + t64 * B * gh + row, H, m2, G)
    c_prev = tl.load(cs_ptr + t64 * bh + hc, mask=m2, other=0.0)
    c = tl.load(cs_ptr + (t64 + 1) * bh + hc, mask=m2, other=0.0)
    dc = tl.load(dc_ptr + hc, mask=m2, other=0.0)
    dz0, dz1, dz2, dz3, dc_prev = cell_backward(a0, a1, a2, a3, c_prev, c, dh, dc, MODE)
    tl.store(dc_ptr + hc, dc_prev, mask=m2)
    store_gate_blocks(dz_ptr + t64 * B * gh + row, dz0, dz1, dz2, dz3, H, m2, G)
