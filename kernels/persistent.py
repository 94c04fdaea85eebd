"""Persistent Triton kernels for the recurrence: one launch runs every step of a chunk (small batch, long T).

The step kernels (``recurrence_fwd``/``recurrence_bwd``) pay one launch per time step; with a small batch each
step is a tiny GEMM and the launch is the cost. Here one launch loops over all K steps of the chunk. The grid
is ``(n_h, n_b)``: program ``(i, j)`` owns hidden units ``[i*BLOCK_H, (i+1)*BLOCK_H)`` (all gate blocks of those
units, so the gate math is the GEMM's epilogue) of batch rows ``[j*BLOCK_B, (j+1)*BLOCK_B)``. The programs of
one batch tile exchange ``h_t`` (forward) or ``dz_t`` (backward) through global memory and meet at a
grid-wide barrier once per step; batch tiles are independent and each has its own barrier counter.

On chip:
- ``U_ON_CHIP=True``: a program loads its slice of ``U`` once, before the time loop, as ``G`` tiles of
  ``(H, BLOCK_H)`` that stay live across the loop: forward holds ``U[g*H + units, :]^T``, backward the
  ``U^T`` slice ``U[g*H + :, units]``. Compiled for sm_90 (triton 3.6 and 3.9) the tiles are written to shared
  memory once before the loop and read from there every step; each step then reads only the ``(BLOCK_B, H)``
  operand (``h_{t-1}``, or ``dz_t`` per gate block) from L2.
- ``U_ON_CHIP=False``: the tiles do not fit one program's shared memory (:func:`plan_persistent`); the
  kernel streams the slice in ``BLOCK_K`` chunks every step instead (same math; all slices together are
  ``G*H*H`` elements, L2-resident on current GPUs for the sizes this path is chosen for).

Grid barrier (:func:`_grid_barrier`): a monotone int32 counter per batch tile. After its stores of step ``t``
a program syncs its own threads (``tl.debug_barrier``, i.e. bar.sync), adds 1 with release semantics at GPU
scope, spins on acquire reads (an atomic add of 0) until the counter reaches ``(t + 1) * n_h``, and syncs its
threads again. The exchanged tensors are loaded with ``.cg`` (bypassing L1), and the kernels are compiled
with ``num_stages=1`` so no load is software-pipelined across the barrier. This is cooperative groups' grid
sync and, like it, it deadlocks unless every program of the grid is resident at once: :func:`plan_persistent`
sizes the grid to at most one program per SM and :func:`coresidency_reason` refuses other grids. As a last
guard the spin is bounded (``max_spins``): a program that gives up raises a flag, which the launch helpers
check, and stops waiting at later barriers, so a broken grid ends in an error instead of a hang. A grid with
one hidden tile (``n_h = 1``) never waits, which is how Triton's interpreter (programs run one after another)
tests the math on a CPU.

The launch helpers :func:`forward_sequence` and :func:`backward_sequence` follow the launch-helper contract
of ``urlstm_triton.kernels`` (``kernels/__init__.py``) exactly, so the autograd Functions of the Triton
backend run either family; :func:`suits` is the ``kernel="auto"`` dispatch rule (see its docstring).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl
import triton.runtime.errors
from torch import Tensor

from .common import MODE_CLASSIC, MODE_REFINE, MODE_TIED, cell_backward, cell_forward, interpreting, num_gates

# A spin iteration is one L2 round trip (~1 us) and a legitimate wait a few us: 2**24 spins (seconds) only
# run out when a program of the grid is not running at all.
DEFAULT_MAX_SPINS = 1 << 24
MIN_BLOCK = 16      # tl.dot needs every dimension >= 16
MAX_BLOCK_B = 64    # batch rows per program: the (BLOCK_B, K) operand of h (or dz) is loaded every step

# ---- the kernel="auto" dispatch rule (see :func:`suits`); to be re-tuned from scripts/bench_kernels.py ----
# The grid barrier's memory ordering can only be proven on hardware, and a bug there gives wrong numbers, not an
# error: where this rule says the kernels suit a problem, the backend (triton_backend.choose_kernel) still takes
# them only on a device where their self-check against the float64 oracle has passed (urlstm_triton.selfcheck).
AUTO_MAX_BATCH = 64  # above this, one step's GEMM has enough rows to amortise a launch: step kernels
AUTO_MIN_STEPS = 8   # below this (generation, short calls) the step kernels' single launch per step is cheaper


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _grid_barrier(sync_ptr, err_ptr, target, spin_limit):
    """Wait until the counter at ``sync_ptr`` reaches ``target`` (module docstring). Returns the spin limit
    for the next barrier: 0 once this one gave up (flag raised), so a broken grid cannot hang."""
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
def _w_tile(w_ptr, row0, rk, mk, units, mu, H):
    """``U[row0 + rk, units]`` of the (G*H, H) weight as a (len(rk), len(units)) dot operand."""
    return tl.load(w_ptr + (row0 + rk[:, None]).to(tl.int64) * H + units[None, :],
                   mask=mk[:, None] & mu[None, :], other=0.0)


@triton.jit
def _wt_tile(w_ptr, row0, rk, mk, units, mu, H):
    """``U[row0 + units, rk]^T``: the forward's operand, (len(rk), len(units))."""
    return tl.load(w_ptr + (row0 + units[None, :]).to(tl.int64) * H + rk[:, None],
                   mask=mk[:, None] & mu[None, :], other=0.0)


