"""Forward step kernel of the fused recurrence and its launch helper :func:`forward_sequence`.

One launch per time step. Program ``(pid_b, pid_s, pid_h)`` owns ``block_b`` batch rows x ``block_h`` hidden
units, with *all* gate blocks of those units in one MMA: its weight tile is ``(block_k, 4 block_h)``, column
``4 j + q`` being ``U[q H + unit_j, k]`` (gate-minor; the tied mode's three gate blocks leave the fourth column
of every unit zero), so each reduction step is one ``(block_b x block_k) @ (block_k x 4 block_h)`` MMA and the
``h`` tile is read once for all gates. After the reduction the accumulator splits into the gate tiles
(:func:`common.split_gates`); the input projection is added, and the gate math, the cell update and the hidden
update run as the GEMM's epilogue: no ``G H``-wide pre-activation makes a round trip through memory.

With ``split_k > 1`` the ``split_k`` programs of a tile each reduce a slice of the ``H`` inputs (when the
batch and hidden tiles alone would leave multiprocessors idle, or to make tiles wider and operands fewer),
write fp32 partials to a workspace, and the last of them to arrive (:func:`common.arrive`) sums the partials
in a fixed order (deterministic) and runs the epilogue, ``epi_h`` units at a time (registers). With one split
and ``epi_h == block_h`` the epilogue runs straight from the accumulator, with no workspace.

Writes ``h_t`` (compute dtype), ``c_t`` (fp32) and, for backward, the activated gates (the dtype of the
``gates`` buffer: the compute dtype, or fp32).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import (MODE_CLASSIC, MODE_REFINE, MODE_TIED, TileConfig, Tiles, arrive, check_library_gemm,
                     dot_precision, forward_cell_store, forward_epilogue, load_gate_blocks, num_gates,
                     pdl_launch_options, product_fp32, split_range, wait_for_previous_step)


@triton.jit(do_not_specialize=["t"])
def _fwd_step_kernel(
    xp_ptr, w_ptr, hs_ptr, cs_ptr, gates_ptr, ws_ptr, count_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, SAVE_GATES: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    EPI_H: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_previous_step(PDL)  # Tiles.pdl: before any access to memory the previous step writes
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_h = tl.program_id(2)
    n_h = tl.num_programs(2)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    col = tl.arange(0, 4 * BLOCK_H)          # gate-minor: column 4 j + q = gate q of unit j
    cu = pid_h * BLOCK_H + col // 4
    cq = col % 4
    mc = (cu < H) & (cq < G)
    t64 = t.to(tl.int64)
    bh = B * H
    h_prev = hs_ptr + t64 * bh               # hs[t] = h_{t-1} (hs[0] = h_0)
    w_rows = (cq * H + cu).to(tl.int64) * H  # row of U behind each column
    DIRECT: tl.constexpr = (SPLIT_K == 1) and (EPI_H == BLOCK_H)

    k_lo, k_hi = split_range(pid_s, H, SPLIT_K, BLOCK_K)
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < k_hi
        hk = tl.load(h_prev + rb[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + w_rows[None, :] + rk[:, None], mask=mk[:, None] & mc[None, :], other=0.0)
        acc = tl.dot(hk, w, acc, input_precision=PRECISION)

    if DIRECT:
        forward_epilogue(acc, rb, mb, pid_h * BLOCK_H, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE, G,
                         SAVE_GATES, BLOCK_B, BLOCK_H)
    else:  # partials -> workspace (SPLIT_K, B, 4 H), gate-minor like the accumulator
        wide = 4 * H
        tl.store(ws_ptr + pid_s * (B * wide) + rb[:, None] * wide + (pid_h * 4 * BLOCK_H + col)[None, :], acc,
                 mask=mb[:, None] & (cu < H)[None, :])
        last = True
        if SPLIT_K > 1:
            last = arrive(count_ptr + pid_b * n_h + pid_h, SPLIT_K)
        if last:  # sum the tile's partials in a fixed order (deterministic), EPI_H units at a time
            tl.debug_barrier()
            sub = tl.arange(0, 4 * EPI_H)
            for u0 in range(pid_h * BLOCK_H, pid_h * BLOCK_H + BLOCK_H, EPI_H):
                cols = 4 * u0 + sub
                m = mb[:, None] & (cols < wide)[None, :]
                part = ws_ptr + rb[:, None] * wide + cols[None, :]
                z = tl.zeros((BLOCK_B, 4 * EPI_H), dtype=tl.float32)
                for s in range(SPLIT_K):
                    z += tl.load(part + s * (B * wide), mask=m, other=0.0, cache_modifier=".cg")
                forward_epilogue(z, rb, mb, u0, t64, B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE, G, SAVE_GATES,
                                 BLOCK_B, EPI_H)


@triton.jit(do_not_specialize=["t"])
def _fwd_gates_kernel(z_ptr, xp_ptr, hs_ptr, cs_ptr, gates_ptr, t, B, H, MODE: tl.constexpr, G: tl.constexpr,
                      SAVE_GATES: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """``Tiles.gemm``'s second launch of a step: the gate math from the library GEMM's fp32 product ``z``
    (``(B, G H)``, gate-major like ``xproj``)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    z0, z1, z2, z3 = load_gate_blocks(z_ptr + rb[:, None] * (G * H) + rh[None, :], H,
                                      mb[:, None] & (rh < H)[None, :], G)
    forward_cell_store(z0, z1, z2, z3, rb, mb, rh, t.to(tl.int64), B, H, xp_ptr, hs_ptr, cs_ptr, gates_ptr, MODE, G,
                       SAVE_GATES)


