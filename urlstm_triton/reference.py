"""Pure-PyTorch recurrences: the oracle for every kernel, and the CPU path.

Two functions compute the same thing:

- :func:`naive_recurrence` is the readable oracle: a per-step loop that autograd differentiates, so its
  gradients need no hand-derived formula. Every other path is tested against it.
- :func:`reference_recurrence` is what ``backend="reference"`` runs. Same forward, but its backward is
  written out as backpropagation through time: the recurrent GEMMs are explicit, so ``dW_hh`` is one GEMM
  over all steps after the loop instead of a ``(4H, H)`` accumulation per step (that accumulation made
  autograd's loop 3-5x slower than ``nn.LSTM`` on a CPU). For the elementwise variants (tied, refine,
  classic) the cell's backward is in closed form (docs/design.md, "Backward of one step") from the activated
  gates saved in forward, so the reverse loop is five small ops and one GEMM per step; the cumax variants let
  autograd differentiate :func:`cell_update` step by step from saved pre-activations. Without anything to
  differentiate, the loop saves nothing and reuses one step's buffers.

On a CPU in float32 the large GEMMs (input projection, ``dx``, ``dW``) and the per-step GEMMs go through
oneDNN where it is faster than ``torch.mm`` (see :func:`_linear`); every GEMM falls back to ``F.linear``.
The tests hold this path to :func:`naive_recurrence`'s autograd gradients for every variant.

Both hoist the input projection ``W x + b`` out of the time loop (one GEMM for all steps; autograd gives
``dW_ih``, ``db`` and ``dx`` as large GEMMs). Mixed precision: the gate math and the cell state ``c`` run in
float32 when the inputs are half precision; ``h`` is cast back to the compute dtype before it feeds the next
step's GEMM, as a fused kernel does.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .gates import GateSpec, cumax, master_gates


def forget_gates(z: Tensor, hidden: int, spec: GateSpec) -> Tuple[Tensor, Tensor]:
    """The forget gate ``f`` and the effective forget gate ``g`` (what multiplies ``c_{t-1}``) from a step's
    pre-activations ``z`` (``..., rows``). For ``lstm`` both are the forget gate (its input gate is separate).
    The formulas of every variant: docs/variants.md."""
    if spec.classic:
        f = torch.sigmoid(z[..., hidden:2 * hidden])
        return f, f
    if spec.aux == "M":
        z_f, z_mf, z_mi = z.split(spec.block_sizes(hidden), dim=-1)[:3]
        # ON-LSTM's forget path (Shen et al. 2019, eq. 11-12): f stays a sigmoid, cumax only in the master
        # gates; g = f w + (mf - w), w = mf mi. The input side is the tied framework's 1 - g.
        f = torch.sigmoid(z_f)
        mf, mi = master_gates(z_mf, z_mi, spec.master_chunk)
        w = mf * mi
        return f, torch.addcmul(mf - w, f, w)
    z_f = z[..., :hidden]
    f = cumax(z_f) if spec.primary == "O" else torch.sigmoid(z_f)
    if spec.aux == "R":
        # g = 2 r f + (1 - 2 r) f^2 = f^2 + 2 r f (1 - f)
        r = torch.sigmoid(z[..., hidden:2 * hidden])
        return f, torch.addcmul(f * f, r, f * (1 - f), value=2.0)
    return f, f


def cell_update(z: Tensor, c_prev: Tensor, spec: GateSpec) -> Tuple[Tensor, Tensor]:
    """One step of the cell given all gate pre-activations ``z`` (``..., rows``) and ``c_{t-1}``.

    Returns ``(h_t, c_t)`` in ``c_prev``'s dtype. The formulas of every variant: docs/variants.md.
    """
    z = z.to(c_prev.dtype)
    hidden = c_prev.shape[-1]
    if spec.classic:
        i, f, g, o = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    _, g = forget_gates(z, hidden, spec)
    u = torch.tanh(z[..., -2 * hidden:-hidden])  # every tied layout ends with the u and o blocks
    c = torch.lerp(u, c_prev, g)  # g c_{t-1} + (1 - g) u
    return torch.sigmoid(z[..., -hidden:]) * torch.tanh(c), c


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


# Smallest GEMM (multiply-adds) for which oneDNN is used on a CPU; tests lower it to cover those paths.
# Measured on 2 AMD EPYC cores, one thread: oneDNN wins from about 2^20 (B=16, H=128 step: 19 vs 24 us;
# 560x64x512 projection: 163 vs 342 us) and loses below (B=16, H=64 step: 13 vs 7 us).
ONEDNN_MIN_MACS = 1 << 20


def _onednn_pays(macs: int, *tensors: Tensor) -> bool:
    """oneDNN's linear for float32 CPU tensors and a GEMM of at least ``ONEDNN_MIN_MACS``."""
    return (macs >= ONEDNN_MIN_MACS and torch.backends.mkldnn.is_available()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors))


