"""Shared pieces of the recurrence kernels: gate modes, tile configuration, activation helpers.

Nothing here knows about ``GateSpec`` or autograd: callers pass an integer ``mode`` (see ``MODE_*``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import triton
import triton.language as tl

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


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of the step kernels. ``block_b`` batch rows x ``block_h`` hidden units per program;
    ``block_k`` is the reduction slice. ``tl.dot`` needs every block dimension >= 16.
    ``dot_precision``: ``"ieee"`` (exact fp32 products; fp32 parity < 1e-4) or ``"tf32"`` (faster fp32 on
    tensor cores, ~3e-4). Half-precision inputs always use the tensor cores."""

    block_b: int = 16
    block_h: int = 16
    block_k: int = 16
    num_warps: int = 4
    dot_precision: str = "ieee"


def pick_config(batch: int, hidden: int, on_gpu: bool, dot_precision: str = "ieee",
                num_sms: Optional[int] = None, elem_bytes: int = 2) -> TileConfig:
    """Tile sizes for a (batch, hidden) problem.

    The interpreter gets the smallest legal tiles (its cost grows with tile area). On a GPU each step
    streams ``U`` once per batch tile and ``h`` (or ``dz``) once per hidden tile: bytes per step
    ~ ``2 B H^2 (G/block_b + 1/block_h)``, so the batch tile is as large as the registers allow (up to 128
    rows: ``U``, the larger operand, is then read once per step) and the hidden tile the largest of
    64/32/16 that still gives every multiprocessor a program (latency: a program's share of ``U`` shrinks
    with block_h), keeping G accumulators of block_b x block_h fp32 within 16K values per program.
    ``elem_bytes``: bytes per operand element (2 for fp16/bf16, 4 for fp32).
    These are first guesses, not measurements: ``scripts/bench_kernels.py --tile`` times alternatives.
    """
    if dot_precision not in ("ieee", "tf32"):
        raise ValueError(f"dot_precision must be 'ieee' or 'tf32', got {dot_precision!r}")
    if not on_gpu:
        return TileConfig(dot_precision=dot_precision)
    num_sms = num_sms or 132
    block_b = min(128, max(16, triton.next_power_of_2(batch)))
    n_b = -(-batch // block_b)
    block_h = 16
    for bh in (64, 32):
        if block_b * bh <= 4096 and n_b * -(-hidden // bh) >= num_sms:
            block_h = bh
            break
    # fp32 operands take twice the shared memory per pipeline stage: a shorter reduction slice keeps
    # (block_b + G * block_h) * block_k * 4 bytes x 3 stages well inside Hopper's 228 KB.
    block_k = 64 if (hidden >= 64 and elem_bytes <= 2) else 32
    num_warps = 8 if block_b * block_h >= 2048 else 4
    return TileConfig(block_b, block_h, block_k, num_warps, dot_precision)


def dot_precision(config: TileConfig, dtype) -> str:
    """``tl.dot``'s input_precision for operands of ``dtype`` (a torch dtype): the configured one for fp32;
    for half precision the default ("tf32", which only concerns fp32 operands) so the tensor cores run."""
    return config.dot_precision if str(dtype) == "torch.float32" else "tf32"


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
