"""Tile choice of the step kernels: :func:`pick_config` and the model behind it.

Each direction's launch is estimated with :mod:`kernels.cost_model` for every candidate tiling, and the
fastest estimate is taken among the candidates that

- keep the kernel's registers in budget (accumulator and epilogue tiles per thread, the counts measured
  spill-free on sm_90 with triton 3.6 and 3.9 by ``scripts/kernel_report.py``);
- make the MMA at least 64 wide where the hidden size allows (narrower MMAs waste the tensor cores on
  operand reads from shared memory);
- launch at least one program per multiprocessor where batch and hidden size allow (a step is a chain of
  dependent launches: an idle multiprocessor cannot catch up later).

The estimates are assumptions, not measurements (the model's docstring says which); the choice is cached per
problem size. ``scripts/bench_kernels.py --tile`` times alternatives on a GPU.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator, List, Optional

from .common import TileConfig, Tiles, library_gemm_fp32_out
from .cost_model import H200, LaunchEstimate, Machine, ctas_per_sm, gemm_launch, u_from_hbm

MAX_ACC_PER_THREAD = 64   # fp32 accumulator values per thread during the reduction
EPI_PER_THREAD = 8        # values per thread of one gate's epilogue tile (about a dozen such tiles are live)
EPI_PER_THREAD_FP32 = 4   # exact fp32 dots run on the CUDA cores with both operands in registers: less room
PLANNER_REGS = 128        # registers per thread the occupancy estimate assumes
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _k_slice(length: int, split: int, block_k: int) -> int:
    return min(length, math.ceil(math.ceil(length / split) / block_k) * block_k)


def launch_gap(machine: Machine, tiles: Tiles) -> float:
    """What separates a fused step launch from the previous step's under the model: the graph's launch gap, or
    nothing with programmatic dependent launch (``Tiles.pdl``: the launch and the placing of its programs
    overlap the previous step, which the model assumes runs longer than the gap). The dependent latency
    (``Machine.latency_s``: the previous step's last stores becoming visible, the first loads) stays. An
    assumption until a GPU times it: the tuner keeps ``pdl`` only where it measures faster."""
    return 0.0 if tiles.pdl else machine.launch_gap_s


def library_gemm_estimate(batch: int, hidden: int, gates: int, elem: int, gate_elem: int, backward: bool,
                          machine: Machine = H200) -> LaunchEstimate:
    """One library-GEMM step (``Tiles.gemm``) under the cost model: the product at the library's roofline (the
    large-GEMM rate, or ``U`` streamed from HBM when it does not fit in L2, else from L2, plus the other operand
    and the fp32 output through L2), then the gate-math kernel's streams (the fused epilogue's, plus the fp32
    product read back from L2), and two launches' gaps and latencies. It assumes the library reaches that
    roofline at this shape (a skinny GEMM, ``batch`` rows): a bound on how fast the step can be, not a
    prediction of cuBLAS's tiling."""
    gh = gates * hidden
    m, n, k = (batch, hidden, gh) if backward else (batch, gh, hidden)
    u_bytes = gh * hidden * elem
    u_rate = machine.hbm_bytes_per_s if u_from_hbm(machine, u_bytes) else machine.l2_bytes_per_s
    product = max(2.0 * m * n * k / machine.gemm_flops_per_s,
                  u_bytes / u_rate + (m * k * elem + m * n * 4) / machine.l2_bytes_per_s)
    units = batch * hidden
    if backward:  # d_out, gates, c_t, c_{t-1} in, dz out (HBM); dh (fp32) and dc read and written (L2)
        hbm, l2 = units * (elem + gates * gate_elem + 8 + gates * elem), units * 12
    else:  # xproj in, h, c, gates out (HBM); the fp32 product and c_{t-1} (L2)
        hbm, l2 = units * (gates * elem + elem + 4 + gates * gate_elem), units * (gates * 4 + 4)
    gate_math = max(hbm / machine.hbm_bytes_per_s, (hbm + l2) / machine.l2_bytes_per_s)
    overhead = 2 * (machine.launch_gap_s + machine.latency_s)
    return LaunchEstimate(overhead + product + gate_math,
                          {"gap": 2 * machine.launch_gap_s, "latency": 2 * machine.latency_s, "main": product,
                           "epilogue": gate_math})