def forward_grid(batch: int, hidden: int, tiles: Tiles) -> tuple:
    """Programs of one forward step launch: (batch tiles, splits, hidden tiles); batch tiles vary fastest, so
    programs that read the same slice of U run side by side."""
    return (triton.cdiv(batch, tiles.block_b), tiles.split_k, triton.cdiv(hidden, tiles.block_h))


def forward_sequence(
    xproj: torch.Tensor,
    w_hh: torch.Tensor,
    hs: torch.Tensor,
    cs: torch.Tensor,
    gates: Optional[torch.Tensor],
    mode: int,
    config: TileConfig,
) -> None:
    """Run the recurrence over the K steps of ``xproj``, one step-kernel launch per step.

    See the launch-helper contract in ``urlstm_triton.kernels`` (``kernels/__init__.py``).
    """
    steps, batch, gh = xproj.shape
    hidden = w_hh.shape[1]
    assert gh == num_gates(mode) * hidden and w_hh.shape[0] == gh
    assert hs.shape == (steps + 1, batch, hidden) and cs.shape == hs.shape and cs.dtype == torch.float32
    assert xproj.is_contiguous() and w_hh.is_contiguous() and hs.is_contiguous() and cs.is_contiguous()
    save = gates is not None
    if save:
        assert gates.shape == xproj.shape and gates.dtype in (torch.float32, xproj.dtype) and gates.is_contiguous()
    if steps == 0:
        return
    tiles = config.fwd
    gates_arg = gates if save else cs  # any pointer: never written when SAVE_GATES is False
    if tiles.gemm:  # per step: z = h_{t-1} U^T (library GEMM, fp32 out), then the gate math
        check_library_gemm(w_hh)
        z = torch.empty(batch, gh, dtype=torch.float32, device=xproj.device)
        u_t = w_hh.t()
        grid = (triton.cdiv(batch, tiles.block_b), triton.cdiv(hidden, tiles.block_h))
        meta = dict(MODE=mode, G=num_gates(mode), SAVE_GATES=save, BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h,
                    num_warps=tiles.num_warps)
        for t in range(steps):
            product_fp32(hs[t], u_t, z)
            _fwd_gates_kernel[grid](z, xproj, hs, cs, gates_arg, t, batch, hidden, **meta)
        return
    grid = forward_grid(batch, hidden, tiles)
    direct = tiles.split_k == 1 and tiles.epi_h == tiles.block_h
    # any pointer where a buffer is never touched: the workspace without partials, the counter without a split
    ws = cs if direct else torch.empty(tiles.split_k, batch, 4 * hidden, dtype=torch.float32, device=xproj.device)
    count = torch.zeros(grid[0] * grid[2], dtype=torch.int32, device=xproj.device) if tiles.split_k > 1 else cs
    meta = dict(MODE=mode, G=num_gates(mode), SAVE_GATES=save, PRECISION=dot_precision(config, xproj.dtype),
                BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h, BLOCK_K=tiles.block_k, SPLIT_K=tiles.split_k,
                EPI_H=tiles.epi_h, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
                **pdl_launch_options(tiles, xproj.device))
    for t in range(steps):
        _fwd_step_kernel[grid](xproj, w_hh, hs, cs, gates_arg, ws, count, t, batch, hidden, **meta)


__all__ = ["forward_sequence", "forward_grid", "MODE_TIED", "MODE_REFINE", "MODE_CLASSIC"]
