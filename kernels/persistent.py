"""Persistent Triton kernels for the recurrence: one launch runs every step of a chunk (small batch, long T).

The step kernels (``recurrence_fwd``/``recurrence_bwd``) pay one launch per time step; with a small batch each
step is a tiny GEMM and the launch is the cost. Here one launch loops over all K steps of the chunk. The grid
is ``(n_h, n_b)``: program ``(i, j)`` owns hidden units ``[i*BLOCK_H, (i+1)*BLOCK_H)`` (all gate blocks of those
units, so the gate math is the GEMM's epilogue) of batch rows ``[j*BLOCK_B, (j+1)*BLOCK_B)``. The programs of
one batch tile exchange ``h_t`` (forward) or ``dz_t`` (backward) through global memory and meet at a
grid-wide barrier once per step; batch tiles are independent and each has its own barrier counter.

Each step is one MMA per reduction step over all gate blocks of the program's units, as in the step kernels
(forward: a gate-minor ``(K, 4 BLOCK_H)`` slice of ``U^T``; backward: one reduction over all ``G H`` gate units
of ``dz_{t+1}``), followed by the same epilogue (``common.forward_epilogue``/``backward_epilogue``).

Where U lives:
- ``U_ON_CHIP=True`` (forward only): a program loads its slice of ``U`` once, before the time loop, as one
  tile covering the whole reduction; each step then reads only the ``(BLOCK_B, H)`` rows of ``h_{t-1}`` from
  L2. Chosen only while the tiles are small (:data:`ONCHIP_MAX_BYTES`): larger ones, and the backward's
  ``(G H, BLOCK_H)`` slice, were measured to spill registers when compiled for sm_90
  (``scripts/kernel_report.py``).
- otherwise (and always in backward) the slice is streamed every step through a reduction loop of
  ``BLOCK_K`` slices that the compiler software-pipelines (``num_stages``); all slices together are
  ``G*H*H`` elements, L2-resident on current GPUs for the sizes this path is chosen for.

Grid barrier (:func:`_grid_barrier`): a monotone int32 counter per batch tile. After its stores of step ``t``
a program syncs its own threads (``tl.debug_barrier``, i.e. bar.sync), adds 1 with release semantics at GPU
scope, spins on acquire reads (an atomic add of 0) until the counter reaches ``(t + 1) * n_h``, and syncs its
threads again. Every thread's later loads of the exchanged tensors are thereby ordered after the acquire
(release -> acquire -> CTA barrier -> load: the PTX memory model then guarantees they see the other programs'
stores, in L1 or not; the loads also ask for ``.cg``, L1-bypassing, which pipelined copies narrower than
16 bytes cannot honour). Software pipelining prefetches only within one step's reduction loop, which starts
after the barrier. This is cooperative groups' grid
sync and, like it, it deadlocks unless every program of the grid is resident at once: :func:`plan_persistent`
sizes the grid to at most one program per SM and :func:`coresidency_reason` refuses other grids. As a last
guard the spin is bounded (``max_spins``): a program that gives up raises a flag (the only write to it), which
the launch helpers read after the launch (:func:`check_timeout`: a ``RuntimeError``, no device-side assert, so
the CUDA context stays usable), and stops waiting at later barriers, so a broken grid ends in an error instead
of a hang. A grid with
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

from . import cost_model as CM
from .common import (MODE_CLASSIC, MODE_REFINE, MODE_TIED, backward_epilogue, forward_epilogue, interpreting,
                     num_gates)

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
    for the next barrier: 0 once this one gave up (the error flag raised, the only time it is touched), so a
    broken grid cannot hang."""
    tl.debug_barrier()  # every thread of this program has issued its stores of this step
    tl.atomic_add(sync_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (seen < target) & (spins < spin_limit):
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    timed_out = seen < target
    tl.atomic_max(err_ptr, 1, mask=timed_out, sem="relaxed", scope="gpu")
    tl.debug_barrier()  # no thread reads the exchanged tensor before the acquire above
    return tl.where(timed_out, 0, spin_limit)


@triton.jit
def _h_times_u(h_src, w_ptr, w_all, rows, mb, w_rows, mc, H, U_ON_CHIP: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """``h_{t-1} U^T`` for this program's rows and the gate-minor columns of its units (``(BLOCK_B, 4 BLOCK_H)``,
    fp32): one MMA per reduction step over all gate blocks, ``h`` read past L1 (other programs wrote it)."""
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=tl.float32)
    if U_ON_CHIP:  # BLOCK_K covers H: one MMA with the slice loaded before the time loop
        rk = tl.arange(0, BLOCK_K)
        hp = tl.load(h_src + rows[:, None] * H + rk[None, :], mask=mb[:, None] & (rk < H)[None, :], other=0.0,
                     cache_modifier=".cg")
        acc = tl.dot(hp, w_all, acc, input_precision=PRECISION)
    else:  # the slice streamed through a software-pipelined reduction loop
        for k0 in range(0, H, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < H
            hp = tl.load(h_src + rows[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0,
                         cache_modifier=".cg")
            w = tl.load(w_ptr + w_rows[None, :] + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
            acc = tl.dot(hp, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _dz_times_u(dz_src, w_ptr, rows, mb, units, mu, GH, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """``(dz @ U)[rows, units]`` for a ``(B, G H)`` slab ``dz`` (fp32 result): the dh that the step before
    receives, one software-pipelined reduction over all ``G H`` gate units with U's rows streamed from L2 (a
    whole-reduction tile kept on chip was measured to spill on sm_90), ``dz`` read past L1 (other programs
    wrote it)."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, GH, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < GH
        a = tl.load(dz_src + rows[:, None] * GH + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0,
                    cache_modifier=".cg")
        w = tl.load(w_ptr + rk[:, None].to(tl.int64) * H + units[None, :], mask=mk[:, None] & mu[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
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
    mb = rows < B
    col = tl.arange(0, 4 * BLOCK_H)          # gate-minor, as in the step kernel
    cu = pid_h * BLOCK_H + col // 4
    cq = col % 4
    mc = (cu < H) & (cq < G)
    w_rows = (cq * H + cu).to(tl.int64) * H
    sync = sync_ptr + pid_b
    spin_limit = max_spins
    w_all = tl.zeros((BLOCK_K, 4 * BLOCK_H), dtype=w_ptr.dtype.element_ty)
    if U_ON_CHIP:  # this program's slice of U, loaded once, the same for every step
        rk = tl.arange(0, BLOCK_K)
        w_all = tl.load(w_ptr + w_rows[None, :] + rk[:, None], mask=(rk < H)[:, None] & mc[None, :], other=0.0)
    bh = B * H
    for t in range(K):
        t64 = tl.cast(t, tl.int64)  # (a plain int in the interpreter)
        acc = _h_times_u(hs_ptr + t64 * bh, w_ptr, w_all, rows, mb, w_rows, mc, H, U_ON_CHIP, BLOCK_B, BLOCK_H,
                         BLOCK_K, PRECISION)
        forward_epilogue(acc, rows, mb, pid_h * BLOCK_H, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE, G,
                         SAVE_GATES, BLOCK_B, BLOCK_H)
        if t + 1 < K:  # every program of this batch tile reads h_t at step t + 1
            spin_limit = _grid_barrier(sync, err_ptr, (t + 1) * n_h, spin_limit)


@triton.jit(do_not_specialize=["max_spins"])
def _persistent_bwd_kernel(
    dout_ptr, w_ptr, gates_ptr, cs_ptr, dz_ptr, dc_ptr, dzn_ptr, dh_in_ptr, sync_ptr, err_ptr,
    K, B, H, max_spins,
    MODE: tl.constexpr, HAS_NEXT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    G: tl.constexpr = 3 if MODE == 0 else 4
    pid_h = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_h = tl.num_programs(0)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rows < B
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mu = units < H
    GH = G * H
    sync = sync_ptr + pid_b
    spin_limit = max_spins
    # the chunk's last step: dh from beyond the chunk, dz_next U (a later chunk) or d h_T
    if HAS_NEXT:
        dh = _dz_times_u(dzn_ptr, w_ptr, rows, mb, units, mu, GH, H, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION)
    else:
        dh = tl.load(dh_in_ptr + rows[:, None] * H + units[None, :], mask=mb[:, None] & mu[None, :], other=0.0)
    backward_epilogue(dh, rows, mb, units, (K - 1).to(tl.int64), B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr,
                      MODE, G)
    for i in range(1, K):  # steps K-2 .. 0: dh_t = dz_{t+1} U needs every unit's dz_{t+1}
        t64 = (K - 1 - i).to(tl.int64)
        spin_limit = _grid_barrier(sync, err_ptr, i * n_h, spin_limit)
        dh = _dz_times_u(dz_ptr + (t64 + 1) * B * GH, w_ptr, rows, mb, units, mu, GH, H, BLOCK_B, BLOCK_H,
                         BLOCK_K, PRECISION)
        backward_epilogue(dh, rows, mb, units, t64, B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, MODE, G)


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
    block_k: int = 32
    u_on_chip: Optional[bool] = None
    num_warps: Optional[int] = None  # None: 8 with U on chip or 32-unit tiles, else 4 (register budget)
    num_stages: int = 3  # software pipelining of the streamed reduction loop (within a step, never across a barrier)
    dot_precision: str = "ieee"
    max_spins: int = DEFAULT_MAX_SPINS
    check: str = "sync"  # barrier timeout flag: "sync" (read after each launch; raise) or "off"


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
    num_stages: int = 3

    @property
    def num_programs(self) -> int:
        return self.n_b * self.n_h


# Shared memory the compiler adds to the operand tiles (the barrier's broadcast slot, layout conversions):
# measured ~1 KiB on sm_90 (triton 3.6 and 3.9); 4 KiB leaves room.
SMEM_SLACK = 4096
# U stays on chip only while one program's full-reduction tiles (its U slice and one step's h or dz rows)
# are this small: beyond it the compiled kernels (sm_90, triton 3.6 and 3.9) keep part of them in registers
# and spill (scripts/kernel_report.py); the streamed, software-pipelined loop does not.
ONCHIP_MAX_BYTES = 32 * 1024
MAX_BLOCK_H = 32  # hidden units per program on a GPU: wider tiles were not compile-checked for spills


def _warps(block_h: int, on_chip: bool) -> int:
    """Warps per program: 8 where the reduction's operands or the 4 x 32-unit accumulator would otherwise
    crowd the registers (compiled spill-free for sm_90 with triton 3.6 and 3.9), else 4."""
    return 8 if on_chip or block_h >= 32 else 4


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _smem_bytes(gates: int, hidden: int, block_b: int, block_h: int, block_k: int, elem: int, on_chip: bool,
                stages: int = 3) -> int:
    """Shared memory of one program's forward (the larger direction). U on chip: the ``(H, 4 block_h)`` slice
    with one step's ``(block_b, H)`` rows of h (the reduction padded to a power of two); streamed: ``stages``
    reduction slices of both operands."""
    if on_chip:
        return (4 * block_h + block_b) * _pow2(hidden) * elem + SMEM_SLACK
    return stages * (block_b + 4 * block_h) * block_k * elem + SMEM_SLACK


def _step_bytes(gates: int, hidden: int, block_b: int, block_h: int, elem: int) -> int:
    """Bytes a program reads from L2 per backward step: every unit's dz_t for its rows (G*H x block_b) and its
    streamed U^T slice (G*H x block_h). Per-step latency grows with it."""
    return gates * hidden * elem * (block_b + block_h)


def step_estimate(batch: int, hidden: int, gates: int, plan: "PersistentPlan", elem: int, gate_elem: int,
                  precision: str = "tf32", machine: CM.Machine = CM.H200, backward: bool = False) -> CM.LaunchEstimate:
    """One step of a persistent launch under the cost model (``kernels/cost_model.py``): a grid barrier, this
    step's reduction (only h or dz from L2 when U is on chip), the epilogue."""
    bb, bh = plan.block_b, plan.block_h
    rows, units = min(bb, batch), min(bh, hidden)
    length = gates * hidden if backward else hidden
    n = bh if backward else 4 * bh
    streamed = backward or not plan.u_on_chip
    operand = rows * length * elem + (length * (units if backward else gates * units) * elem if streamed else 0)
    if backward:
        epi_hbm = rows * units * (elem + gates * gate_elem + 4 + 4 + gates * elem)
        epilogue = epi_hbm + rows * units * 8
    else:
        epi_hbm = rows * units * (gates * elem + elem + 4 + gates * gate_elem)
        epilogue = epi_hbm + rows * units * 4
    return CM.gemm_launch(machine, programs=plan.num_programs, m=bb, n=n, k=length, elem=elem, precision=precision,
                          operand_bytes=operand, hbm_bytes=0, occupancy=1, tiles=plan.num_programs, fixup_bytes=0,
                          epilogue_bytes=epilogue, epilogue_hbm_bytes=epi_hbm, gap=machine.barrier_s,
                          sync=machine.latency_s)


def plan_persistent(batch: int, hidden: int, gates: int, dtype: torch.dtype, limits: DeviceLimits,
                    config: Optional[PersistentConfig] = None) -> PersistentPlan:
    """Tiling for ``(batch, hidden)``; :func:`coresidency_reason` may still refuse it.

    Among batch tiles ``block_b`` in {16, 32, 64} (not above ``batch`` rounded up) and hidden tiles
    ``block_h`` in {16, 32}, with U on chip where its tiles fit :data:`ONCHIP_MAX_BYTES` (and the device's
    shared memory) and streamed otherwise, warps by :func:`_warps`, take the tiling whose
    grid fits one program per SM and whose forward and backward step is fastest under the cost model
    (:func:`step_estimate`; ties: fewer programs). If no grid fits, the one with the fewest programs (which
    :func:`coresidency_reason` then refuses). On a sequential device (the interpreter): one hidden tile, one
    batch tile of up to 64 rows. Fields given in ``config`` are kept as given.
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
        bhs = [b for b in (MIN_BLOCK, 2 * MIN_BLOCK) if b <= max(MIN_BLOCK, min(h_pad, MAX_BLOCK_H))]
    bk = min(cfg.block_k, h_pad)
    precision = cfg.dot_precision if elem == 4 else "tf32"
    machine = CM.Machine(sms=max(1, limits.sm_count)) if limits.sm_count != CM.H200.sms else CM.H200
    best = None
    for bb in bbs:
        for bh in bhs:
            n = triton.cdiv(batch, bb) * triton.cdiv(hidden, bh)
            fits_grid = limits.sequential or n <= limits.sm_count
            for on_chip in ((cfg.u_on_chip,) if cfg.u_on_chip is not None else (True, False)):
                warps = cfg.num_warps or _warps(bh, on_chip)
                smem = _smem_bytes(gates, hidden, bb, bh, bk, elem, on_chip, cfg.num_stages)
                if on_chip and cfg.u_on_chip is None and (
                        smem > min(limits.onchip_budget, ONCHIP_MAX_BYTES + SMEM_SLACK) and not limits.sequential):
                    continue
                plan = PersistentPlan(block_b=bb, block_h=bh, block_k=bk, n_b=triton.cdiv(batch, bb),
                                      n_h=triton.cdiv(hidden, bh), u_on_chip=bool(on_chip), onchip_bytes=smem,
                                      step_bytes=_step_bytes(gates, hidden, bb, bh, elem),
                                      num_warps=warps, num_stages=cfg.num_stages)
                seconds = sum(step_estimate(batch, hidden, gates, plan, elem, elem, precision, machine, bw).seconds
                              for bw in (False, True))
                key = (0, seconds, n) if fits_grid else (1, n, seconds)
                if best is None or key < best[0]:
                    best = (key, plan)
    if best is None:
        raise ValueError(f"no persistent tiling for batch={batch}, hidden={hidden} with {cfg}")
    return best[1]


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


_ERROR_FLAGS = {}


def error_flag(device) -> Tensor:
    """The barrier-timeout flag of ``device``: one int32, zero until a program gives up waiting, allocated once
    (outside any CUDA-graph capture: the graph wrapper's first, eager call comes first) so that a graph's
    replays set the same flag the host reads."""
    device = torch.device(device)
    if device not in _ERROR_FLAGS:
        _ERROR_FLAGS[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _ERROR_FLAGS[device]


def _counters(n_b: int, device) -> Tensor:
    """Zeroed barrier counters, one per batch tile (one fill launch)."""
    return torch.zeros(n_b, dtype=torch.int32, device=device)


def check_timeout(device, check: str = "sync", what: str = "") -> None:
    """Raise if a barrier of the last persistent launches on ``device`` timed out (and clear the flag, so the
    next launch starts clean). A host read of one int32: no device-side assert, so the CUDA context stays
    usable after the error. Skipped while a CUDA graph is captured (``GraphedKernels`` checks after each
    replay)."""
    if check == "off":
        return
    if check != "sync":
        raise ValueError(f"check must be 'sync' or 'off', got {check!r}")
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    flag = error_flag(device)
    if int(flag.item()):
        flag.zero_()
        raise RuntimeError(f"persistent {what + ' ' if what else ''}kernel: a grid barrier timed out (its programs "
                           "were not all resident at once, or the GPU is shared with other work); its results are "
                           "invalid. Use kernel='step'.")


def after_replay(device) -> None:
    """``GraphedKernels`` calls this after replaying a captured launch of this family."""
    check_timeout(device, "sync", "(graph replay)")


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
    hidden = w_hh.shape[1]
    save = gates is not None
    sync, err = _counters(plan.n_b, xproj.device), error_flag(xproj.device)

    def launch(pl: PersistentPlan):
        _persistent_fwd_kernel[(pl.n_h, pl.n_b)](
            xproj, w_hh, hs, cs, gates if save else cs, sync, err,
            steps, batch, hidden, cfg.max_spins,
            MODE=mode, SAVE_GATES=save, U_ON_CHIP=pl.u_on_chip, PRECISION=cfg.dot_precision,
            BLOCK_B=pl.block_b, BLOCK_H=pl.block_h,
            BLOCK_K=max(MIN_BLOCK, _pow2(hidden)) if pl.u_on_chip else pl.block_k,
            # the pipeliner prefetches only within a step's reduction loop, never across the grid barrier
            num_warps=pl.num_warps, num_stages=pl.num_stages,
        )

    _launch_or_stream(launch, plan, cfg)
    check_timeout(xproj.device, cfg.check, "forward")


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
    sync, err = _counters(plan.n_b, d_out.device), error_flag(d_out.device)
    has_next = dz_next is not None

    def launch(pl: PersistentPlan):
        _persistent_bwd_kernel[(pl.n_h, pl.n_b)](
            d_out, w_hh, gates, cs, dzs, dc,
            dz_next if has_next else dc, dh_last if not has_next else dc, sync, err,
            steps, batch, hidden, cfg.max_spins,
            MODE=mode, HAS_NEXT=has_next, PRECISION=cfg.dot_precision,
            BLOCK_B=pl.block_b, BLOCK_H=pl.block_h, BLOCK_K=pl.block_k,
            num_warps=pl.num_warps, num_stages=pl.num_stages,
        )

    _launch_or_stream(launch, plan, cfg)
    check_timeout(d_out.device, cfg.check, "backward")


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
    "device_limits", "DeviceLimits", "PersistentConfig", "PersistentPlan", "INTERPRETER_LIMITS", "check_timeout",
    "after_replay", "error_flag", "step_estimate",
    "MODE_TIED", "MODE_REFINE", "MODE_CLASSIC",
]
