"""Persistent Triton kernels for the recurrence: one launch runs every time step (small batch, long sequence).

The step kernels pay one launch per time step; with a small batch each step is a tiny GEMM and the launch is
the cost. Here one launch loops over all ``T`` steps. The grid is ``(n_h, n_b)``: program ``(i, j)`` owns hidden
units ``[i*BLOCK_H, (i+1)*BLOCK_H)`` (all gate blocks of those units, so the gate math is the GEMM epilogue) of
batch rows ``[j*BLOCK_B, (j+1)*BLOCK_B)``. The programs of one batch tile exchange ``h_t`` (forward) or ``dz_t``
(backward) through global memory and meet at a grid-wide barrier once per step; batch tiles are independent
and each has its own barrier counter.

On chip:
- ``U_ON_CHIP=True``: each program loads its slice of ``U`` once, before the time loop, as ``G`` tiles of
  ``(H, BLOCK_H)`` that stay live across the loop (registers, or shared memory where the compiler puts dot
  operands); forward holds ``U[g*H + cols, :]^T``, backward ``U[g*H + :, cols]`` (the ``U^T`` slice).
- ``U_ON_CHIP=False``: the slice is too large for one program's on-chip budget (see :func:`plan_persistent`);
  the kernel streams it in ``BLOCK_K`` chunks every step instead. Same math; the slices of all programs
  together are ``G*H*H`` elements, which stay resident in L2 on current GPUs for the sizes this path is chosen
  for.

Grid barrier (:func:`_grid_barrier`): a monotone int32 counter per batch tile. After its stores of step ``t``
a program syncs its own threads (``tl.debug_barrier``: bar.sync), adds 1 with release semantics at GPU scope,
then spins on an acquire read (an atomic add of 0) until the counter reaches ``(t + 1) * n_h``, then syncs its
threads again. Loads of the exchanged tensors bypass L1 (``.cg``). This is cooperative groups' grid sync, and
like it, it deadlocks unless every program of the grid is resident at once: :func:`plan_persistent` sizes the
grid to at most one program per SM, and :func:`coresidency_reason` refuses other grids. As a last guard the
spin is bounded (``max_spins``); a program that gives up raises a flag that the launch helpers check, and stops
waiting at later barriers, so a broken grid ends with an error instead of a hang. With one program per batch
tile the barrier never waits, which is how the interpreter (programs run one after another) tests the math.

Gate modes (``MODE``): 0 tied without aux gate (``--``, ``C-``, ``U-``; blocks f, u, o), 1 refine (``-R``,
``CR``, ``UR``; f, r, u, o), 2 classic LSTM (i, f, g, o). Accumulation, gate math and the cell state in fp32;
``h`` and ``dz`` are stored in the compute dtype (fp16, bf16 or fp32) because they feed the next GEMM.

Launch-helper contract (pure tensors, no autograd):
- :func:`persistent_forward` ``(xproj (T,B,G*H), w_hh, h0, c0, spec) -> (hs (T+1,B,H), cs (T+1,B,H) fp32 or
  None, zs (T,B,G*H) or None, c_T)``: ``hs[0] = h0``, ``hs[1:]`` is the output; ``cs``/``zs`` only with
  ``save=True`` (what backward needs).
- :func:`persistent_backward` ``(d_out, d_h_T, d_c_T, zs, cs, w_hh, spec) -> (dzs (T,B,G*H), dh0, dc0)``;
  ``dU = dzs^T hs[:-1]``, ``dW = dzs^T x``, ``db = sum dzs`` are large GEMMs outside, as on the step path.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

# A spin iteration is one L2 round trip (~1 us); a legitimate wait is a few us. 2**24 spins (seconds) only
# trips when a program of the grid is not running at all.
DEFAULT_MAX_SPINS = 1 << 24
# tl.dot needs every dimension >= 16.
MIN_BLOCK = 16
# Largest batch tile per program: the (BLOCK_B, K) operand of h (or dz) is loaded every step.
MAX_BLOCK_B = 64


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def gate_mode(spec) -> int:
    """Kernel ``MODE`` for a :class:`~urlstm_triton.gates.GateSpec` (0 tied, 1 refine, 2 classic)."""
    if spec.classic:
        return 2
    if not spec.elementwise:
        raise ValueError(
            f"gate {spec.code!r} uses cumax over hidden units: the persistent kernels fuse only elementwise gates"
        )
    return 1 if spec.aux == "R" else 0


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # no libdevice in the interpreter: tanh(x) = 2 sigmoid(2x) - 1 (absolute error ~1e-7 in fp32)
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _cell_forward(z0, z1, z2, z3, c_prev, MODE: tl.constexpr):
    """(h_t, c_t) from the pre-activations of one unit tile; z3 unused in MODE 0 (f, u, o)."""
    if MODE == 2:  # classic: i, f, g, o
        c = _sigmoid(z1) * c_prev + _sigmoid(z0) * _tanh(z2)
        o = _sigmoid(z3)
    else:
        f = _sigmoid(z0)
        if MODE == 1:  # refine: f, r, u, o;  g = f^2 + 2 r f (1 - f)
            g = f * f + 2.0 * _sigmoid(z1) * f * (1.0 - f)
            u = _tanh(z2)
            o = _sigmoid(z3)
        else:  # tied: f, u, o
            g = f
            u = _tanh(z1)
            o = _sigmoid(z2)
        c = g * c_prev + (1.0 - g) * u
    return o * _tanh(c), c


@triton.jit
def _cell_backward(z0, z1, z2, z3, c_prev, c, dh, dc, MODE: tl.constexpr):
    """(dz0..dz3, dc_{t-1}) of one unit tile given dL/dh_t (all paths) and dL/dc_t (from step t+1)."""
    tc = _tanh(c)
    if MODE == 2:
        i = _sigmoid(z0)
        f = _sigmoid(z1)
        gg = _tanh(z2)
        o = _sigmoid(z3)
        d3 = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        d0 = dc * gg * i * (1.0 - i)
        d1 = dc * c_prev * f * (1.0 - f)
        d2 = dc * i * (1.0 - gg * gg)
        dc_prev = dc * f
    else:
        f = _sigmoid(z0)
        if MODE == 1:
            r = _sigmoid(z1)
            u = _tanh(z2)
            o = _sigmoid(z3)
            g = f * f + 2.0 * r * f * (1.0 - f)
        else:
            u = _tanh(z1)
            o = _sigmoid(z2)
            g = f
        d_o = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc)
        dg = dc * (c_prev - u)
        d_u = dc * (1.0 - g) * (1.0 - u * u)
        if MODE == 1:
            d0 = dg * (2.0 * r + 2.0 * (1.0 - 2.0 * r) * f) * f * (1.0 - f)
            d1 = dg * 2.0 * f * (1.0 - f) * r * (1.0 - r)
            d2 = d_u
            d3 = d_o
        else:
            d0 = dg * f * (1.0 - f)
            d1 = d_u
            d2 = d_o
            d3 = d_o * 0.0
        dc_prev = dc * g
    return d0, d1, d2, d3, dc_prev


@triton.jit
def _grid_barrier(sync_ptr, err_ptr, target, spin_limit):
    """Wait until the counter at ``sync_ptr`` reaches ``target`` (see module docstring); returns the spin
    limit for the next barrier: 0 once this one gave up (flag raised), so a broken grid cannot hang."""
    tl.debug_barrier()  # every thread of this program has issued its stores of this step
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < spin_limit):
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    timed_out = seen < target
    tl.atomic_max(err_ptr, timed_out.to(tl.int32), sem="relaxed", scope="gpu")
    tl.debug_barrier()  # no thread reads the exchanged tensor before the acquire above
    return tl.where(timed_out, 0, spin_limit)


@triton.jit
def _load_u_tile(u_ptr, row0, rows, rmask, cols, cmask, H):
    """Tile ``U[row0 + rows, cols]`` of the (G*H, H) weight with ``rows`` along dim 0: a (len(rows),
    len(cols)) dot operand. Forward passes rows = k (inputs), cols = own units, i.e. the transposed slice."""
    return tl.load(u_ptr + (row0 + rows[:, None]).to(tl.int64) * H + cols[None, :],
                   mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _persistent_fwd_kernel(
    xp_ptr, u_ptr, h_ptr, c0_ptr, cs_ptr, z_ptr, cT_ptr, sync_ptr, err_ptr,
    T, B, H, max_spins,
    MODE: tl.constexpr, G: tl.constexpr, SAVE: tl.constexpr, U_ON_CHIP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    bmask = rows < B
    umask = units < H
    mask = bmask[:, None] & umask[None, :]
    GH = G * H
    off_bh = rows[:, None] * H + units[None, :]      # into a (B, H) slab
    off_bg = rows[:, None] * GH + units[None, :]     # into a (B, G*H) slab, gate block 0
    step_bh = B * H
    step_bg = B * GH
    sync = sync_ptr + pid_b
    spin_limit = max_spins
    wdt = h_ptr.dtype.element_ty

    if U_ON_CHIP:
        # this program's slice of U, loaded once: tile g is U[g*H + units, :]^T, (BLOCK_K >= H, BLOCK_H)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < H
        # rows of the transposed tile are inputs k; its columns are the weight rows g*H + units
        u0 = tl.load(u_ptr + (0 * H + units[None, :]).to(tl.int64) * H + ks[:, None],
                     mask=kmask[:, None] & umask[None, :], other=0.0)
        u1 = tl.load(u_ptr + (1 * H + units[None, :]).to(tl.int64) * H + ks[:, None],
                     mask=kmask[:, None] & umask[None, :], other=0.0)
        u2 = tl.load(u_ptr + (2 * H + units[None, :]).to(tl.int64) * H + ks[:, None],
                     mask=kmask[:, None] & umask[None, :], other=0.0)
        if G == 4:
            u3 = tl.load(u_ptr + (3 * H + units[None, :]).to(tl.int64) * H + ks[:, None],
                         mask=kmask[:, None] & umask[None, :], other=0.0)
        else:
            u3 = u0

    c = tl.load(c0_ptr + off_bh, mask=mask, other=0.0).to(tl.float32)
    # running pointers to step t's slabs (64-bit pointer arithmetic: T*B*G*H may exceed 2**31)
    h_prev_ptr = h_ptr          # hs[t] = h_{t-1}
    xp_t = xp_ptr + off_bg
    z_t = z_ptr + off_bg
    c_t = cs_ptr + off_bh
    for t in range(T):
        acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        if U_ON_CHIP:
            hp = tl.load(h_prev_ptr + rows[:, None] * H + ks[None, :], mask=bmask[:, None] & kmask[None, :],
                         other=0.0, cache_modifier=".cg")
            acc0 = tl.dot(hp, u0, acc0, input_precision=DOT_PRECISION)
            acc1 = tl.dot(hp, u1, acc1, input_precision=DOT_PRECISION)
            acc2 = tl.dot(hp, u2, acc2, input_precision=DOT_PRECISION)
            if G == 4:
                acc3 = tl.dot(hp, u3, acc3, input_precision=DOT_PRECISION)
        else:
            for k0 in range(0, H, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                km = kk < H
                hp = tl.load(h_prev_ptr + rows[:, None] * H + kk[None, :], mask=bmask[:, None] & km[None, :],
                             other=0.0, cache_modifier=".cg")
                tmask = km[:, None] & umask[None, :]
                acc0 = tl.dot(hp, tl.load(u_ptr + (0 * H + units[None, :]).to(tl.int64) * H + kk[:, None],
                                          mask=tmask, other=0.0), acc0, input_precision=DOT_PRECISION)
                acc1 = tl.dot(hp, tl.load(u_ptr + (1 * H + units[None, :]).to(tl.int64) * H + kk[:, None],
                                          mask=tmask, other=0.0), acc1, input_precision=DOT_PRECISION)
                acc2 = tl.dot(hp, tl.load(u_ptr + (2 * H + units[None, :]).to(tl.int64) * H + kk[:, None],
                                          mask=tmask, other=0.0), acc2, input_precision=DOT_PRECISION)
                if G == 4:
                    acc3 = tl.dot(hp, tl.load(u_ptr + (3 * H + units[None, :]).to(tl.int64) * H + kk[:, None],
                                              mask=tmask, other=0.0), acc3, input_precision=DOT_PRECISION)
        z0 = acc0 + tl.load(xp_t, mask=mask, other=0.0).to(tl.float32)
        z1 = acc1 + tl.load(xp_t + H, mask=mask, other=0.0).to(tl.float32)
        z2 = acc2 + tl.load(xp_t + 2 * H, mask=mask, other=0.0).to(tl.float32)
        if G == 4:
            z3 = acc3 + tl.load(xp_t + 3 * H, mask=mask, other=0.0).to(tl.float32)
        else:
            z3 = acc3
        h, c = _cell_forward(z0, z1, z2, z3, c, MODE)
        h_prev_ptr += step_bh
        c_t += step_bh
        tl.store(h_prev_ptr + off_bh, h.to(wdt), mask=mask)
        if SAVE:
            tl.store(c_t, c, mask=mask)
            zdt = z_ptr.dtype.element_ty
            tl.store(z_t, z0.to(zdt), mask=mask)
            tl.store(z_t + H, z1.to(zdt), mask=mask)
            tl.store(z_t + 2 * H, z2.to(zdt), mask=mask)
            if G == 4:
                tl.store(z_t + 3 * H, z3.to(zdt), mask=mask)
        xp_t += step_bg
        z_t += step_bg
        if t + 1 < T:  # h_t is read by every program of this batch tile at step t + 1
            spin_limit = _grid_barrier(sync, err_ptr, (t + 1) * n_h, spin_limit)
    tl.store(cT_ptr + off_bh, c, mask=mask)


@triton.jit
def _persistent_bwd_kernel(
    dout_last_ptr, dhT_ptr, dcT_ptr, z_last_ptr, cs_last_ptr, u_ptr, dz_last_ptr, dh0_ptr, dc0_ptr, sync_ptr, err_ptr,
    T, B, H, max_spins,
    MODE: tl.constexpr, G: tl.constexpr, U_ON_CHIP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    bmask = rows < B
    umask = units < H
    mask = bmask[:, None] & umask[None, :]
    GH = G * H
    off_bh = rows[:, None] * H + units[None, :]
    off_bg = rows[:, None] * GH + units[None, :]
    step_bh = B * H
    step_bg = B * GH
    sync = sync_ptr + pid_b
    spin_limit = max_spins
    ddt = dz_last_ptr.dtype.element_ty

    if U_ON_CHIP:
        # the U^T slice, loaded once: tile g is U[g*H + k, units], (BLOCK_K >= H, BLOCK_H)
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < H
        w0 = _load_u_tile(u_ptr, 0 * H, ks, kmask, units, umask, H)
        w1 = _load_u_tile(u_ptr, 1 * H, ks, kmask, units, umask, H)
        w2 = _load_u_tile(u_ptr, 2 * H, ks, kmask, units, umask, H)
        if G == 4:
            w3 = _load_u_tile(u_ptr, 3 * H, ks, kmask, units, umask, H)
        else:
            w3 = w0

    dh = tl.load(dhT_ptr + off_bh, mask=mask, other=0.0).to(tl.float32)
    dc = tl.load(dcT_ptr + off_bh, mask=mask, other=0.0).to(tl.float32)
    # running pointers to step t's slabs, walking backwards from t = T - 1 (the host passes the last slabs;
    # 64-bit pointer arithmetic since T*B*G*H may exceed 2**31)
    c_t = cs_last_ptr + off_bh
    dout_t = dout_last_ptr + off_bh
    z_t = z_last_ptr + off_bg
    dz_t = dz_last_ptr
    c = tl.load(c_t, mask=mask, other=0.0)
    for i in range(T):
        dh += tl.load(dout_t, mask=mask, other=0.0).to(tl.float32)
        c_t -= step_bh
        c_prev = tl.load(c_t, mask=mask, other=0.0)
        z0 = tl.load(z_t, mask=mask, other=0.0).to(tl.float32)
        z1 = tl.load(z_t + H, mask=mask, other=0.0).to(tl.float32)
        z2 = tl.load(z_t + 2 * H, mask=mask, other=0.0).to(tl.float32)
        if G == 4:
            z3 = tl.load(z_t + 3 * H, mask=mask, other=0.0).to(tl.float32)
        else:
            z3 = z2
        d0, d1, d2, d3, dc = _cell_backward(z0, z1, z2, z3, c_prev, c, dh, dc, MODE)
        tl.store(dz_t + off_bg, d0.to(ddt), mask=mask)
        tl.store(dz_t + off_bg + H, d1.to(ddt), mask=mask)
        tl.store(dz_t + off_bg + 2 * H, d2.to(ddt), mask=mask)
        if G == 4:
            tl.store(dz_t + off_bg + 3 * H, d3.to(ddt), mask=mask)
        # dh_{t-1}[:, units] = sum_g dz_t[:, g*H + k] U[g*H + k, units] needs every unit's dz_t
        spin_limit = _grid_barrier(sync, err_ptr, (i + 1) * n_h, spin_limit)
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        if U_ON_CHIP:
            dz_rows = dz_t + rows[:, None] * GH + ks[None, :]
            dmask = bmask[:, None] & kmask[None, :]
            acc = tl.dot(tl.load(dz_rows, mask=dmask, other=0.0, cache_modifier=".cg"), w0, acc,
                         input_precision=DOT_PRECISION)
            acc = tl.dot(tl.load(dz_rows + H, mask=dmask, other=0.0, cache_modifier=".cg"), w1, acc,
                         input_precision=DOT_PRECISION)
            acc = tl.dot(tl.load(dz_rows + 2 * H, mask=dmask, other=0.0, cache_modifier=".cg"), w2, acc,
                         input_precision=DOT_PRECISION)
            if G == 4:
                acc = tl.dot(tl.load(dz_rows + 3 * H, mask=dmask, other=0.0, cache_modifier=".cg"), w3, acc,
                             input_precision=DOT_PRECISION)
        else:
            for gk in range(0, G):
                for k0 in range(0, H, BLOCK_K):
                    kk = k0 + tl.arange(0, BLOCK_K)
                    km = kk < H
                    dzk = tl.load(dz_t + rows[:, None] * GH + gk * H + kk[None, :],
                                  mask=bmask[:, None] & km[None, :], other=0.0, cache_modifier=".cg")
                    acc = tl.dot(dzk, _load_u_tile(u_ptr, gk * H, kk, km, units, umask, H), acc,
                                 input_precision=DOT_PRECISION)
        dh = acc
        c = c_prev
        dout_t -= step_bh
        z_t -= step_bg
        dz_t -= step_bg
    tl.store(dh0_ptr + off_bh, dh, mask=mask)
    tl.store(dc0_ptr + off_bh, dc, mask=mask)


# ------------------------------------------------------------------------------------ planning / residency


@dataclass(frozen=True)
class DeviceLimits:
    """What co-residency depends on; from ``torch.cuda.get_device_properties`` or made up in tests."""

    sm_count: int
    smem_per_block: int  # bytes a program may use (opt-in maximum)
    regs_per_sm: int = 65536

    @classmethod
    def of(cls, device) -> "DeviceLimits":
        props = torch.cuda.get_device_properties(device)
        smem = (getattr(props, "shared_memory_per_block_optin", 0)
                or getattr(props, "shared_memory_per_block", 0) or 48 * 1024)
        regs = getattr(props, "regs_per_multiprocessor", 0) or 65536
        return cls(sm_count=int(props.multi_processor_count), smem_per_block=int(smem), regs_per_sm=int(regs))

    @property
    def onchip_budget(self) -> int:
        """Bytes of operands one program may keep on chip: the smaller of the opt-in shared memory and the
        register file (one program per SM), less a quarter for the compiler's own scratch (layout
        conversions, accumulators)."""
        return (min(self.smem_per_block, 4 * self.regs_per_sm) * 3) // 4


# The interpreter has no SMs; it runs any grid one program after another (so only one program per batch
# tile may meet a barrier there).
INTERPRETER_LIMITS = DeviceLimits(sm_count=1, smem_per_block=1 << 30, regs_per_sm=1 << 30)


@dataclass(frozen=True)
class PersistentPlan:
    """Tiling of one persistent launch; ``n_h * n_b`` programs."""

    block_b: int
    block_h: int
    block_k: int
    n_b: int
    n_h: int
    u_on_chip: bool
    onchip_bytes: int  # estimate per program: U slice (if on chip) + the per-step h/dz operand tile
    num_warps: int = 4

    @property
    def num_programs(self) -> int:
        return self.n_b * self.n_h


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _onchip_bytes(num_gates, hidden, block_b, block_h, block_k, elem, u_on_chip) -> int:
    k = _pow2(hidden) if u_on_chip else block_k
    u = num_gates * k * block_h * elem if u_on_chip else 0
    return u + block_b * k * elem + (num_gates + 3) * block_b * block_h * 4


def plan_persistent(
    batch: int,
    hidden: int,
    num_gates: int,
    dtype: torch.dtype,
    limits: DeviceLimits,
    *,
    block_h: Optional[int] = None,
    block_b: Optional[int] = None,
    u_on_chip: Optional[bool] = None,
    block_k: int = 64,
    num_warps: int = 4,
) -> PersistentPlan:
    """Choose the tiling for ``(batch, hidden)``; it may still be refused by :func:`coresidency_reason`.

    ``block_b``: ``batch`` rounded up to a power of two (>= 16, <= ``MAX_BLOCK_B``). ``block_h``: the smallest
    power of two >= 16 that keeps ``n_h * n_b`` within one program per SM. ``u_on_chip``: True when the U slice
    plus the per-step operand tile fit :attr:`DeviceLimits.onchip_budget`, else the slice is streamed.
    """
    if batch < 1 or hidden < 1:
        raise ValueError(f"batch and hidden must be >= 1, got batch={batch}, hidden={hidden}")
    elem = torch.empty((), dtype=dtype).element_size()
    bb = block_b or min(max(MIN_BLOCK, _pow2(batch)), MAX_BLOCK_B)
    n_b = triton.cdiv(batch, bb)
    h_pad = max(MIN_BLOCK, _pow2(hidden))
    if block_h is None:
        bh = MIN_BLOCK
        while bh < h_pad and n_b * triton.cdiv(hidden, bh) > limits.sm_count:
            bh *= 2
    else:
        bh = block_h
    for name, v in (("block_b", bb), ("block_h", bh), ("block_k", block_k)):
        if v < MIN_BLOCK or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK} (tl.dot), got {v}")
    bk = min(block_k, h_pad)
    if u_on_chip is None:
        u_on_chip = _onchip_bytes(num_gates, hidden, bb, bh, bk, elem, True) <= limits.onchip_budget
    return PersistentPlan(
        block_b=bb, block_h=bh, block_k=h_pad if u_on_chip else bk, n_b=n_b, n_h=triton.cdiv(hidden, bh),
        u_on_chip=bool(u_on_chip), onchip_bytes=_onchip_bytes(num_gates, hidden, bb, bh, bk, elem, u_on_chip),
        num_warps=num_warps,
    )


def coresidency_reason(plan: PersistentPlan, limits: DeviceLimits) -> str:
    """Why ``plan``'s grid may not be resident all at once on a device with ``limits`` ('' when it is).

    Conservative rule: at most one program per SM (``n_h * n_b <= sm_count``), and a program whose U slice is
    kept on chip must fit the on-chip budget (else the compiler spills it, or the launch fails).
    """
    if plan.num_programs > limits.sm_count:
        return (f"the persistent grid needs {plan.num_programs} co-resident programs ({plan.n_h} hidden tiles of "
                f"{plan.block_h} x {plan.n_b} batch tiles of {plan.block_b}) but the device has "
                f"{limits.sm_count} SMs (one program per SM)")
    if plan.u_on_chip and plan.onchip_bytes > limits.onchip_budget:
        return (f"a program would keep {plan.onchip_bytes} bytes of U and operands on chip, more than the budget "
                f"of {limits.onchip_budget} bytes per SM")
    return ""


def device_limits(device: torch.device) -> DeviceLimits:
    if _interpreting() or device.type != "cuda":
        return INTERPRETER_LIMITS
    return DeviceLimits.of(device)


def _checked_plan(batch, hidden, num_gates, dtype, device, opts) -> PersistentPlan:
    limits = device_limits(device)
    plan = plan_persistent(batch, hidden, num_gates, dtype, limits, **opts)
    reason = coresidency_reason(plan, limits)
    if reason:
        raise RuntimeError(f"persistent kernel refused (it would deadlock): {reason}; use the step kernels")
    return plan


# -------------------------------------------------------------------------------------- launch helpers


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 must stay fp32 (tf32 would miss the 1e-4 target); half types ignore it
    return "ieee" if dtype == torch.float32 else "tf32"


def _check_timeout(err: Tensor, check: str, what: str) -> None:
    msg = (f"persistent {what} kernel: a grid barrier timed out (programs not co-resident, or the GPU is shared "
           "with other work); results are invalid. Use kernel='step'.")
    if check == "off":
        return
    if check == "sync" or err.device.type != "cuda":
        if int(err.item()):
            raise RuntimeError(msg)
    else:  # "async": no host sync; a timeout surfaces as a device-side assert at the next sync
        torch._assert_async(err == 0, msg)


def _check_inputs(xproj, w_hh, h0, c0, num_gates):
    if xproj.dim() != 3:
        raise ValueError(f"xproj must be (T, B, G*H), got shape {tuple(xproj.shape)}")
    T, B, GH = xproj.shape
    H = w_hh.shape[1]
    if w_hh.shape != (num_gates * H, H) or GH != num_gates * H:
        raise ValueError(f"w_hh must be ({num_gates}*H, H) matching xproj's last dim {GH}, got {tuple(w_hh.shape)}")
    for name, t in (("h0", h0), ("c0", c0)):
        if t.shape != (B, H):
            raise ValueError(f"{name} must be (B, H) = ({B}, {H}), got {tuple(t.shape)}")
    if xproj.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"xproj must be float16, bfloat16 or float32, got {xproj.dtype}")
    return T, B, H


def persistent_forward(
    xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, spec, *, save: bool = True,
    z_dtype: Optional[torch.dtype] = None, max_spins: int = DEFAULT_MAX_SPINS, check: str = "async", **plan_opts,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Tensor]:
    """Run the recurrence over all steps of ``xproj = W x + b`` (``T, B, G*H``) in one launch.

    Returns ``(hs, cs, zs, c_T)``: ``hs`` (``T+1, B, H``, compute dtype; ``hs[0] = h0``, ``hs[1:]`` the output),
    ``cs`` (``T+1, B, H`` float32, ``cs[0] = c0``) and ``zs`` (pre-activations, ``T, B, G*H`` in ``z_dtype``,
    default the compute dtype) only when ``save``, and ``c_T`` (``B, H`` float32). ``plan_opts`` go to
    :func:`plan_persistent` (``block_h``, ``block_b``, ``u_on_chip``, ``block_k``, ``num_warps``). Raises
    ``RuntimeError`` when the grid would not be co-resident.
    """
    G = spec.num_gates
    T, B, H = _check_inputs(xproj, w_hh, h0, c0, G)
    dtype, dev = xproj.dtype, xproj.device
    num_warps = plan_opts.pop("num_warps", 4)
    plan = _checked_plan(B, H, G, dtype, dev, dict(plan_opts, num_warps=num_warps))
    xproj = xproj.contiguous()
    u = w_hh.to(dtype).contiguous()
    hs = xproj.new_empty(T + 1, B, H)
    hs[0] = h0
    c0f = c0.to(torch.float32).contiguous()
    c_T = torch.empty(B, H, dtype=torch.float32, device=dev)
    if save:
        cs = torch.empty(T + 1, B, H, dtype=torch.float32, device=dev)
        cs[0] = c0f
        zs = torch.empty(T, B, G * H, dtype=z_dtype or dtype, device=dev)
    else:
        cs = zs = None
    if T == 0:
        c_T.copy_(c0f)
        return hs, cs, zs, c_T
    sync = torch.zeros(plan.n_b, dtype=torch.int32, device=dev)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    _persistent_fwd_kernel[(plan.n_h, plan.n_b)](
        xproj, u, hs, c0f, cs if save else c_T, zs if save else c_T, c_T, sync, err,
        T, B, H, max_spins,
        MODE=gate_mode(spec), G=G, SAVE=save, U_ON_CHIP=plan.u_on_chip,
        BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, DOT_PRECISION=_dot_precision(dtype),
        num_warps=plan.num_warps, num_stages=1,  # no software pipelining across the grid barrier
    )
    _check_timeout(err, check, "forward")
    return hs, cs, zs, c_T


def persistent_backward(
    d_out: Tensor, d_h_T: Optional[Tensor], d_c_T: Optional[Tensor], zs: Tensor, cs: Tensor, w_hh: Tensor, spec,
    *, dz_dtype: Optional[torch.dtype] = None, max_spins: int = DEFAULT_MAX_SPINS, check: str = "async",
    **plan_opts,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The reverse recurrence over all steps in one launch, from :func:`persistent_forward`'s ``zs``/``cs``.

    ``d_out`` (``T, B, H``): gradient of the output; ``d_h_T``/``d_c_T`` (``B, H``, or None for zero).
    Returns ``(dzs (T, B, G*H) in dz_dtype (default zs's), dh0 (B, H) float32, dc0 (B, H) float32)``.
    """
    G = spec.num_gates
    T, B, GH = zs.shape
    H = GH // G
    dev = zs.device
    dtype = dz_dtype or zs.dtype
    if d_out.shape != (T, B, H) or cs.shape != (T + 1, B, H) or w_hh.shape != (GH, H):
        raise ValueError(f"inconsistent shapes: d_out {tuple(d_out.shape)}, cs {tuple(cs.shape)}, "
                         f"w_hh {tuple(w_hh.shape)} for zs {tuple(zs.shape)}")
    num_warps = plan_opts.pop("num_warps", 4)
    plan = _checked_plan(B, H, G, dtype, dev, dict(plan_opts, num_warps=num_warps))
    f32 = dict(dtype=torch.float32, device=dev)
    d_h_T = torch.zeros(B, H, **f32) if d_h_T is None else d_h_T.to(torch.float32).contiguous()
    d_c_T = torch.zeros(B, H, **f32) if d_c_T is None else d_c_T.to(torch.float32).contiguous()
    dzs = torch.empty(T, B, GH, dtype=dtype, device=dev)
    if T == 0:
        return dzs, d_h_T.clone(), d_c_T.clone()
    dh0 = torch.empty(B, H, **f32)
    dc0 = torch.empty(B, H, **f32)
    sync = torch.zeros(plan.n_b, dtype=torch.int32, device=dev)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    _persistent_bwd_kernel[(plan.n_h, plan.n_b)](
        d_out.contiguous()[T - 1], d_h_T, d_c_T, zs.contiguous()[T - 1], cs.contiguous()[T],
        w_hh.to(dtype).contiguous(), dzs[T - 1], dh0, dc0, sync, err,
        T, B, H, max_spins,
        MODE=gate_mode(spec), G=G, U_ON_CHIP=plan.u_on_chip,
        BLOCK_B=plan.block_b, BLOCK_H=plan.block_h, BLOCK_K=plan.block_k, DOT_PRECISION=_dot_precision(dtype),
        num_warps=plan.num_warps, num_stages=1,
    )
    _check_timeout(err, check, "backward")
    return dzs, dh0, dc0
