"""Pure-PyTorch recurrences: the oracle for every kernel, and the CPU path.

Two functions compute the same thing:

- :func:`naive_recurrence` is the readable oracle: a per-step loop that autograd differentiates, so its
  gradients need no hand-derived formula. Every other path is tested against it.
- :func:`reference_recurrence` is what ``backend="reference"`` runs. Same forward, but its backward is
  written out as backpropagation through time: the cell's elementwise math is still differentiated by
  autograd (step by step, from saved pre-activations), while the recurrent GEMMs are explicit, so
  ``dW_hh`` is one GEMM over all steps after the loop instead of a ``(4H, H)`` accumulation per step (that
  accumulation made autograd's loop 3-5x slower than ``nn.LSTM`` on a CPU).

Both hoist the input projection ``W x + b`` out of the time loop (one GEMM for all steps; autograd gives
``dW_ih``, ``db`` and ``dx`` as large GEMMs). Mixed precision: the gate math and the cell state ``c`` run in
float32 when the inputs are half precision; ``h`` is cast back to the compute dtype before it feeds the next
step's GEMM, as a fused kernel does.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .gates import GateSpec, cumax


def cell_update(z: Tensor, c_prev: Tensor, spec: GateSpec) -> Tuple[Tensor, Tensor]:
    """One step of the cell given all gate pre-activations ``z`` (``..., G*H``) and ``c_{t-1}``.

    Returns ``(h_t, c_t)`` in ``c_prev``'s dtype.
    """
    z = z.to(c_prev.dtype)
    if spec.classic:
        i, f, g, o = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if spec.aux == "-":
        z_f, z_u, z_o = z.chunk(3, dim=-1)
    else:
        z_f, z_a, z_u, z_o = z.chunk(4, dim=-1)
    f = cumax(z_f) if spec.primary == "O" else torch.sigmoid(z_f)
    if spec.aux == "R":
        # g = 2 r f + (1 - 2 r) f^2 = f^2 + 2 r f (1 - f)
        r = torch.sigmoid(z_a)
        g = torch.addcmul(f * f, r, f * (1 - f), value=2.0)
    elif spec.aux == "M":
        # ON-LSTM master gates with the master input gate tied to 1 - m: g = m (f + m - f m)
        m = cumax(z_a)
        g = m * (f + m - f * m)
    else:
        g = f
    u = torch.tanh(z_u)
    c = torch.lerp(u, c_prev, g)  # g c_{t-1} + (1 - g) u
    return torch.sigmoid(z_o) * torch.tanh(c), c


def _dtypes(compute_dtype: torch.dtype) -> torch.dtype:
    """The cell-state dtype for a compute dtype: float32 for half precision, else the same."""
    return torch.float32 if compute_dtype in (torch.float16, torch.bfloat16) else compute_dtype


def naive_recurrence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor, spec: GateSpec
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run one layer in one direction over ``x`` (``T, B, I``) from ``(h0, c0)`` (``B, H``); plain autograd.

    Returns ``(output (T, B, H), h_T, c_T)``; ``output`` and ``h_T`` in the compute dtype, ``c_T`` in
    float32 for half-precision inputs.
    """
    xproj = torch.nn.functional.linear(x, w_ih, bias)
    compute_dtype = xproj.dtype
    w_hh_t = w_hh.t().to(compute_dtype)
    h, c = h0.to(compute_dtype), c0.to(_dtypes(compute_dtype))
    outputs = []
    # unbind, not xproj[t]: indexing would make autograd scatter each step's gradient into a full-size zero
    # tensor (O(T^2) work in backward); unbind's backward stacks the step gradients once.
    for xp_t in xproj.unbind(0):
        h, c = cell_update(torch.addmm(xp_t, h, w_hh_t), c, spec)
        h = h.to(compute_dtype)
        outputs.append(h)
    out = torch.stack(outputs, 0) if outputs else xproj.new_empty(0, *h0.shape)
    return out, h, c


