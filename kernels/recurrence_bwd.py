"""Backward step kernel of the fused recurrence and its launch helper :func:`backward_sequence`.

One launch per time step, in reverse. Program ``(pid_b, pid_h)`` owns ``block_b`` batch rows x ``block_h``
hidden units. Prologue: ``dh_t[tile] = d_out[t][tile] + (dz_{t+1} @ U)[:, tile]`` (``tl.dot`` over the
G*H gate units, fp32 accumulation). Epilogue: the gate derivatives from the saved activations and cell
states, writing ``dz_t`` (compute dtype) and updating the fp32 ``dc`` tile in place to ``dc_{t-1}``.
The weight gradients are not formed here: the caller does ``dU = dz^T H_prev`` as one GEMM after the loop.

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

from .common import TileConfig, cell_backward, dot_precision, num_gates


@triton.jit
def _dz_dot(acc, dz_ptr, w_ptr, q, rb, rh, mb, mh, H, GH, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    # acc += dz[:, q*H : (q+1)*H] @ U[q*H : (q+1)*H, rh]
    for k0 in range(0, H, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mk = rk < H
        dz = tl.load(dz_ptr + rb[:, None] * GH + (q * H + rk)[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
        w = tl.load(w_ptr + (q * H + rk)[:, None] * H + rh[None, :], mask=mk[:, None] & mh[None, :], other=0.0)
        acc += tl.dot(dz, w, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["t", "tn"])
def _bwd_step_kernel(
    dout_ptr, dz_ptr, dzn_ptr, dh_in_ptr, w_ptr, gates_ptr, cs_ptr, dc_ptr, t, tn, B, H,
    MODE: tl.constexpr, G: tl.constexpr, HAS_NEXT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rb = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mb = rb < B
    mh = rh < H
    m2 = mb[:, None] & mh[None, :]
    t64 = t.to(tl.int64)
    bh = B * H
    gh = G * H
    hc = rb[:, None] * H + rh[None, :]

    # Prologue: dh_t = d_out[t] + dz_{t+1} U (or + dh_in at the last step of the sequence).
    dh = tl.load(dout_ptr + t64 * bh + hc, mask=m2, other=0.0).to(tl.float32)
    if HAS_NEXT:
        dzn = dzn_ptr + tn.to(tl.int64) * B * gh
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        acc = _dz_dot(acc, dzn, w_ptr, 0, rb, rh, mb, mh, H, gh, BLOCK_K, PRECISION)
        acc = _dz_dot(acc, dzn, w_ptr, 1, rb, rh, mb, mh, H, gh, BLOCK_K, PRECISION)
        acc = _dz_dot(acc, dzn, w_ptr, 2, rb, rh, mb, mh, H, gh, BLOCK_K, PRECISION)
        if G == 4:
            acc = _dz_dot(acc, dzn, w_ptr, 3, rb, rh, mb, mh, H, gh, BLOCK_K, PRECISION)
        dh += acc
    else:
        dh += tl.load(dh_in_ptr + hc, mask=m2, other=0.0)

    # Epilogue: gate derivatives.
    row = rb[:, None] * gh + rh[None, :]
    gp = gates_ptr + t64 * B * gh + row
    a0 = tl.load(gp, mask=m2, other=0.0)
    a1 = tl.load(gp + H, mask=m2, other=0.0)
    a2 = tl.load(gp + 2 * H, mask=m2, other=0.0)
    c_prev = tl.load(cs_ptr + t64 * bh + hc, mask=m2, other=0.0)
    c = tl.load(cs_ptr + (t64 + 1) * bh + hc, mask=m2, other=0.0)
    dc = tl.load(dc_ptr + hc, mask=m2, other=0.0)
    a3 = a2  # unused in the tied mode (three gate blocks)
    if G == 4:
        a3 = tl.load(gp + 3 * H, mask=m2, other=0.0)
    dz0, dz1, dz2, dz3, dc_prev = cell_backward(a0, a1, a2, a3, c_prev, c, dh, dc, MODE)
    tl.store(dc_ptr + hc, dc_prev, mask=m2)
    dzp = dz_ptr + t64 * B * gh + row
    ty = dz_ptr.dtype.element_ty
    tl.store(dzp, dz0.to(ty), mask=m2)
    tl.store(dzp + H, dz1.to(ty), mask=m2)
    tl.store(dzp + 2 * H, dz2.to(ty), mask=m2)
    if G == 4:
        tl.store(dzp + 3 * H, dz3.to(ty), mask=m2)


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
    assert gates.dtype == cs.dtype == dc.dtype == torch.float32
    for name, t in (("d_out", d_out), ("w_hh", w_hh), ("gates", gates), ("cs", cs), ("dzs", dzs), ("dc", dc)):
        assert t.is_contiguous(), f"{name} must be contiguous"
    if dz_next is not None:
        assert dz_next.shape == (batch, gh) and dz_next.is_contiguous()
    else:
        assert dh_last.shape == (batch, hidden) and dh_last.dtype == torch.float32 and dh_last.is_contiguous()
    grid = (triton.cdiv(batch, config.block_b), triton.cdiv(hidden, config.block_h))
    meta = dict(MODE=mode, G=num_gates(mode), PRECISION=dot_precision(config, dzs.dtype),
                BLOCK_B=config.block_b, BLOCK_H=config.block_h, BLOCK_K=config.block_k, num_warps=config.num_warps)
    for t in range(steps - 1, -1, -1):
        last = t == steps - 1
        if last and dz_next is None:
            _bwd_step_kernel[grid](d_out, dzs, dzs, dh_last, w_hh, gates, cs, dc, t, 0, batch, hidden,
                                   HAS_NEXT=False, **meta)
        else:
            dzn, tn = (dz_next, 0) if last else (dzs, t + 1)
            _bwd_step_kernel[grid](d_out, dzs, dzn, dc, w_hh, gates, cs, dc, t, tn, batch, hidden,
                                   HAS_NEXT=True, **meta)


__all__ = ["backward_sequence"]