def _right_matmul(weight: Tensor, batch: int):
    """``a -> a @ weight.T`` for the per-step recurrent GEMM of a ``(batch, K)`` operand.

    On a CPU, for float32 and a weight big enough to matter, oneDNN's linear with a weight reordered once
    per sequence is 3-4x faster than ``torch.mm`` at these small-M shapes (measured: ``(16, 512) x
    (512, 2048)`` 85 us vs 250-350 us on 2 AMD EPYC cores, where MKL's small GEMM is slow); that is what
    ``nn.LSTM`` uses on a CPU too. Anything else, or any failure of that private op, uses ``F.linear``.
    """
    if _onednn_pays(batch * weight.numel(), weight):
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch)
            fn = lambda a: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")  # noqa: E731
            fn(weight.new_zeros(batch, weight.shape[1]))
            return fn
        except (RuntimeError, AttributeError):
            pass
    return lambda a: torch.nn.functional.linear(a, weight)


def _linear(a: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``a @ weight.T (+ bias)`` for the large GEMMs over all steps (2-D ``a``; ``weight`` may be a
    transposed view).

    oneDNN where :func:`_onednn_pays`: on 2 AMD EPYC cores it ran these shapes 1.5-2.3x faster than
    ``torch.mm`` (MKL), e.g. ``dW_hh`` at T*B=4096, 4H=1024, H=256: 14.6 vs 33 ms on one thread.
    """
    if _onednn_pays(a.shape[0] * weight.numel(), a, weight):
        try:
            return torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")
        except (RuntimeError, AttributeError):
            pass
    return torch.nn.functional.linear(a, weight, bias)


def _weight_grad(dz: Tensor, a: Tensor) -> Tensor:
    """``dz^T a`` (``(N, M)^T (N, K) -> (M, K)``), the weight gradient summed over all steps and rows.

    Computed as ``(a^T dz)^T``: ``a^T`` is the narrow operand, so its transposed copy is the cheap one.
    """
    return _linear(a.t().contiguous(), dz.t()).t()


class _InputProjection(torch.autograd.Function):
    """``x W^T + b`` for float32 CPU inputs, every GEMM of it through :func:`_linear` (oneDNN). Same values
    as ``F.linear``; the backward's ``dx``, ``dW`` and ``db`` are one GEMM or sum each."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _linear(dy2, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = _weight_grad(dy2, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def _input_projection(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """All steps' ``W x + b`` in one GEMM: oneDNN for float32 CPU, else ``F.linear`` (autocast applies)."""
    if (x.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
            and _onednn_pays(x.numel() * weight.shape[0], x, weight)
            and (bias is None or bias.dtype == torch.float32)):
        return _InputProjection.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def _tanh(x: Tensor, out: Tensor) -> Tensor:
    """``tanh(x)`` into ``out`` (which may be ``x``).

    On a CPU, from 4096 elements on, as ``2 sigmoid(2 x) - 1``: torch's vectorised CPU tanh costs ~2 ns per
    float against ~0.3 for its sigmoid (8192 floats: 18 vs 9 us for the four ops here, on AMD EPYC; below
    ~3000 floats the extra ops' overhead loses). The two differ by rounding only (absolute error ~1e-7 in
    float32 near 0, where tanh itself is ~x). float64, the dtype for checks against the oracle, keeps
    torch's tanh.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.numel() < 4096:
        return torch.tanh(x, out=out)
    return torch.mul(x, 2.0, out=out).sigmoid_().mul_(2.0).sub_(1.0)


def _refine_forget(f: Tensor, r: Tensor) -> Tensor:
    """The refined forget gate ``g = f^2 + 2 r f (1 - f)`` (as in :func:`cell_update`, three ops)."""
    ff = f * f
    return torch.addcmul(ff, r, f - ff, value=2.0)


def _elementwise_step_(blocks, c_prev: Tensor, spec: GateSpec, c_out: Tensor, tc_out: Tensor,
                       h_out: Tensor) -> None:
    """One step of an elementwise variant from its gate pre-activations ``blocks`` (``G`` views ``(B, H)``
    into the gate buffer, activated here in place): writes ``c_t``, ``tanh(c_t)`` and ``h_t = o tanh(c_t)``
    (cast to ``h_out``'s dtype). The same math as :func:`cell_update`.

    Every elementwise layout has its tanh block second to last and sigmoid blocks elsewhere
    (``f, [r], u, o`` and ``i, f, g, o``).
    """
    for b in blocks[:-2]:
        b.sigmoid_()
    _tanh(blocks[-2], out=blocks[-2])
    blocks[-1].sigmoid_()
    if spec.classic:
        i, f, g, _ = blocks
        torch.addcmul(i * g, f, c_prev, out=c_out)
    else:
        f, u = blocks[0], blocks[-2]
        g = _refine_forget(f, blocks[1]) if spec.aux == "R" else f
        torch.lerp(u, c_prev, g, out=c_out)
    _tanh(c_out, out=tc_out)
    torch.mul(blocks[-1], tc_out, out=h_out)


def _elementwise_factors(gates: Tensor, c_prev: Tensor, tanh_c: Tensor, spec: GateSpec):
    """Local derivatives of a block of steps at once, from saved activations (``K, B, G, H``, ``K, B, H``).

    The step backward is linear in the incoming ``(dh, dc)``::

        dc     = dc_next + dh * o (1 - tanh(c)^2)
        dz_o   = dh * tanh(c) o (1 - o)
        dz_k   = dc * k_k                   for every other gate block k
        dc_prev = dc * carry                (the effective forget gate)

    so the factors ``k`` (``K, B, G, H``, with ``dz_o``'s factor in the last block), ``o (1 - tanh(c)^2)``
    and ``carry`` are computed here as a few large vectorised ops, leaving the time loop with five small
    ones. Formulas (docs/design.md, "Backward of one step")::

        tied   f, u:     k_f = (c_prev - u) f (1 - f)          k_u = (1 - f)(1 - u^2)          carry = f
        refine f, r, u:  g = f^2 + 2 r f (1 - f)
                         k_f = (c_prev - u)(2 r + 2 (1 - 2 r) f) f (1 - f)
                         k_r = (c_prev - u) 2 f (1 - f) r (1 - r)
                         k_u = (1 - g)(1 - u^2)                                                 carry = g
        classic i, f, g: k_i = g i (1 - i)    k_f = c_prev f (1 - f)    k_g = i (1 - g^2)       carry = f
    """
    o = gates[:, :, -1]
    k = torch.empty_like(gates)
    torch.mul(tanh_c, o * (1 - o), out=k[:, :, -1])
    dc_from_dh = o * (1 - tanh_c * tanh_c)
    if spec.classic:
        i, f, g = gates[:, :, 0], gates[:, :, 1], gates[:, :, 2]
        torch.mul(g, i * (1 - i), out=k[:, :, 0])
        torch.mul(c_prev, f * (1 - f), out=k[:, :, 1])
        torch.mul(i, 1 - g * g, out=k[:, :, 2])
        return k, dc_from_dh, f
    f, u = gates[:, :, 0], gates[:, :, -2]
    df = f * (1 - f)
    cu = c_prev - u
    if spec.aux == "R":
        r = gates[:, :, 1]
        carry = _refine_forget(f, r)
        torch.mul(cu * df, 2 * r + 2 * (1 - 2 * r) * f, out=k[:, :, 0])
        torch.mul(cu * 2 * df, r * (1 - r), out=k[:, :, 1])
    else:
        carry = f
        torch.mul(cu, df, out=k[:, :, 0])
    torch.mul(1 - carry, 1 - u * u, out=k[:, :, -2])
    return k, dc_from_dh, carry


def _forward_loop(xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, spec: GateSpec, save: bool):
    """The forward time loop given the input projection: ``(hs, cs, saved)``.

    ``hs`` holds ``h_0 .. h_T`` (``T+1, B, H``). With ``save`` (training), ``cs`` holds ``c_0 .. c_T`` and
    ``saved`` what the backward needs: the activated gates (``T, B, G*H``, like cuDNN's workspace) and
    ``tanh(c)`` for elementwise variants, the pre-activations for cumax variants. Without it (inference),
    one step's buffers are reused for every step and ``cs`` is ``c_T`` alone (``1, B, H``).
    """
    dtype, cell_dtype = xproj.dtype, _dtypes(xproj.dtype)
    steps, batch, width = xproj.shape
    hidden = w_hh.shape[1]
    rec = _right_matmul(w_hh.to(dtype).contiguous(), batch)
    # zeros, not empty: the buffers are written one step at a time, and first-touch page faults on a fresh
    # allocation cost more than the step's arithmetic (measured 4x on a 2-core VM); zeroing faults in bulk.
    hs = xproj.new_zeros(steps + 1, batch, hidden)  # h_0 .. h_T (h_{t-1} feeds dW_hh in backward)
    cs = xproj.new_zeros(steps + 1 if save else 1, batch, hidden, dtype=cell_dtype)
    hs[0], cs[0] = h0, c0
    # per-step views made once: indexing a tensor from Python costs microseconds, as much as a small op
    h_steps, x_steps = hs.unbind(0), xproj.unbind(0)
    c_steps = cs.unbind(0) if save else [cs[0]] * (steps + 1)  # an elementwise op may write onto its input

    def step_buffers(shape, buffer_dtype):
        """A buffer of T steps and its per-step views; when nothing is saved, a buffer of one step whose
        view is repeated for every step."""
        buffer = xproj.new_zeros(steps if save else 1, *shape, dtype=buffer_dtype)
        return buffer, buffer.unbind(0) * (1 if save else steps)

    if spec.elementwise:
        gates, gate_steps = step_buffers((batch, width), cell_dtype)  # pre-activations, activated in place
        tanh_c, tc_steps = step_buffers((batch, hidden), cell_dtype)
        # each step's G gate blocks as (B, H) views, made in G + 1 calls rather than two per step
        gate_blocks = gates.view(gates.shape[0], batch, spec.num_gates, hidden).unbind(2)
        block_steps = list(zip(*(b.unbind(0) for b in gate_blocks))) * (1 if save else steps)
        for t in range(steps):
            a = gate_steps[t]
            if dtype == cell_dtype:
                torch.add(x_steps[t], rec(h_steps[t]), out=a)
            else:  # half precision: z in the compute dtype, as the GEMM gives it; gate math in float32
                a.copy_(x_steps[t] + rec(h_steps[t]))
            _elementwise_step_(block_steps[t], c_steps[t], spec, c_steps[t + 1], tc_steps[t], h_steps[t + 1])
        return hs, cs, (gates, tanh_c)
    zs, z_steps = step_buffers((batch, width), dtype)
    for t in range(steps):
        torch.add(x_steps[t], rec(h_steps[t]), out=z_steps[t])
        h, c = cell_update(z_steps[t], c_steps[t], spec)
        c_steps[t + 1].copy_(c)
        h_steps[t + 1].copy_(h)
    return hs, cs, (zs,)


class _BPTT(torch.autograd.Function):
    """The recurrent part given the input projection: ``(xproj, w_hh, h0, c0) -> (out, h_T, c_T)``.

    Elementwise variants run a closed-form backward from their saved activated gates
    (:func:`_elementwise_factors`); cumax variants let autograd differentiate :func:`cell_update` step by
    step from the saved pre-activations.
    """

    @staticmethod
    def forward(ctx, xproj: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor, spec: GateSpec):
        hs, cs, saved = _forward_loop(xproj, w_hh, h0, c0, spec, save=True)
        ctx.spec = spec
        ctx.dtypes = (w_hh.dtype, h0.dtype, c0.dtype)
        ctx.save_for_backward(*saved, hs, cs, w_hh)
        return hs[1:], hs[-1].clone(), cs[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out: Tensor, d_h: Tensor, d_c: Tensor):
        if ctx.spec.elementwise:
            gates, tanh_c, hs, cs, w_hh = ctx.saved_tensors
            dzs, dh, dc = _elementwise_backward(gates, tanh_c, hs, cs, w_hh, d_out, d_h, d_c, ctx.spec)
        else:
            zs, hs, cs, w_hh = ctx.saved_tensors
            dzs, dh, dc = _autograd_backward(zs, hs, cs, w_hh, d_out, d_h, d_c, ctx.spec)
        w_dtype, h0_dtype, c0_dtype = ctx.dtypes
        # dU = sum_t dz_t^T h_{t-1}: one GEMM over all steps
        dw = _weight_grad(dzs.flatten(0, 1), hs[:-1].flatten(0, 1)).to(w_dtype)
        return dzs, dw, dh.to(h0_dtype), dc.to(c0_dtype), None


# Steps per block of the backward's factor computation: about this many gate elements, so that the
# temporaries stay in cache and are reused by the allocator instead of being fresh, page-faulting memory
# (one pass over all T steps at once measured slower: each temporary was as large as all the gates).
FACTOR_BLOCK_ELEMS = 1 << 19


def _elementwise_backward(gates, tanh_c, hs, cs, w_hh, d_out, d_h, d_c, spec):
    """Reverse recurrence of an elementwise variant: ``(dz for all steps, dh_0, dc_0)``."""
    steps, batch = gates.shape[:2]
    hidden = hs.shape[-1]
    cell_dtype = cs.dtype
    back = _right_matmul(w_hh.to(hs.dtype).t().contiguous(), batch)  # dz -> dz U
    dzs = hs.new_zeros(gates.shape)  # compute dtype, as the GEMMs take it; zeros: see forward
    gates4 = gates.view(steps, batch, spec.num_gates, hidden)
    dz4 = dzs.view(steps, batch, spec.num_gates, hidden)
    dh, dc = d_h.to(cell_dtype), d_c.to(cell_dtype)
    block = max(1, FACTOR_BLOCK_ELEMS // max(1, batch * gates.shape[-1]))
    for stop in range(steps, 0, -block):
        start = max(0, stop - block)
        k, dc_from_dh, carry = _elementwise_factors(gates4[start:stop], cs[start:stop], tanh_c[start:stop],
                                                    spec)
        dz = dz4[start:stop]
        views = zip(d_out[start:stop].unbind(0), dzs[start:stop].unbind(0), dz[:, :, :-1].unbind(0),
                    dz[:, :, -1].unbind(0), k[:, :, :-1].unbind(0), k[:, :, -1].unbind(0),
                    dc_from_dh.unbind(0), carry.unbind(0))
        for d_out_t, dz_t, dz_cell, dz_o, k_cell, k_o, dc_from_dh_t, carry_t in reversed(list(views)):
            dh = dh + d_out_t
            dc = torch.addcmul(dc, dh, dc_from_dh_t)
            torch.mul(k_cell, dc.unsqueeze(1), out=dz_cell)
            torch.mul(k_o, dh, out=dz_o)
            dc = dc * carry_t
            dh = back(dz_t).to(cell_dtype)  # dh_{t-1} = dz_t U
    return dzs, dh, dc


def _autograd_backward(zs, hs, cs, w_hh, d_out, d_h, d_c, spec):
    """Reverse recurrence of any variant, autograd differentiating :func:`cell_update` at each step."""
    cell_dtype = cs.dtype
    back = _right_matmul(w_hh.to(zs.dtype).t().contiguous(), zs.shape[1])  # dz -> dz U
    dzs = torch.zeros_like(zs)  # zeros: see forward
    dh, dc = d_h.to(cell_dtype), d_c.to(cell_dtype)
    for t in range(zs.shape[0] - 1, -1, -1):
        dh = dh + d_out[t]
        with torch.enable_grad():
            z = zs[t].detach().requires_grad_()
            c_prev = cs[t].detach().requires_grad_()
            h, c = cell_update(z, c_prev, spec)
            dz, dc = torch.autograd.grad((h, c), (z, c_prev), (dh, dc))
        dzs[t] = dz
        dh = back(dzs[t]).to(cell_dtype)  # dh_{t-1} = dz_t U
    return dzs, dh, dc


def reference_recurrence(
    x: Tensor, w_ih: Tensor, w_hh: Tensor, bias: Optional[Tensor], h0: Tensor, c0: Tensor, spec: GateSpec
) -> Tuple[Tensor, Tensor, Tensor]:
    """Same contract as :func:`naive_recurrence`, with an explicit BPTT backward (see module docstring)."""
    xproj = _input_projection(x, w_ih, bias)
    cell_dtype = _dtypes(xproj.dtype)
    device_type = x.device.type
    with torch.autocast(device_type, enabled=False):
        args = (xproj, w_hh, h0.to(xproj.dtype), c0.to(cell_dtype))
        if torch.is_grad_enabled() and any(t.requires_grad for t in args):
            return _BPTT.apply(*args, spec)
        # nothing to differentiate (inference): no autograd node, and no per-step buffers kept for a backward
        hs, cs, _ = _forward_loop(*args, spec, save=False)
        return hs[1:], hs[-1].clone(), cs[-1]