def forward_estimate(batch: int, hidden: int, gates: int, tiles: Tiles, elem: int, gate_elem: int,
                     precision: str = "tf32", machine: Machine = H200, regs: int = PLANNER_REGS,
                     smem: Optional[int] = None) -> LaunchEstimate:
    """One forward step launch (``kernels/recurrence_fwd.py``) under the cost model (both launches of a
    library-GEMM step: :func:`library_gemm_estimate`)."""
    if tiles.gemm:
        return library_gemm_estimate(batch, hidden, gates, elem, gate_elem, False, machine)
    bb, bh, s = tiles.block_b, tiles.block_h, tiles.split_k
    n_b, n_h = math.ceil(batch / bb), math.ceil(hidden / bh)
    k = _k_slice(hidden, s, tiles.block_k)
    rows, units = min(bb, batch), min(bh, hidden)
    direct = s == 1 and tiles.epi_h == bh
    partial = 0 if direct else bb * 4 * bh * 4
    operand = (rows * k + gates * units * k) * elem + partial
    if smem is None:
        smem = tiles.num_stages * (bb + 4 * bh) * tiles.block_k * elem
    # xproj in, h and c out, gates out: HBM streams; c_{t-1} was written by the previous step: L2
    epi_hbm = rows * units * (gates * elem + elem + 4 + gates * gate_elem)
    epilogue = epi_hbm + rows * units * 4
    u_bytes = gates * hidden * hidden * elem
    u_hbm = u_from_hbm(machine, u_bytes)
    return gemm_launch(machine, programs=n_b * s * n_h, m=bb, n=4 * bh, k=k, elem=elem, precision=precision,
                       operand_bytes=operand, hbm_bytes=u_bytes if u_hbm else 0,
                       occupancy=ctas_per_sm(machine, tiles.num_warps, regs, smem), tiles=n_b * n_h,
                       fixup_bytes=s * partial, epilogue_bytes=epilogue, epilogue_hbm_bytes=epi_hbm,
                       gap=launch_gap(machine, tiles), sync=machine.latency_s, iterations=math.ceil(k / tiles.block_k),
                       stages=tiles.num_stages, u_hbm=u_hbm, subtiles=max(1, bh // tiles.epi_h), split=s)


def backward_estimate(batch: int, hidden: int, gates: int, tiles: Tiles, elem: int, gate_elem: int,
                      precision: str = "tf32", machine: Machine = H200, regs: int = PLANNER_REGS,
                      smem: Optional[int] = None) -> LaunchEstimate:
    """One backward step launch (``kernels/recurrence_bwd.py``) under the cost model (both launches of a
    library-GEMM step: :func:`library_gemm_estimate`)."""
    if tiles.gemm:
        return library_gemm_estimate(batch, hidden, gates, elem, gate_elem, True, machine)
    bb, bh, s = tiles.block_b, tiles.block_h, tiles.split_k
    gh = gates * hidden
    n_b, n_h = math.ceil(batch / bb), math.ceil(hidden / bh)
    k = _k_slice(gh, s, tiles.block_k)
    rows, units = min(bb, batch), min(bh, hidden)
    direct = s == 1 and tiles.epi_h == bh
    partial = 0 if direct else bb * bh * 4
    operand = (rows * k + k * units) * elem + partial
    if smem is None:
        smem = tiles.num_stages * (bb + bh) * tiles.block_k * elem
    # d_out, gates, c_t and c_{t-1} in, dz out: HBM streams; dc (read and written every step): L2
    epi_hbm = rows * units * (elem + gates * gate_elem + 4 + 4 + gates * elem)
    epilogue = epi_hbm + rows * units * 8
    u_bytes = gh * hidden * elem
    u_hbm = u_from_hbm(machine, u_bytes)
    return gemm_launch(machine, programs=n_b * s * n_h, m=bb, n=bh, k=k, elem=elem, precision=precision,
                       operand_bytes=operand, hbm_bytes=u_bytes if u_hbm else 0,
                       occupancy=ctas_per_sm(machine, tiles.num_warps, regs, smem), tiles=n_b * n_h,
                       fixup_bytes=s * partial, epilogue_bytes=epilogue, epilogue_hbm_bytes=epi_hbm,
                       gap=launch_gap(machine, tiles), sync=machine.latency_s, iterations=math.ceil(k / tiles.block_k),
                       stages=tiles.num_stages, u_hbm=u_hbm, subtiles=max(1, bh // tiles.epi_h), split=s)


def _epi_h(block_b: int, block_h: int, num_warps: int, elem: int) -> int:
    """Units per epilogue sub-tile: an epilogue tile holds EPI_PER_THREAD values per thread and gate, straight
    from the accumulator when the whole tile fits, else in sub-tiles through the workspace."""
    threads = 32 * num_warps
    cap = EPI_PER_THREAD if elem == 2 else EPI_PER_THREAD_FP32
    return block_h if block_b * block_h / threads <= cap else max(1, min(block_h, (cap * threads) // block_b))


def _candidates(batch: int, hidden: int, gates: int, elem: int, backward: bool) -> Iterator[Tiles]:
    b_cap = min(128, max(16, _pow2(batch)))
    block_bs = [b for b in (16, 32, 64, 128) if b <= b_cap]
    h_cap = max(16 if backward else 4, _pow2(hidden))
    if backward:  # MMA width block_h
        widths = [h for h in (16, 32, 64, 128) if h <= h_cap]
        min_width, length, per_unit = (64 if hidden >= 64 else 16), gates * hidden, 1
    else:  # MMA width 4 * block_h
        widths = [h for h in (4, 8, 16, 32) if h <= h_cap]
        min_width, length, per_unit = (64 if hidden >= 16 else 16), hidden, 4
    ks = [k for k in ((32,) if elem == 4 else (32, 64)) if k <= max(16, _pow2(length))] or [16]
    for bb in block_bs:
        for bh in widths:
            if bh * per_unit < min_width:
                continue
            for bk in ks:
                for warps in (4, 8):
                    threads = 32 * warps
                    acc = bb * bh * per_unit / threads
                    if acc > MAX_ACC_PER_THREAD:
                        continue
                    epi = _epi_h(bb, bh, warps, elem)
                    for s in SPLITS:
                        # exact fp32 dots (CUDA cores) gain little from deep splits, and 8 of them spilled (sm_90)
                        if s > 1 and (s > math.ceil(length / bk) or (elem == 4 and s > 4)):
                            break
                        yield Tiles(bb, bh, bk, s, warps, 3, epi)


def ranked_tiles(batch: int, hidden: int, gates: int, elem: int, gate_elem: int, backward: bool,
                 precision: str = "tf32", machine: Machine = H200) -> List[Tiles]:
    """Every candidate tiling, best first: those that give every multiprocessor a program (when any does)
    before the others, then by estimate, then by program count. ``scripts/bench_kernels.py --tile-sweep``
    times the first few on a GPU, to see whether the model ranks them as the hardware does."""
    estimate = backward_estimate if backward else forward_estimate
    ranked = []
    for tiles in _candidates(batch, hidden, gates, elem, backward):
        programs = math.ceil(batch / tiles.block_b) * tiles.split_k * math.ceil(hidden / tiles.block_h)
        seconds = estimate(batch, hidden, gates, tiles, elem, gate_elem, precision, machine).seconds
        ranked.append(((programs < machine.sms, seconds, programs), tiles))
    ranked.sort(key=lambda r: r[0])  # stable: among equal keys the candidate order decides
    return [tiles for _, tiles in ranked]


def choose_tiles(batch: int, hidden: int, gates: int, elem: int, gate_elem: int, backward: bool,
                 precision: str = "tf32", machine: Machine = H200) -> Tiles:
    """The candidate tiling with the fastest estimate, among those that give every multiprocessor a program
    when any does."""
    return ranked_tiles(batch, hidden, gates, elem, gate_elem, backward, precision, machine)[0]


# The tilings that measured fastest on an H200 (BENCHMARKS.md, the tile sweep of 2026-11-29: lm-seed,
# big-batch, lm-1k in bf16), as (block_b, block_h, block_k for 16-bit operands): the forward with a 64-wide MMA
# (block_h 16) over 32-64 batch rows, the backward over 2048-4096-element tiles; 4 warps, few splits. The model
# ranked them badly (it has no term for load latency), so the tuner (urlstm_triton.tuning) times them.
TUNE_FWD = ((64, 16, 64), (32, 16, 64))
TUNE_BWD = ((32, 128, 64), (64, 64, 32), (64, 64, 64), (16, 64, 64))  # 64x64: k 64 won on lm-seed, 32 on big-batch


# The library-GEMM steps (``Tiles.gemm``: cuBLAS product, Triton gate math), timed for 16-bit operands: where
# U streams from HBM every step (lm-seed's 75 MB) the fused backward ran at ~1.3 TB/s against a 4.3 TB/s floor,
# and a library GEMM of that shape reads U once. Not yet measured (no GPU since it was written): the tuner keeps
# it only where it times faster. (block_b, block_h) of the gate-math kernel: 1024-element tiles, 4 warps (2048
# spilled on smnist).
TUNE_GEMM = (16, 64)


TUNE_MAX_SPLIT = 4  # deeper splits measured slower than leaving multiprocessors idle (lm-1k: 12 splits 2x slower)


def _fill_split(batch: int, hidden: int, length: int, bb: int, bh: int, bk: int, sms: int) -> int:
    """The smallest split-K (up to TUNE_MAX_SPLIT, at least one K step each) that gives every multiprocessor a
    program, else the deepest of those."""
    tiles = math.ceil(batch / bb) * math.ceil(hidden / bh)
    usable = [s for s in SPLITS if s == 1 or s <= min(TUNE_MAX_SPLIT, math.ceil(length / bk))]
    return next((s for s in usable if tiles * s >= sms), usable[-1])


def tuning_candidates(batch: int, hidden: int, gates: int, elem: int, gate_elem: int, backward: bool,
                      precision: str = "tf32", machine: Machine = H200) -> List[Tiles]:
    """What ``urlstm_triton.tuning`` times for one direction: the model's pick first, then the measured
    families (``TUNE_FWD``/``TUNE_BWD``) fitted to the problem (blocks no larger than it needs, the smallest
    split that fills the multiprocessors, the epilogue sub-tile the registers allow), without repeats, and for
    16-bit operands the library-GEMM step (``TUNE_GEMM``, ``Tiles.gemm``) where this torch can run it
    (:func:`common.library_gemm_fp32_out`)."""
    out = [choose_tiles(batch, hidden, gates, elem, gate_elem, backward, precision, machine)]
    b_cap = min(128, max(16, _pow2(batch)))
    length = gates * hidden if backward else hidden
    for bb, bh, bk in TUNE_BWD if backward else TUNE_FWD:
        bb = min(bb, b_cap)
        bh = min(bh, max(16 if backward else 4, _pow2(hidden)))
        bk = bk if elem == 2 else 32
        bk = min(bk, max(16, _pow2(length)))
        stages = 4 if (elem == 2 and not backward) else 3
        split = _fill_split(batch, hidden, length, bb, bh, bk, machine.sms)
        tiles = Tiles(bb, bh, bk, split, 4, stages, _epi_h(bb, bh, 4, elem))
        if tiles not in out:
            out.append(tiles)
    if elem == 2 and library_gemm_fp32_out():
        bb, bh = TUNE_GEMM
        out.append(Tiles(min(bb, b_cap), min(bh, max(16, _pow2(hidden))), 16, gemm=True))
    return out


@functools.lru_cache(maxsize=256)
def _pick(batch, hidden, gates, on_gpu, dot_precision, num_sms, elem_bytes, gate_bytes) -> TileConfig:
    if not on_gpu:
        return TileConfig(dot_precision=dot_precision)
    machine = H200 if not num_sms or num_sms == H200.sms else Machine(sms=num_sms)
    prec = dot_precision if elem_bytes == 4 else "tf32"
    return TileConfig(
        fwd=choose_tiles(batch, hidden, gates, elem_bytes, gate_bytes, False, prec, machine),
        bwd=choose_tiles(batch, hidden, gates, elem_bytes, gate_bytes, True, prec, machine),
        dot_precision=dot_precision,
    )


def pick_config(batch: int, hidden: int, on_gpu: bool, dot_precision: str = "ieee", num_sms: Optional[int] = None,
                elem_bytes: int = 2, gates: int = 4, gate_bytes: Optional[int] = None) -> TileConfig:
    """Tiles of the step kernels for a ``(batch, hidden)`` problem with ``gates`` gate blocks, operands of
    ``elem_bytes`` (2: fp16/bf16, 4: fp32) and saved gates of ``gate_bytes`` (default: ``elem_bytes``), on a
    GPU with ``num_sms`` multiprocessors (default 132). In the interpreter (``on_gpu=False``): the smallest
    tiles (its cost grows with tile area)."""
    if dot_precision not in ("ieee", "tf32"):
        raise ValueError(f"dot_precision must be 'ieee' or 'tf32', got {dot_precision!r}")
    if batch < 1 or hidden < 1:
        raise ValueError(f"batch and hidden must be >= 1, got {batch}, {hidden}")
    return _pick(batch, hidden, gates, bool(on_gpu), dot_precision, num_sms, elem_bytes, gate_bytes or elem_bytes)


__all__ = ["pick_config", "choose_tiles", "ranked_tiles", "tuning_candidates", "forward_estimate", "backward_estimate"]