def _right_matmul(weight: Tensor, batch: int):
    """``a -> a @ weight.T`` for the per-step recurrent GEMM of a ``(batch, K)`` operand.

    On a CPU, for float32 and a weight big enough to matter, oneDNN's linear with a weight reordered once
    per sequence is 3-4x faster than ``torch.mm`` at these small-M shapes (measured: ``(16, 512) x
    (512, 2048)`` 85 us vs 250-350 us on 2 AMD EPYC cores, where MKL's small GEMM is slow); that is what
    ``nn.LSTM`` uses on a CPU too. Anything else, or any failure of that private op, uses ``F.linear``.
    """
    if (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.numel() >= 65536
            and torch.backends.mkldnn.is_available()):
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
            fn = lambda a: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")  # noqa: E731
            fn(weight.new_zeros(batch, weight.shape[1]))
            return fn
        except (RuntimeError, AttributeError):
            pass
    return lambda a: torch.nn.functional.linear(a, weight)


class _BPTT(torch.autograd.Function):
    """The recurrent part given the input projection: ``(xproj, w_hh, h0, c0) -> (out, h_T, c_T)``."""

    @staticmethod
    def forward(ctx, xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, spec: GateSpec):
        dtype, cell_dtype = xproj.dtype, _dtypes(xproj.dtype)
        steps, batch = xproj.shape[:2]
        hidden = w_hh.shape[1]
        rec = _right_matmul(w_hh.to(dtype).contiguous(), batch)
        # zeros, not empty: the buffers are written one step at a time, and first-touch page faults on a fresh
        # allocation cost more than the step's arithmetic (measured 4x on a 2-core VM); zeroing faults in bulk.
        hs = xproj.new_zeros(steps + 1, batch, hidden)  # h_0 .. h_T (h_{t-1} feeds dW_hh in backward)
        cs = xproj.new_zeros(steps + 1, batch, hidden, dtype=cell_dtype)
        zs = torch.zeros_like(xproj)
        hs[0], cs[0] = h0, c0
        for t in range(steps):
            torch.add(xproj[t], rec(hs[t]), out=zs[t])
            h, cs[t + 1] = cell_update(zs[t], cs[t], spec)
            hs[t + 1] = h
        ctx.spec = spec
        ctx.dtypes = (w_hh.dtype, h0.dtype, c0.dtype)
        ctx.save_for_backward(zs, hs, cs, w_hh)
        return hs[1:], hs[steps].clone(), cs[steps].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor, d_h: Tensor, d_c: Tensor):
        zs, hs, cs, w_hh = ctx.saved_tensors
        w_dtype, h0_dtype, c0_dtype = ctx.dtypes
        cell_dtype = cs.dtype
        back = _right_matmul(w_hh.to(zs.dtype).t().contiguous(), zs.shape[1])  # dz -> dz U
        dzs = torch.zeros_like(zs)  # zeros: see forward
        dh, dc = d_h.to(cell_dtype), d_c.to(cell_dtype)
        for t in range(zs.shape[0] - 1, -1, -1):
            dh = dh + d_out[t]
            with torch.enable_grad():
                z = zs[t].detach().requires_grad_()
                c_prev = cs[t].detach().requires_grad_()
                h, c = cell_update(z, c_prev, ctx.spec)
                dz, dc = torch.autograd.grad((h, c), (z, c_prev), (dh, dc))
            dzs[t] = dz
            dh = back(dzs[t]).to(cell_dtype)  # dh_{t-1} = dz_t U
        # dU = sum_t dz_t^T h_{t-1}: one GEMM over all steps
        dw = torch.mm(dzs.flatten(0, 1).t(), hs[:-1].flatten(0, 1)).to(w_dtype)
        return dzs, dw, dh.to(h0_dtype), dc.to(c0_dtype), None


def reference_recurrence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor, spec: GateSpec
) -> Tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`naive_recurrence`, with an explicit BPTT backward (see module docstring)."""
    xproj = torch.nn.functional.linear(x, w_ih, bias)  # all steps' W x + b in one GEMM (autocast applies)
    cell_dtype = _dtypes(xproj.dtype)
    device_type = x.device.type
    with torch.autocast(device_type, enabled=False):
        return _BPTT.apply(xproj, w_hh, h0.to(xproj.dtype), c0.to(cell_dtype), spec)
