"""A roofline model of the recurrence on a GPU: what the tile planner minimises and what
``scripts/kernel_report.py`` prints as ``est_ms_fwd_bwd``.

**These are estimates, not measurements.** Every figure below is an assumption about the machine (defaults:
one H200 SXM, the figures docs/design.md and issue 11 use), and the model leaves out what it cannot know
without running: instruction latencies inside a program, bank conflicts, the scheduler's placement of
programs, clock throttling. It is meant to rank tilings and to say, before a GPU is available, whether a
design can reach a target at all; BENCHMARKS.md compares it with measurements once they exist.

One launch of a step kernel (one time step, one direction) is modelled as

    gap + latency + max(waves x per-wave time, operand bytes / L2 bandwidth, HBM bytes / HBM bandwidth)
        + split-K fix-up + epilogue

- *waves*: ``ceil(programs / (SMs x programs per SM))``; a wave lasts as long as the slower of the tensor
  cores (the SM's MMA rate times an efficiency that falls for narrow MMAs, whose operands are re-read from
  shared memory for little arithmetic: a Hopper ``wgmma m64nNk16`` needs ``N/2`` clocks of math but
  ``(2048 + 32 N) / 128`` clocks of shared-memory reads) and the SM's share of L2 bandwidth;
- *operand bytes*: what every program streams from L2 (its rows of h or dz, its slice of U);
- *HBM bytes*: U once per step when it does not fit in L2, plus the epilogue's streams (xproj, gates, h, c,
  dz, d_out), which are too large to stay in L2 across a sequence;
- *split-K fix-up*: the last program of an output tile reads every partial sum of the tile;
- *epilogue*: the gate math's loads and stores, spread over the programs that run it.

A persistent launch (one launch for all steps of a chunk) pays per step one grid barrier instead of a launch
gap, and reads only ``h`` (or ``dz``) from L2 when its slice of U stays on chip.

The GEMMs outside the recurrence (input projection, ``dW_ih``, ``dx``, ``dU``) run at cuBLAS's large-GEMM
rate or at HBM bandwidth, whichever is slower.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict


@dataclass(frozen=True)
class Machine:
    """Throughputs the model assumes. Defaults: one H200 SXM (132 SMs, 50 MB L2, HBM3e); the bandwidths and
    the large-GEMM rate are the figures issue 11 states (HBM 4.3 TB/s as measured on this workplace's H200s,
    L2 ~8 TB/s, cuBLAS ~650 TFLOP/s in bf16, ~1.5 us between kernels replayed from a CUDA graph)."""

    name: str = "H200 SXM (assumed figures)"
    sms: int = 132
    clock_hz: float = 1.755e9
    mma_flops_per_clk: int = 4096      # dense bf16/fp16 tensor-core flops per SM per clock (Hopper)
    tf32_flops_per_clk: int = 2048
    fp32_flops_per_clk: int = 256      # FFMA on the CUDA cores: exact ("ieee") fp32 dots
    smem_bytes_per_clk: int = 128      # shared-memory bandwidth per SM
    l2_bytes_per_s: float = 8e12       # aggregate L2 -> SM
    sm_l2_bytes_per_clk: int = 64      # the most one SM pulls from L2
    l2_bytes: int = 50 * 2**20
    hbm_bytes_per_s: float = 4.3e12
    gemm_flops_per_s: float = 650e12   # cuBLAS, large bf16 GEMMs
    gemm_fp32_flops_per_s: float = 50e12
    launch_gap_s: float = 1.5e-6       # between consecutive kernels of a CUDA graph
    latency_s: float = 1.0e-6          # fixed cost of a dependent kernel: first L2 round trips, last stores
    barrier_s: float = 1.0e-6          # one grid barrier (release add + acquire polls through L2)
    # latencies a program waits out in sequence (fitted to the H200 tile sweep: scripts/fit_cost_model.py)
    load_latency_s: float = 0.0        # one K step's operand load, operands in L2, hidden by stages - 1 in flight
    load_latency_hbm_s: float = 0.0    # the same when U streams from HBM
    subtile_latency_s: float = 0.0     # one epilogue sub-tile: its dependent loads, gate math, stores
    partial_latency_s: float = 0.0     # one split-K partial read back by the last program, per sub-tile
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    max_ctas_per_sm: int = 2           # the planner's cap: more programs per SM only split the same tensor cores

    @property
    def sm_l2_bytes_per_s(self) -> float:
        return self.sm_l2_bytes_per_clk * self.clock_hz


H200 = Machine()


def mma_efficiency(m: int, n: int, elem: int) -> float:
    """Fraction of an SM's tensor-core rate that a ``(m x n)`` MMA tile keeps, from shared-memory operand
    traffic: a 16-deep step of a Hopper warpgroup MMA (m = 64 rows per warpgroup) does ``64 n 16`` multiply-adds
    in ``n / 2`` clocks but reads ``64 x 16`` (A) plus ``16 x n`` (B) elements from shared memory at 128 B per
    clock. Tiles of fewer than 64 rows run the older ``mma.sync`` path: half the rate, assumed."""
    if elem == 4:
        return 1.0  # fp32 paths are bound by their own (lower) rate, not by operand reads
    math_clk = n / 2.0
    smem_clk = (64 * 16 + 16 * n) * elem / 128.0
    eff = min(1.0, math_clk / smem_clk)
    return eff if m % 64 == 0 else 0.5 * eff


def sm_flops_per_s(machine: Machine, elem: int, precision: str) -> float:
    per_clk = (machine.mma_flops_per_clk if elem == 2 else
               machine.tf32_flops_per_clk if precision == "tf32" else machine.fp32_flops_per_clk)
    return per_clk * machine.clock_hz


@dataclass
class LaunchEstimate:
    """One launch: seconds and where they go (all in seconds)."""

    seconds: float
    parts: Dict[str, float] = field(default_factory=dict)


def ctas_per_sm(machine: Machine, num_warps: int, regs: int, smem: int) -> int:
    """Programs one SM holds at once, from registers (``regs`` per thread) and shared memory."""
    by_regs = machine.regs_per_sm // max(1, regs * 32 * num_warps)
    by_smem = machine.smem_per_sm // max(1, smem)
    return max(1, min(machine.max_ctas_per_sm, by_regs, by_smem))


def gemm_launch(machine: Machine, *, programs: int, m: int, n: int, k: int, elem: int, precision: str,
                operand_bytes: float, hbm_bytes: float, occupancy: int, tiles: int, fixup_bytes: float,
                epilogue_bytes: float, epilogue_hbm_bytes: float, gap: float, sync: float, iterations: int = 0,
                stages: int = 3, u_hbm: bool = False, subtiles: int = 1, split: int = 1) -> LaunchEstimate:
    """A launch of ``programs`` programs, each multiplying an ``(m x k)`` by a ``(k x n)`` tile and reading
    ``operand_bytes`` from L2; ``tiles`` of them (the last of each split-K group) then read ``fixup_bytes``
    of partial sums and run an epilogue that moves ``epilogue_bytes`` each, ``epilogue_hbm_bytes`` of them
    streams that live in HBM (the rest, such as the previous step's cell state, is still in L2). ``gap``: what
    separates it from the previous launch (a graph's launch gap, or a grid barrier); ``sync``: fixed latency.
    Latency: a program's ``iterations`` K steps each wait for a load issued ``stages - 1`` steps earlier (from
    HBM when ``u_hbm``); co-resident programs overlap those waits but share the SM's math and bandwidth. Its
    epilogue runs ``subtiles`` passes in sequence, each reading ``split`` partials when split."""
    rate = sm_flops_per_s(machine, elem, precision) * mma_efficiency(m, n, elem)
    t_math = 2.0 * m * n * k / rate
    t_l2_prog = operand_bytes / machine.sm_l2_bytes_per_s
    waves = math.ceil(programs / (machine.sms * occupancy))
    load_latency = machine.load_latency_hbm_s if u_hbm else machine.load_latency_s
    t_wait = iterations * load_latency / max(1, stages - 1)
    per_wave = max(occupancy * max(t_math, t_l2_prog), t_wait)
    t_main = max(waves * per_wave, programs * operand_bytes / machine.l2_bytes_per_s,
                 hbm_bytes / machine.hbm_bytes_per_s)
    tile_waves = math.ceil(tiles / machine.sms)
    t_fix = tile_waves * fixup_bytes / machine.sm_l2_bytes_per_s
    if fixup_bytes:
        t_fix += tile_waves * subtiles * split * machine.partial_latency_s
    t_epi = max(tile_waves * epilogue_bytes / machine.sm_l2_bytes_per_s,
                tiles * epilogue_bytes / machine.l2_bytes_per_s,
                tiles * epilogue_hbm_bytes / machine.hbm_bytes_per_s)
    t_epi += tile_waves * subtiles * machine.subtile_latency_s
    parts = {"gap": gap, "latency": sync, "main": t_main, "fixup": t_fix, "epilogue": t_epi,
             "math": waves * occupancy * t_math, "l2": t_l2_prog * waves * occupancy, "wait": waves * t_wait}
    return LaunchEstimate(gap + sync + t_main + t_fix + t_epi, parts)


def big_gemm_seconds(machine: Machine, m: int, n: int, k: int, elem: int) -> float:
    """A library GEMM ``(m x k) @ (k x n)`` outside the recurrence: cuBLAS rate or HBM traffic."""
    flops = 2.0 * m * n * k
    rate = machine.gemm_flops_per_s if elem == 2 else machine.gemm_fp32_flops_per_s
    bytes_ = (m * k + k * n + m * n) * elem
    return max(flops / rate, bytes_ / machine.hbm_bytes_per_s)


def u_from_hbm(machine: Machine, u_bytes: int) -> bool:
    """U is re-read from HBM every step when it does not fit comfortably in L2 (with the step's streams)."""
    return u_bytes > 0.6 * machine.l2_bytes


def non_recurrent_seconds(machine: Machine, steps: int, batch: int, inp: int, hidden: int, gates: int,
                          elem: int) -> Dict[str, float]:
    """The forward+backward work around the recurrence: the input projection, ``dx``, ``dW_ih`` and ``dU``
    GEMMs (``db`` is a reduction over dz, counted as one read)."""
    rows, gh = steps * batch, gates * hidden
    return {
        "xproj": big_gemm_seconds(machine, rows, gh, inp, elem),
        "dx": big_gemm_seconds(machine, rows, inp, gh, elem),
        "dw_ih": big_gemm_seconds(machine, gh, inp, rows, elem),
        "dw_hh": big_gemm_seconds(machine, gh, hidden, rows, elem),
        "db": rows * gh * elem / machine.hbm_bytes_per_s,
    }


__all__ = ["Machine", "H200", "LaunchEstimate", "mma_efficiency", "sm_flops_per_s", "ctas_per_sm", "gemm_launch",
           "big_gemm_seconds", "u_from_hbm", "non_recurrent_seconds"]
