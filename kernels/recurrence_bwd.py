"""Backward step kernel of the fused recurrence and its launch helper :func:`backward_sequence`.

One launch per time step, in reverse. The step's product ``dz_{t+1} @ U`` (``(B x G H) @ (G H x H)``) is a
GEMM whose reduction runs over all ``G H`` gate units in one loop. Program ``(pid_b, pid_s, pid_h)`` owns
``block_b`` batch rows x ``block_h`` hidden units of its result and the ``pid_s``-th of ``split_k`` slices of
the reduction: wide hidden tiles mean that ``dz`` is read by few programs (``H / block_h`` times per step,
not once per 16 units), and the split gives every multiprocessor work when the tiles are few. Each program
writes its fp32 partial sum; the last program of a tile to arrive (:func:`common.arrive`) adds the partials
in a fixed order (deterministic) and runs the epilogue, ``epi_h`` units at a time so that its registers stay
few: ``dh_t = d_out[t] + dz_{t+1} U`` (or ``+ dh_last`` at the sequence's last step), the gate derivatives
from the saved activations and cell states, writing ``dz_t`` (compute dtype) and updating the fp32 ``dc``
tile in place to ``dc_{t-1}``. With one split and ``epi_h == block_h`` the epilogue runs straight from the
accumulator, with no workspace. The weight gradients are not formed here: the caller does
``dU = dz^T H_prev`` as one GEMM after the loop.

Derivatives (``dc`` arrives from step t+1, ``tc = tanh(c_t)``):
  all modes:  dz_o = dh tc o (1 - o);  dc += dh o (1 - tc^2)
  tied:       dz_u = dc (1 - f)(1 - u^2);  dz_f = dc (c_{t-1} - u) f (1 - f);  dc_{t-1} = dc f
  refine:     g = f^2 + 2 r f (1 - f);  dg = dc (c_{t-1} - u);  dz_u = dc (1 - g)(1 - u^2)
              dz_f = dg (2r + 2(1 - 2r) f) f (1 - f);  dz_r = dg 2 f (1 - f) r (1 - r);  dc_{t-1} = dc g
  classic:    dz_i = dc g i (1 - i);  dz_f = dc c_{t-1} f (1 - f);  dz_g = dc i (1 - g^2);  dc_{t-1} = dc f
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import (TileConfig, Tiles, arrive, backward_epilogue, check_library_gemm, dot_precision, num_gates,
                     pdl_launch_options, product_fp32, split_range, wait_for_previous_step)


@triton.jit(do_not_specialize=["t", "tn"])
def _bwd_step_kernel(
    dout_ptr, dz_ptr, dzn_ptr, dh_in_ptr, w_ptr, gates_ptr, cs_ptr, dc_ptr, ws_ptr, count_ptr, t, tn, B, H,
    MODE: tl.constexpr, G: tl.constexpr, HAS_NEXT: tl.constexpr, PRECISION: tl.constexpr,
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
    rh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mh = rh < H
    t64 = t.to(tl.int64)
    bh = B * H
    gh = G * H
    DIRECT: tl.constexpr = (SPLIT_K == 1) and (EPI_H == BLOCK_H)

    acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    last = True
    if HAS_NEXT:  # dz_{t+1} U over this program's slice of the G*H gate units
        dzn = dzn_ptr + tn.to(tl.int64) * B * gh
        k_lo, k_hi = split_range(pid_s, gh, SPLIT_K, BLOCK_K)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            mk = rk < k_hi
            dz = tl.load(dzn + rb[:, None] * gh + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
            w = tl.load(w_ptr + rk[:, None].to(tl.int64) * H + rh[None, :], mask=mk[:, None] & mh[None, :],
                        other=0.0)
            acc = tl.dot(dz, w, acc, input_precision=PRECISION)
        if not DIRECT:  # partials -> workspace (SPLIT_K, B, H)
            tl.store(ws_ptr + pid_s * bh + rb[:, None] * H + rh[None, :], acc, mask=mb[:, None] & mh[None, :])
            if SPLIT_K > 1:
                last = arrive(count_ptr + pid_b * n_h + pid_h, SPLIT_K)
    if DIRECT:
        if HAS_NEXT:
            dh = acc
        else:
            hc = rb[:, None] * H + rh[None, :]
            dh = tl.load(dh_in_ptr + hc, mask=mb[:, None] & mh[None, :], other=0.0)
        backward_epilogue(dh, rb, mb, rh, t64, B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, MODE, G)
    elif last:
        tl.debug_barrier()  # this program's own partial stores, from all its threads, come first
        for u0 in range(0, BLOCK_H, EPI_H):
            units = pid_h * BLOCK_H + u0 + tl.arange(0, EPI_H)
            m2 = mb[:, None] & (units < H)[None, :]
            hc = rb[:, None] * H + units[None, :]
            if HAS_NEXT:
                dh = tl.zeros((BLOCK_B, EPI_H), dtype=tl.float32)
                for s in range(SPLIT_K):  # fixed order: the sum does not depend on which program came last
                    dh += tl.load(ws_ptr + s * bh + hc, mask=m2, other=0.0, cache_modifier=".cg")
            else:
                dh = tl.load(dh_in_ptr + hc, mask=m2, other=0.0)
            backward_epilogue(dh, rb, mb, units, t64, B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, MODE, G)


@triton.jit(do_not_specialize=["t"])
def _bwd_gates_kernel(dh_ptr, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, t, B, H, MODE: tl.constexpr,
                      G: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """``Tiles.gemm``'s second launch of a step: the gate derivatives from ``dh`` (fp32 ``(B, H)``: the library
    GEMM's ``dz_{t+1} U``, or ``dh_last`` at the sequence's last step)."""
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mb = rb < B
    rh = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dh = tl.load(dh_ptr + rb[:, None] * H + rh[None, :], mask=mb[:, None] & (rh < H)[None, :], other=0.0)
    backward_epilogue(dh, rb, mb, rh, t.to(tl.int64), B, H, dout_ptr, dz_ptr, gates_ptr, cs_ptr, dc_ptr, MODE, G)


def backward_grid(batch: int, hidden: int, tiles: Tiles, has_next: bool = True) -> tuple:
    """Programs of one backward step launch: (batch tiles, splits, hidden tiles). The launch of a sequence's
    last step has no product to split."""
    return (triton.cdiv(batch, tiles.block_b), tiles.split_k if has_next else 1, triton.cdiv(hidden, tiles.block_h))


def backward_sequence(
    d_out: torch.Tensor,
    w_hh: torch.Tensor,
    gates: torch.Tensor,
    cs: torch.Tensor,
    dzs: torch.Tensor,
    dc: torch.Tensor,
    mode: int,
    config: TileConfig,
    *,
    dz_next: Optional[torch.Tensor] = None,
    dh_last: Optional[torch.Tensor] = None,
) -> None:
    """Reverse recurrence over the K steps of a chunk, one step-kernel launch per step, last step first.

    See the launch-helper contract in ``urlstm_triton.kernels`` (``kernels/__init__.py``).
    """
    steps, batch, hidden = d_out.shape
    gh = num_gates(mode) * hidden
    assert (dz_next is None) != (dh_last is None), "give exactly one of dz_next, dh_last"
    assert w_hh.shape == (gh, hidden) and gates.shape == (steps, batch, gh) and dzs.shape == gates.shape
    assert cs.shape == (steps + 1, batch, hidden) and dc.shape == (batch, hidden)
    assert cs.dtype == dc.dtype == torch.float32 and gates.dtype in (torch.float32, dzs.dtype)
    for name, t in (("d_out", d_out), ("w_hh", w_hh), ("gates", gates), ("cs", cs), ("dzs", dzs), ("dc", dc)):
        assert t.is_contiguous(), f"{name} must be contiguous"
    if dz_next is not None:
        assert dz_next.shape == (batch, gh) and dz_next.is_contiguous()
    else:
        assert dh_last.shape == (batch, hidden) and dh_last.dtype == torch.float32 and dh_last.is_contiguous()
    if steps == 0:
        return
    tiles = config.bwd
    if tiles.gemm:  # per step: dh = dz_{t+1} U (library GEMM, fp32 out), then the gate derivatives
        check_library_gemm(w_hh)
        dh = torch.empty(batch, hidden, dtype=torch.float32, device=d_out.device)
        grid = (triton.cdiv(batch, tiles.block_b), triton.cdiv(hidden, tiles.block_h))
        meta = dict(MODE=mode, G=num_gates(mode), BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h,
                    num_warps=tiles.num_warps)
        for t in range(steps - 1, -1, -1):
            last = t == steps - 1
            if last and dz_next is None:
                dh_t = dh_last
            else:
                product_fp32(dz_next if last else dzs[t + 1], w_hh, dh)
                dh_t = dh
            _bwd_gates_kernel[grid](dh_t, d_out, dzs, gates, cs, dc, t, batch, hidden, **meta)
        return
    direct = tiles.split_k == 1 and tiles.epi_h == tiles.block_h
    grid = backward_grid(batch, hidden, tiles)
    ws = (dc if direct else
          torch.empty(tiles.split_k, batch, hidden, dtype=torch.float32, device=d_out.device))
    count = (torch.zeros(grid[0] * grid[2], dtype=torch.int32, device=d_out.device) if tiles.split_k > 1 else dc)
    meta = dict(MODE=mode, G=num_gates(mode), PRECISION=dot_precision(config, dzs.dtype),
                BLOCK_B=tiles.block_b, BLOCK_H=tiles.block_h, BLOCK_K=tiles.block_k, EPI_H=tiles.epi_h,
                num_warps=tiles.num_warps, num_stages=tiles.num_stages, **pdl_launch_options(tiles, d_out.device))
    for t in range(steps - 1, -1, -1):
        last = t == steps - 1
        if last and dz_next is None:
            _bwd_step_kernel[backward_grid(batch, hidden, tiles, has_next=False)](
                d_out, dzs, dzs, dh_last, w_hh, gates, cs, dc, ws, count, t, 0, batch, hidden,
                HAS_NEXT=False, SPLIT_K=1, **meta)
        else:
            dzn, tn = (dz_next, 0) if last else (dzs, t + 1)
            _bwd_step_kernel[grid](d_out, dzs, dzn, dc, w_hh, gates, cs, dc, ws, count, t, tn, batch, hidden,
                                   HAS_NEXT=True, SPLIT_K=tiles.split_k, **meta)


__all__ = ["backward_sequence", "backward_grid"]