@triton.jit
def _dz_times_u(dz_ptr, w_ptr, w0, w1, w2, w3, rows, mb, units, mu, H,
                G: tl.constexpr, U_ON_CHIP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """``(dz @ U)[rows, units]`` for a (B, G*H) slab ``dz`` (fp32): the dh that step t-1 receives."""
    GH = G * H
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if U_ON_CHIP:
        rk = tl.arange(0, BLOCK_K)
        m = mb[:, None] & (rk < H)[None, :]
        p = dz_ptr + rows[:, None] * GH + rk[None, :]
        acc = tl.dot(tl.load(p, mask=m, other=0.0, cache_modifier=".cg"), w0, acc, input_precision=PRECISION)
        acc = tl.dot(tl.load(p + H, mask=m, other=0.0, cache_modifier=".cg"), w1, acc, input_precision=PRECISION)
        acc = tl.dot(tl.load(p + 2 * H, mask=m, other=0.0, cache_modifier=".cg"), w2, acc,
                     input_precision=PRECISION)
        if G == 4:
            acc = tl.dot(tl.load(p + 3 * H, mask=m, other=0.0, cache_modifier=".cg"), w3, acc,
                         input_precision=PRECISION)
    else:
        for q in range(0, G):
            for k0 in range(0, H, BLOCK_K):
                rk = k0 + tl.arange(0, BLOCK_K)
                mk = rk < H
                dz = tl.load(dz_ptr + rows[:, None] * GH + (q * H + rk)[None, :], mask=mb[:, None] & mk[None, :],
                             other=0.0, cache_modifier=".cg")
                acc = tl.dot(dz, _w_tile(w_ptr, q * H, rk, mk, units, mu, H), acc, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["max_spins"])
def _persistent_fwd_kernel(
    xp_ptr, w_ptr, hs_ptr, cs_ptr, gates_ptr, sync_ptr, err_ptr,
    K, B, H, max_spins,
    MODE: tl.constexpr, SAVE_GATES: tl.constexpr, U_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 3 if MODE == 0 else 4
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rows < B
    mu = units < H
    m2 = mb[:, None] & mu[None, :]
    GH = G * H
    off_h = rows[:, None] * H + units[None, :]   # (b, j) in a (B, H) slab
    off_g = rows[:, None] * GH + units[None, :]  # (b, j) of gate block 0 in a (B, G*H) slab
    step_h = B * H
    step_g = B * GH
    sync = sync_ptr + pid_b
    spin_limit = max_spins

    if U_ON_CHIP:  # this program's slice of U, loaded once and kept live across the time loop
        rk = tl.arange(0, BLOCK_K)  # BLOCK_K >= H
        mk = rk < H
        w0 = _wt_tile(w_ptr, 0 * H, rk, mk, units, mu, H)
        w1 = _wt_tile(w_ptr, 1 * H, rk, mk, units, mu, H)
        w2 = _wt_tile(w_ptr, 2 * H, rk, mk, units, mu, H)
        if G == 4:
            w3 = _wt_tile(w_ptr, 3 * H, rk, mk, units, mu, H)
        else:
            w3 = w0

    # running pointers to step t's slabs (64-bit pointer arithmetic: K*B*G*H may exceed 2**31)
    h_prev = hs_ptr  # hs[t] = h_{t-1}
    c_t = cs_ptr + off_h
    xp_t = xp_ptr + off_g
    g_t = gates_ptr + off_g
    c = tl.load(c_t, mask=m2, other=0.0)
    for t in range(K):
        acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        if U_ON_CHIP:
            hp = tl.load(h_prev + rows[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0,
                         cache_modifier=".cg")
            acc0 = tl.dot(hp, w0, acc0, input_precision=PRECISION)
            acc1 = tl.dot(hp, w1, acc1, input_precision=PRECISION)
            acc2 = tl.dot(hp, w2, acc2, input_precision=PRECISION)
            if G == 4:
                acc3 = tl.dot(hp, w3, acc3, input_precision=PRECISION)
        else:
            for k0 in range(0, H, BLOCK_K):
                rkk = k0 + tl.arange(0, BLOCK_K)
                mkk = rkk < H
                hp = tl.load(h_prev + rows[:, None] * H + rkk[None, :], mask=mb[:, None] & mkk[None, :],
                             other=0.0, cache_modifier=".cg")
                acc0 = tl.dot(hp, _wt_tile(w_ptr, 0 * H, rkk, mkk, units, mu, H), acc0, input_precision=PRECISION)
                acc1 = tl.dot(hp, _wt_tile(w_ptr, 1 * H, rkk, mkk, units, mu, H), acc1, input_precision=PRECISION)
                acc2 = tl.dot(hp, _wt_tile(w_ptr, 2 * H, rkk, mkk, units, mu, H), acc2, input_precision=PRECISION)
                if G == 4:
                    acc3 = tl.dot(hp, _wt_tile(w_ptr, 3 * H, rkk, mkk, units, mu, H), acc3,
                                  input_precision=PRECISION)
        z0 = acc0 + tl.load(xp_t, mask=m2, other=0.0).to(tl.float32)
        z1 = acc1 + tl.load(xp_t + H, mask=m2, other=0.0).to(tl.float32)
        z2 = acc2 + tl.load(xp_t + 2 * H, mask=m2, other=0.0).to(tl.float32)
        if G == 4:
            z3 = acc3 + tl.load(xp_t + 3 * H, mask=m2, other=0.0).to(tl.float32)
        else:
            z3 = acc3
        h, c, a0, a1, a2, a3 = cell_forward(z0, z1, z2, z3, c, MODE)
        h_prev += step_h
        c_t += step_h
        tl.store(h_prev + off_h, h.to(hs_ptr.dtype.element_ty), mask=m2)
        tl.store(c_t, c, mask=m2)
        if SAVE_GATES:
            gty = gates_ptr.dtype.element_ty
            tl.store(g_t, a0.to(gty), mask=m2)
            tl.store(g_t + H, a1.to(gty), mask=m2)
            tl.store(g_t + 2 * H, a2.to(gty), mask=m2)
            if G == 4:
                tl.store(g_t + 3 * H, a3.to(gty), mask=m2)
        xp_t += step_g
        g_t += step_g
        if t + 1 < K:  # every program of this batch tile reads h_t at step t + 1
            spin_limit = _grid_barrier(sync, err_ptr, (t + 1) * n_h, spin_limit)


@triton.jit
def _load_bwd_step(dout_t, c_prev_t, g_t, m2, H, G: tl.constexpr):
    """One backward step's own inputs: d_out[t] (fp32), c_{t-1}, and the activated gates a0..a3 (a3 = a2
    when G = 3)."""
    d_o = tl.load(dout_t, mask=m2, other=0.0).to(tl.float32)
    c_prev = tl.load(c_prev_t, mask=m2, other=0.0)
    a0 = tl.load(g_t, mask=m2, other=0.0).to(tl.float32)
    a1 = tl.load(g_t + H, mask=m2, other=0.0).to(tl.float32)
    a2 = tl.load(g_t + 2 * H, mask=m2, other=0.0).to(tl.float32)
    if G == 4:
        a3 = tl.load(g_t + 3 * H, mask=m2, other=0.0).to(tl.float32)
    else:
        a3 = a2
    return d_o, c_prev, a0, a1, a2, a3


@triton.jit(do_not_specialize=["max_spins"])
def _persistent_bwd_kernel(
    dout_last_ptr, w_ptr, gates_last_ptr, cs_last_ptr, dz_last_ptr, dc_ptr, dzn_ptr, dh_in_ptr, sync_ptr, err_ptr,
    K, B, H, max_spins,
    MODE: tl.constexpr, HAS_NEXT: tl.constexpr, U_ON_CHIP: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 3 if MODE == 0 else 4
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rows < B
    mu = units < H
    m2 = mb[:, None] & mu[None, :]
    GH = G * H
    off_h = rows[:, None] * H + units[None, :]
    off_g = rows[:, None] * GH + units[None, :]
    step_h = B * H
    step_g = B * GH
    sync = sync_ptr + pid_b
    spin_limit = max_spins

    if U_ON_CHIP:  # the U^T slice U[g*H + :, units], loaded once
        rk = tl.arange(0, BLOCK_K)
        mk = rk < H
        w0 = _w_tile(w_ptr, 0 * H, rk, mk, units, mu, H)
        w1 = _w_tile(w_ptr, 1 * H, rk, mk, units, mu, H)
        w2 = _w_tile(w_ptr, 2 * H, rk, mk, units, mu, H)
        if G == 4:
            w3 = _w_tile(w_ptr, 3 * H, rk, mk, units, mu, H)
        else:
            w3 = w0
    else:  # streamed: placeholders, never read
        w0 = 0
        w1 = 0
        w2 = 0
        w3 = 0

    # dh of the chunk's last step from beyond the chunk: dz_next U (a later chunk) or d h_T
    if HAS_NEXT:
        dh = _dz_times_u(dzn_ptr, w_ptr, w0, w1, w2, w3, rows, mb, units, mu, H,
                         G, U_ON_CHIP, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
    else:
        dh = tl.load(dh_in_ptr + off_h, mask=m2, other=0.0)
    dc = tl.load(dc_ptr + off_h, mask=m2, other=0.0)
    # running pointers, walking back from the last step (the host passes the last slabs)
    c_t = cs_last_ptr + off_h
    dout_t = dout_last_ptr + off_h
    g_t = gates_last_ptr + off_g
    dz_t = dz_last_ptr
    c = tl.load(c_t, mask=m2, other=0.0)
    # this step's inputs; inside the loop the next (earlier) step's are loaded before the barrier, so their L2
    # latency overlaps the wait instead of following the dz_t U product on the critical path
    d_o, c_prev, a0, a1, a2, a3 = _load_bwd_step(dout_t, c_t - step_h, g_t, m2, H, G)
    for i in range(K):
        dh += d_o
        d0, d1, d2, d3, dc = cell_backward(a0, a1, a2, a3, c_prev, c, dh, dc, MODE)
        ty = dz_last_ptr.dtype.element_ty
        tl.store(dz_t + off_g, d0.to(ty), mask=m2)
        tl.store(dz_t + off_g + H, d1.to(ty), mask=m2)
        tl.store(dz_t + off_g + 2 * H, d2.to(ty), mask=m2)
        if G == 4:
            tl.store(dz_t + off_g + 3 * H, d3.to(ty), mask=m2)
        c = c_prev
        if i + 1 < K:  # dh_{t-1} = dz_t U needs every unit's dz_t (the caller forms dz_0 U itself)
            dout_t -= step_h
            c_t -= step_h
            g_t -= step_g
            d_o, c_prev, a0, a1, a2, a3 = _load_bwd_step(dout_t, c_t - step_h, g_t, m2, H, G)
            spin_limit = _grid_barrier(sync, err_ptr, (i + 1) * n_h, spin_limit)
            dh = _dz_times_u(dz_t, w_ptr, w0, w1, w2, w3, rows, mb, units, mu, H,
                             G, U_ON_CHIP, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
            dz_t -= step_g
    tl.store(dc_ptr + off_h, dc, mask=m2)


# ------------------------------------------------------------------------------------ planning / residency


@dataclass(frozen=True)
class DeviceLimits:
    """What co-residency depends on: from ``torch.cuda.get_device_properties`` (:meth:`of`), or made up.

    ``sequential``: programs run one after another (Triton's interpreter), so a barrier can only be met by a
    grid with a single hidden tile."""

    sm_count: int
    smem_per_block: int  # bytes of shared memory one program may use (the opt-in maximum)
    regs_per_sm: int = 65536
    sequential: bool = False

    @classmethod
    def of(cls, device) -> "DeviceLimits":
        props = torch.cuda.get_device_properties(device)
        smem = (getattr(props, "shared_memory_per_block_optin", 0)
                or getattr(props, "shared_memory_per_block", 0) or 48 * 1024)
        regs = getattr(props, "regs_per_multiprocessor", 0) or 65536
        return cls(sm_count=int(props.multi_processor_count), smem_per_block=int(smem), regs_per_sm=int(regs))

    @property
    def onchip_budget(self) -> int:
        """Shared memory one program may fill: the compiler keeps the loop-invariant U tiles (and each step's
        h or dz operand tile) of the dot in shared memory, so the opt-in maximum per block."""
        return self.smem_per_block


INTERPRETER_LIMITS = DeviceLimits(sm_count=1 << 16, smem_per_block=1 << 30, regs_per_sm=1 << 28, sequential=True)


def device_limits(device) -> DeviceLimits:
    """Limits of ``device``; the interpreter's when kernels run there (CPU tensors)."""
    device = torch.device(device)
    if device.type != "cuda" or interpreting():
        return INTERPRETER_LIMITS
    return DeviceLimits.of(device)


@dataclass(frozen=True)
class PersistentConfig:
    """Forced tiling for the persistent kernels (pass as the backend's ``config`` option, or to
    :func:`plan_persistent`); ``None`` fields are chosen by :func:`plan_persistent`."""

    block_b: Optional[int] = None
    block_h: Optional[int] = None
    block_k: int = 64
    u_on_chip: Optional[bool] = None
    num_warps: int = 4
    dot_precision: str = "ieee"
    max_spins: int = DEFAULT_MAX_SPINS
    check: str = "async"  # timeout flag: "async" (no host sync), "sync" (raise at once), "off"


@dataclass(frozen=True)
class PersistentPlan:
    """Tiling of one persistent launch: ``n_h * n_b`` programs."""

    block_b: int
    block_h: int
    block_k: int
    n_b: int
    n_h: int
    u_on_chip: bool
    onchip_bytes: int  # estimated shared memory per program (U tiles if on chip + one step's operand tile)
    step_bytes: int = 0  # estimated L2 -> SM bytes per program per backward step (the larger direction)
    num_warps: int = 4

    @property
    def num_programs(self) -> int:
        return self.n_b * self.n_h


# Shared memory the compiler adds to the operand tiles (the barrier's broadcast slot, layout conversions):
# measured ~1 KiB on sm_90 (triton 3.6 and 3.9); 4 KiB leaves room.
SMEM_SLACK = 4096


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _smem_bytes(gates: int, h_pad: int, block_b: int, block_h: int, block_k: int, elem: int, on_chip: bool) -> int:
    """Shared memory of one program: with U on chip, its G tiles (h_pad x block_h) plus one step's
    (block_b x h_pad) operand tile (what sm_90 compiles measured: 197632 B for G=4, H=1024, 32 x 16, bf16);
    streamed, one K chunk of both operands, double-buffered."""
    if on_chip:
        return (gates * h_pad * block_h + block_b * h_pad) * elem + SMEM_SLACK
    return 2 * (block_b + gates * block_h) * block_k * elem + SMEM_SLACK


def _step_bytes(gates: int, hidden: int, block_b: int, block_h: int, elem: int, on_chip: bool) -> int:
    """Bytes a program reads from L2 per backward step: every unit's dz_t for its rows (G*H x block_b)
    and, when streamed, its U^T slice (G*H x block_h). Per-step latency grows with it."""
    return gates * hidden * elem * (block_b + (0 if on_chip else block_h))


def plan_persistent(batch: int, hidden: int, gates: int, dtype: torch.dtype, limits: DeviceLimits,
                    config: Optional[PersistentConfig] = None) -> PersistentPlan:
    """Tiling for ``(batch, hidden)``; :func:`coresidency_reason` may still refuse it.

    Among batch tiles ``block_b`` in {16, 32, 64} (not above ``batch`` rounded up) and hidden tiles
    ``block_h`` (powers of two from 16), with U on chip where its tiles fit :attr:`DeviceLimits.onchip_budget`
    and streamed otherwise, take the tiling whose grid fits one program per SM and whose programs read the
    fewest bytes from L2 per step (:func:`_step_bytes`; ties: the smaller U slice, then fewer programs). If
    no grid fits, the one with the fewest programs (which :func:`coresidency_reason` then refuses). On a
    sequential device (the interpreter): one hidden tile, one batch tile of up to 64 rows.
    Fields given in ``config`` are kept as given.
    """
    cfg = config or PersistentConfig()
    if batch < 1 or hidden < 1:
        raise ValueError(f"batch and hidden must be >= 1, got batch={batch}, hidden={hidden}")
    for name, v in (("block_b", cfg.block_b), ("block_h", cfg.block_h), ("block_k", cfg.block_k)):
        if v is not None and (not isinstance(v, int) or v < MIN_BLOCK or v & (v - 1)):
            raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK} (tl.dot), got {v!r}")
    elem = torch.empty((), dtype=dtype).element_size()
    h_pad = max(MIN_BLOCK, _pow2(hidden))
    b_max = min(max(MIN_BLOCK, _pow2(batch)), MAX_BLOCK_B)
    if cfg.block_b:
        bbs = [cfg.block_b]
    elif limits.sequential:
        bbs = [b_max]
    else:
        bbs = [b for b in (16, 32, 64) if b <= b_max]
    if cfg.block_h:
        bhs = [cfg.block_h]
    elif limits.sequential:
        bhs = [h_pad]
    else:
        bhs = [MIN_BLOCK << i for i in range(h_pad.bit_length()) if MIN_BLOCK << i <= h_pad]
    bk = min(cfg.block_k, h_pad)
    best = None
    for bb in bbs:
        for bh in bhs:
            n = triton.cdiv(batch, bb) * triton.cdiv(hidden, bh)
            fits_grid = limits.sequential or n <= limits.sm_count
            for on_chip in ((cfg.u_on_chip,) if cfg.u_on_chip is not None else (True, False)):
                smem = _smem_bytes(gates, h_pad, bb, bh, bk, elem, on_chip)
                if on_chip and cfg.u_on_chip is None and smem > limits.onchip_budget:
                    continue
                cost = _step_bytes(gates, hidden, bb, bh, elem, on_chip)
                key = (0, cost, bh, n) if fits_grid else (1, n, cost, bh)
                if best is None or key < best[0]:
                    best = (key, bb, bh, on_chip, smem, cost)
    _, bb, bh, on_chip, smem, cost = best
    return PersistentPlan(
        block_b=bb, block_h=bh, block_k=h_pad if on_chip else bk, n_b=triton.cdiv(batch, bb),
        n_h=triton.cdiv(hidden, bh), u_on_chip=bool(on_chip), onchip_bytes=smem, step_bytes=cost,
        num_warps=cfg.num_warps,
    )


def coresidency_reason(plan: PersistentPlan, limits: DeviceLimits, steps: Optional[int] = None) -> str:
    """Why ``plan``'s grid might not be resident all at once on a device with ``limits`` ('' when it is).

    Conservative rule: at most one program per SM (``n_h * n_b <= sm_count``), and a program that keeps its U
    slice on chip must fit the on-chip budget. On a sequential device (the interpreter) a barrier can only be
    met with one hidden tile (``n_h = 1``). A launch of a single step (``steps == 1``) meets no barrier at
    all, so any grid is fine for it.
    """
    if steps == 1:
        return ""
    if limits.sequential:
        if plan.n_h > 1:
            return (f"programs run one after another here (Triton's interpreter), so the {plan.n_h} hidden tiles "
                    f"of {plan.block_h} units could never meet at the grid barrier; use block_h >= hidden")
        return ""
    if plan.num_programs > limits.sm_count:
        return (f"the persistent grid needs {plan.num_programs} co-resident programs ({plan.n_h} hidden tiles of "
                f"{plan.block_h} units x {plan.n_b} batch tiles of {plan.block_b} rows) but the device has "
                f"{limits.sm_count} SMs (one program per SM)")
    if plan.u_on_chip and plan.onchip_bytes > limits.onchip_budget:
        return (f"a program would keep about {plan.onchip_bytes} bytes of U and operands in shared memory, more "
                f"than the {limits.onchip_budget} bytes a block may use (use u_on_chip=False to stream U)")
    return ""


def _config(config) -> PersistentConfig:
    """A :class:`PersistentConfig` from the backend's ``config``: taken as is, or (a step kernels'
    ``TileConfig``, whose tiles do not apply here) only its ``dot_precision``."""
    if isinstance(config, PersistentConfig):
        return config
    cfg = PersistentConfig()
    prec = getattr(config, "dot_precision", None)
    return replace(cfg, dot_precision=prec) if prec else cfg


def _launch_plan(batch: int, hidden: int, gates: int, dtype: torch.dtype, device, cfg: PersistentConfig,
                 steps: Optional[int] = None) -> PersistentPlan:
    limits = device_limits(device)
    plan = plan_persistent(batch, hidden, gates, dtype, limits, cfg)
    reason = coresidency_reason(plan, limits, steps)
    if reason:
        raise RuntimeError(f"kernel='persistent' refused, its grid barrier could deadlock: {reason}. "
                           "Use kernel='step' (or 'auto', which falls back to it)")
    return plan


# ----------------------------------------------------------------------------------------- dispatch rule


def unsuitable_reason(batch: int, hidden: int, device, *, dtype: torch.dtype = torch.float32,
                      steps: Optional[int] = None, gates: int = 4) -> str:
    """Why ``kernel="auto"`` takes the step kernels rather than the persistent ones ('' when it takes these).

    The rule, in order (the backend then also asks the device's self-check, ``urlstm_triton.selfcheck``):
    1. only on a CUDA device (in the interpreter the persistent kernels run only when forced);
    2. ``steps < AUTO_MIN_STEPS`` (8): generation and short calls take the step kernels, whose one launch per
       step is the cheapest path when there are few steps to amortise the persistent launch's setup (a zeroed
       barrier counter, the U slice load, the timeout check);
    3. ``batch > AUTO_MAX_BATCH`` (64): each step's GEMM has enough rows for a well-filled grid per launch;
    4. the plan for ``(batch, hidden, dtype)`` must be co-resident (:func:`coresidency_reason`: at most one
       program per SM, U slice within the on-chip budget; else the slice is streamed, which still qualifies).
    """
    device = torch.device(device)
    if device.type != "cuda" or interpreting():
        return "persistent kernels are chosen automatically only on a CUDA device"
    if steps is not None and steps < AUTO_MIN_STEPS:
        return f"{steps} steps < {AUTO_MIN_STEPS}: one step launch per step is cheaper"
    if batch > AUTO_MAX_BATCH:
        return f"batch {batch} > {AUTO_MAX_BATCH}: the step kernels fill the GPU at this batch"
    limits = device_limits(device)
    return coresidency_reason(plan_persistent(batch, hidden, gates, dtype, limits), limits)


def suits(batch: int, hidden: int, device, *, dtype: torch.dtype = torch.float32, steps: Optional[int] = None,
          gates: int = 4) -> bool:
    """The persistent kernels suit this problem (rule: :func:`unsuitable_reason`): ``kernel="auto"`` takes them
    where, besides, their self-check has passed on the device."""
    return unsuitable_reason(batch, hidden, device, dtype=dtype, steps=steps, gates=gates) == ""


# -------------------------------------------------------------------------------------- launch helpers


def _flags(n_b: int, device) -> tuple:
    """One zeroed int32 buffer (one fill launch): a barrier counter per batch tile, then the timeout flag."""
    f = torch.zeros(n_b + 1, dtype=torch.int32, device=device)
    return f[:n_b], f[n_b:]


def _check_timeout(err: Tensor, check: str, what: str) -> None:
    msg = (f"persistent {what} kernel: a grid barrier timed out (programs not co-resident, or the GPU is shared "
           "with other work); its results are invalid. Use kernel='step'.")
    if check == "off":
        return
    if check not in ("async", "sync"):
        raise ValueError(f"check must be 'async', 'sync' or 'off', got {check!r}")
    if check == "sync" or err.device.type != "cuda":
        if int(err.item()):
            raise RuntimeError(msg)
    else:  # no host sync: a timeout surfaces as a device-side assert at the next synchronisation
        torch._assert_async(err == 0, msg)


def forward_sequence(xproj: Tensor, w_hh: Tensor, hs: Tensor, cs: Tensor, gates: Optional[Tensor], mode: int,
                     config) -> None:
    """Run the recurrence over the K steps of ``xproj`` in one persistent launch.

    Contract: ``urlstm_triton.kernels`` (``kernels/__init__.py``). ``config``: a :class:`PersistentConfig`, or
    the step kernels' ``TileConfig`` (then only its ``dot_precision`` is used). Raises ``RuntimeError`` if the
    grid would not be co-resident (see :func:`coresidency_reason`) or a barrier timed out.
    """
    steps, batch, gh = xproj.shape
    hidden = w_hh.shape[1]
    G = num_gates(mode)
    assert gh == G * hidden and w_hh.shape[0] == gh
    assert hs.shape == (steps + 1, batch, hidden) and cs.shape == hs.shape and cs.dtype == torch.float32
    assert xproj.is_contiguous() and w_hh.is_contiguous() and hs.is_contiguous() and cs.is_contiguous()
    assert w_hh.dtype == xproj.dtype == hs.dtype, "xproj, w_hh and hs share the compute dtype"
    save = gates is not None
    if save:
        assert gates.shape == xproj.shape and gates.dtype in (torch.float32, xproj.dtype) and gates.is_contiguous()
    if steps == 0:
        return
    cfg = _config(config)
    plan = _launch_plan(batch, hidden, G, xproj.dtype, xproj.device, cfg, steps)
    _launch_forward(xproj, w_hh, hs, cs, gates, mode, plan, cfg)


def _launch_forward(xproj, w_hh, hs, cs, gates, mode, plan: PersistentPlan, cfg: PersistentConfig) -> None:
    """Launch the forward kernel with ``plan`` as given (no co-residency check: callers check first)."""
    steps, batch, _ = xproj.shape
    save = gates is not None
    sync, err = _flags(plan.n_b, xproj.device)

    def launch(pl: PersistentPlan):
        _persistent_fwd_kernel[(pl.n_h, pl.n_b)](
            xproj, w_hh, hs, cs, gates if save else cs, sync, err,
            steps, batch, w_hh.shape[1], cfg.max_spins,
            MODE=mode, SAVE_GATES=save, U_ON_CHIP=pl.u_on_chip, PRECISION=cfg.dot_precision,
            BLOCK_B=pl.block_b, BLOCK_H=pl.block_h, BLOCK_K=pl.block_k,
            num_warps=pl.num_warps, num_stages=1,  # no software pipelining of loads across the grid barrier
        )

    _launch_or_stream(launch, plan, cfg)
    _check_timeout(err, cfg.check, "forward")


def backward_sequence(d_out: Tensor, w_hh: Tensor, gates: Tensor, cs: Tensor, dzs: Tensor, dc: Tensor, mode: int,
                      config, *, dz_next: Optional[Tensor] = None, dh_last: Optional[Tensor] = None) -> None:
    """Reverse recurrence over the K steps of a chunk in one persistent launch, the ``U^T`` slice on chip.

    Contract: ``urlstm_triton.kernels`` (``kernels/__init__.py``): writes ``dzs`` and updates ``dc`` in place
    to dL/dc_{start-1}; the caller forms ``dz_0 U`` and the weight gradients with large GEMMs.
    """
    steps, batch, hidden = d_out.shape
    G = num_gates(mode)
    gh = G * hidden
    assert (dz_next is None) != (dh_last is None), "give exactly one of dz_next, dh_last"
    assert w_hh.shape == (gh, hidden) and gates.shape == (steps, batch, gh) and dzs.shape == gates.shape
    assert cs.shape == (steps + 1, batch, hidden) and dc.shape == (batch, hidden)
    assert cs.dtype == dc.dtype == torch.float32 and gates.dtype in (torch.float32, dzs.dtype)
    for name, t in (("d_out", d_out), ("w_hh", w_hh), ("gates", gates), ("cs", cs), ("dzs", dzs), ("dc", dc)):
        assert t.is_contiguous(), f"{name} must be contiguous"
    if dz_next is not None:
        assert dz_next.shape == (batch, gh) and dz_next.is_contiguous() and dz_next.dtype == w_hh.dtype
    else:
        assert dh_last.shape == (batch, hidden) and dh_last.dtype == torch.float32 and dh_last.is_contiguous()
    if steps == 0:
        return
    cfg = _config(config)
    plan = _launch_plan(batch, hidden, G, w_hh.dtype, d_out.device, cfg, steps)
    _launch_backward(d_out, w_hh, gates, cs, dzs, dc, mode, plan, cfg, dz_next, dh_last)


def _launch_backward(d_out, w_hh, gates, cs, dzs, dc, mode, plan: PersistentPlan, cfg: PersistentConfig,
                     dz_next, dh_last) -> None:
    """Launch the backward kernel with ``plan`` as given (no co-residency check: callers check first)."""
    steps, batch, hidden = d_out.shape
    sync, err = _flags(plan.n_b, d_out.device)
    has_next = dz_next is not None

    def launch(pl: PersistentPlan):
        _persistent_bwd_kernel[(pl.n_h, pl.n_b)](
            d_out[steps - 1], w_hh, gates[steps - 1], cs[steps], dzs[steps - 1], dc,
            dz_next if has_next else dc, dh_last if not has_next else dc, sync, err,
            steps, batch, hidden, cfg.max_spins,
            MODE=mode, HAS_NEXT=has_next, U_ON_CHIP=pl.u_on_chip, PRECISION=cfg.dot_precision,
            BLOCK_B=pl.block_b, BLOCK_H=pl.block_h, BLOCK_K=pl.block_k,
            num_warps=pl.num_warps, num_stages=1,
        )

    _launch_or_stream(launch, plan, cfg)
    _check_timeout(err, cfg.check, "backward")


def _launch_or_stream(launch, plan: PersistentPlan, cfg: PersistentConfig) -> None:
    """``launch(plan)``; if the compiled program with U on chip needs more shared memory than the SM has
    (the planner's budget is an estimate), launch the streamed variant instead, unless U on chip was forced.
    The failed launch never started, so the zeroed barrier counters are still valid."""
    try:
        launch(plan)
    except triton.runtime.errors.OutOfResources:
        if not plan.u_on_chip or cfg.u_on_chip:
            raise
        launch(replace(plan, u_on_chip=False, block_k=min(cfg.block_k, plan.block_k)))


__all__ = [
    "forward_sequence", "backward_sequence", "suits", "unsuitable_reason", "plan_persistent", "coresidency_reason",
    "device_limits", "DeviceLimits", "PersistentConfig", "PersistentPlan", "INTERPRETER_LIMITS",
    "MODE_TIED", "MODE_REFINE", "MODE_CLASSIC",
]
