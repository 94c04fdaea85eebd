"""Autograd Functions that string the Triton launch helpers into a differentiable recurrence.

``kernels`` below is a kernel family: any object with ``forward_sequence`` and ``backward_sequence``
following the launch-helper contract of ``urlstm_triton.kernels`` (the step kernels, or a persistent
kernel). ``config`` is a ``urlstm_triton.kernels.TileConfig``. ``gate_dtype``: the dtype the activated gates
are saved in for backward: the compute dtype (half the bytes in bf16/fp16) or fp32.

- :class:`FusedRecurrence` saves everything in forward (fastest): ``(xproj, w_hh, h0, c0) -> (out, h_T,
  c_T)``; autograd turns ``d xproj`` into ``dW_ih``, ``db`` and ``dx`` with large GEMMs.
- :class:`ChunkedRecurrence` saves only chunk-boundary states: ``(x, w_ih, bias, w_hh, h0, c0) -> ...``;
  it projects the input per chunk and, in backward, recomputes each chunk's forward, runs its reverse
  recurrence and accumulates ``dU``, ``dW_ih``, ``db`` with one GEMM per chunk.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _grad_or_zeros(g, like: Tensor, dtype=None) -> Tensor:
    dtype = dtype or like.dtype
    return torch.zeros(like.shape, dtype=dtype, device=like.device) if g is None else g.to(dtype).contiguous()


def run_forward(xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, mode: int, kernels, config,
                gate_dtype: Optional[torch.dtype]):
    """Forward over all steps: ``(hs (T+1, B, H), cs (T+1, B, H) fp32, gates (T, B, G*H) or None)``.
    With ``gate_dtype=None`` (inference) no per-step gates are written."""
    steps, batch, _ = xproj.shape
    hidden = w_hh.shape[1]
    hs = xproj.new_empty(steps + 1, batch, hidden)  # h_0 .. h_T; h_{t-1} feeds dU in backward
    cs = torch.empty(steps + 1, batch, hidden, dtype=torch.float32, device=xproj.device)
    hs[0] = h0
    cs[0] = c0
    gates = None if gate_dtype is None else torch.empty(xproj.shape, dtype=gate_dtype, device=xproj.device)
    kernels.forward_sequence(xproj, w_hh, hs, cs, gates, mode, config)
    return hs, cs, gates


class FusedRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, mode: int, kernels, config,
                gate_dtype: torch.dtype):
        hs, cs, gates = run_forward(xproj, w_hh, h0, c0, mode, kernels, config, gate_dtype)
        ctx.mode, ctx.kernels, ctx.config = mode, kernels, config
        ctx.dtypes = (h0.dtype, c0.dtype)
        ctx.save_for_backward(gates, cs, hs, w_hh)
        steps = xproj.shape[0]
        return hs[1:], hs[steps].clone(), cs[steps].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        gates, cs, hs, w_hh = ctx.saved_tensors
        h0_dtype, c0_dtype = ctx.dtypes
        d_out = _grad_or_zeros(d_out, hs[1:])
        dc = _grad_or_zeros(d_c, cs[0], torch.float32).clone()  # updated in place to dL/dc_0
        dh_last = _grad_or_zeros(d_h, cs[0], torch.float32)
        dzs = torch.empty(gates.shape, dtype=hs.dtype, device=hs.device)
        ctx.kernels.backward_sequence(d_out, w_hh, gates, cs, dzs, dc, ctx.mode, ctx.config, dh_last=dh_last)
        # dU = sum_t dz_t^T h_{t-1}: one GEMM over all steps
        dw = torch.mm(dzs.flatten(0, 1).t(), hs[:-1].flatten(0, 1)) if ctx.needs_input_grad[1] else None
        dh0 = torch.mm(dzs[0].float(), w_hh.float()).to(h0_dtype)
        return dzs, dw, dh0, dc.to(c0_dtype), None, None, None, None


class ChunkedRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, bias, w_hh: Tensor, h0: Tensor, c0: Tensor, mode: int, chunk: int,
                kernels, config, gate_dtype: torch.dtype):
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        starts = list(range(0, steps, chunk))
        hs = x.new_empty(steps + 1, batch, hidden)  # every h is an output; a chunk writes hs[s : e + 1]
        hs[0] = h0
        cs = torch.empty(min(chunk, steps) + 1, batch, hidden, dtype=torch.float32, device=x.device)
        h_bound = x.new_empty(len(starts), batch, hidden)
        c_bound = torch.empty(len(starts), batch, hidden, dtype=torch.float32, device=x.device)
        c = c0.to(torch.float32)
        for i, s in enumerate(starts):
            e = min(steps, s + chunk)
            h_bound[i] = hs[s]
            c_bound[i] = c
            cs_k = cs[: e - s + 1]
            cs_k[0] = c
            xproj = F.linear(x[s:e], w_ih, bias).contiguous()
            kernels.forward_sequence(xproj, w_hh, hs[s : e + 1], cs_k, None, mode, config)
            c = cs_k[e - s].clone()
        ctx.mode, ctx.chunk, ctx.kernels, ctx.config, ctx.gate_dtype = mode, chunk, kernels, config, gate_dtype
        ctx.dtypes = (h0.dtype, c0.dtype)
        ctx.save_for_backward(x, w_ih, bias, w_hh, h_bound, c_bound)
        return hs[1:], hs[steps].clone(), c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        x, w_ih, bias, w_hh, h_bound, c_bound = ctx.saved_tensors
        mode, chunk, kernels, config = ctx.mode, ctx.chunk, ctx.kernels, ctx.config
        h0_dtype, c0_dtype = ctx.dtypes
        steps, batch, in_size = x.shape
        gh, hidden = w_hh.shape
        dev, f32 = x.device, torch.float32
        d_out = _grad_or_zeros(d_out, x.new_empty(steps, batch, hidden))
        dc = _grad_or_zeros(d_c, c_bound[0], f32).clone()
        dh_last = _grad_or_zeros(d_h, c_bound[0], f32)
        k = min(chunk, steps)
        hs = x.new_empty(k + 1, batch, hidden)
        cs = torch.empty(k + 1, batch, hidden, dtype=f32, device=dev)
        gates = torch.empty(k, batch, gh, dtype=ctx.gate_dtype, device=dev)
        dzs = x.new_empty(k, batch, gh)
        need_x, need_wih, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dx = x.new_empty(steps, batch, in_size) if need_x else None
        dw_ih = torch.zeros(gh, in_size, dtype=f32, device=dev) if need_wih else None
        db = torch.zeros(gh, dtype=f32, device=dev) if (need_b and bias is not None) else None
        dw_hh = torch.zeros(gh, hidden, dtype=f32, device=dev)
        dz_next = None
        for i in range(len(h_bound) - 1, -1, -1):
            s = i * chunk
            e = min(steps, s + chunk)
            n = e - s
            hs_k, cs_k, gates_k, dz_k = hs[: n + 1], cs[: n + 1], gates[:n], dzs[:n]
            hs_k[0] = h_bound[i]
            cs_k[0] = c_bound[i]
            x_k = x[s:e]
            kernels.forward_sequence(F.linear(x_k, w_ih, bias).contiguous(), w_hh, hs_k, cs_k, gates_k, mode,
                                     config)
            if dz_next is None:
                kernels.backward_sequence(d_out[s:e], w_hh, gates_k, cs_k, dz_k, dc, mode, config, dh_last=dh_last)
            else:
                kernels.backward_sequence(d_out[s:e], w_hh, gates_k, cs_k, dz_k, dc, mode, config, dz_next=dz_next)
            dz_flat = dz_k.flatten(0, 1)
            dw_hh += torch.mm(dz_flat.t(), hs_k[:-1].flatten(0, 1))
            if dw_ih is not None:
                dw_ih += torch.mm(dz_flat.t(), x_k.flatten(0, 1))
            if db is not None:
                db += dz_flat.sum(0, dtype=f32)
            if dx is not None:
                torch.mm(dz_flat, w_ih, out=dx[s:e].view(n * batch, in_size))
            dz_next = dz_k[0].clone()  # the next (earlier) chunk reads it while overwriting dzs
        dh0 = torch.mm(dz_next.float(), w_hh.float()).to(h0_dtype)
        return (dx, None if dw_ih is None else dw_ih.to(w_ih.dtype), None if db is None else db.to(bias.dtype),
                dw_hh.to(w_hh.dtype), dh0, dc.to(c0_dtype), None, None, None, None, None)
