"""Forward step kernel of the fused recurrence and its launch helper :func:`forward_sequence`.

One launch per time step. Program ``(pid_b, pid_h)`` owns ``block_b`` batch rows x ``block_h`` hidden units
and computes *all* gate blocks of those units: ``G`` accumulators ``h_{t-1} U_q^T`` (``tl.dot``, fp32
accumulation), plus the precomputed input projection, then the gate math, the cell update and the hidden
update as the GEMM's epilogue; no G*H-wide pre-activation makes a round trip through memory. It writes
``h_t`` (compute dtype), ``c_t`` (fp32) and, for backward, the activated gates (fp32).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import MODE_CLASSIC, MODE_REFINE, MODE_TIED, TileConfig, cell_forward, dot_precision, num_gates


@triton.jit
def _gate_dot(acc, hk, w_ptr, q, rk, rh, mk, mh, H, PRECISION: tl.constexpr):
    # acc += h[:, rk] @ U[q*H + rh, rk]^T ; the weight tile is loaded as (block_k, block_h).
    w = tl.load(w_ptr + (q * H + rh)[None, :] * H + rk[:, None], mask=mk[:, None] & mh[None, :], other=0.0)
    return acc + tl.dot(hk, w, input_precision=PRECISION)


@triton.jit(do_not_specialize=["t"])
def _fwd_step_kernel(
    xp_ptr, w_ptr, hs_ptr, cs_ptr, gates_ptr, t, B, H,
    MODE: tl.constexpr, G: tl.constexpr, SAVE_GATES: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    t64 = t.to(tl.int64)
    bh = B * H  # elements of one (B, H) step
    h_prev = hs_ptr + t64 * bh  # hs[t] = h_{t-1} (hs[0] = h_0)

    acc0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        hk = tl.load(h_prev + rb[:, None] * H + rk[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        acc0 = _gate_dot(acc0, hk, w_ptr, 0, rk, rh, mk, mh, H, PRECISION)
        acc1 = _gate_dot(acc1, hk, w_ptr, 1, rk, rh, mk, mh, H, PRECISION)
        acc2 = _gate_dot(acc2, hk, w_ptr, 2, rk, rh, mk, mh, H, PRECISION)
        if G == 4:
            acc3 = _gate_dot(acc3, hk, w_ptr, 3, rk, rh, mk, mh, H, PRECISION)

    m2 = mb[:, None] & mh[None, :]
    gh = G * H
    row = rb[:, None] * gh + rh[None, :]  # gate block 0 of (b, j) in a (B, G*H) step
    xp = xp_ptr + t64 * B * gh
    z0 = acc0 + tl.load(xp + row, mask=m2, other=0.0).to(tl.float32)
    z1 = acc1 + tl.load(xp + row + H, mask=m2, other=0.0).to(tl.float32)
    z2 = acc2 + tl.load(xp + row + 2 * H, mask=m2, other=0.0).to(tl.float32)
    hc = rb[:, None] * H + rh[None, :]
    c_prev = tl.load(cs_ptr + t64 * bh + hc, mask=m2, other=0.0)
    z3 = z2  # unused in the tied mode (three gate blocks)
    if G == 4:
        z3 = acc3 + tl.load(xp + row + 3 * H, mask=m2, other=0.0).to(tl.float32)
    h, c, a0, a1, a2, a3 = cell_forward(z0, z1, z2, z3, c_prev, MODE)
    tl.store(cs_ptr + (t64 + 1) * bh + hc, c, mask=m2)
    tl.store(hs_ptr + (t64 + 1) * bh + hc, h.to(hs_ptr.dtype.element_ty), mask=m2)
    if SAVE_GATES:
        gp = gates_ptr + t64 * B * gh + row
        tl.store(gp, a0, mask=m2)
        tl.store(gp + H, a1, mask=m2)
        tl.store(gp + 2 * H, a2, mask=m2)
        if G == 4:
            tl.store(gp + 3 * H, a3, mask=m2)


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
        assert gates.shape == xproj.shape and gates.dtype == torch.float32 and gates.is_contiguous()
    grid = (triton.cdiv(batch, config.block_b), triton.cdiv(hidden, config.block_h))
    gates_arg = gates if save else cs  # any pointer: never written when SAVE_GATES is False
    for t in range(steps):
        _fwd_step_kernel[grid](
            xproj, w_hh, hs, cs, gates_arg, t, batch, hidden,
            MODE=mode, G=num_gates(mode), SAVE_GATES=save, PRECISION=dot_precision(config, xproj.dtype),
            BLOCK_B=config.block_b, BLOCK_H=config.block_h, BLOCK_K=config.block_k, num_warps=config.num_warps,
        )


__all__ = ["forward_sequence", "MODE_TIED", "MODE_REFINE", "MODE_CLASSIC"]
