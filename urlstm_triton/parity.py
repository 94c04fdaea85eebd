"""Parity of the Triton recurrence with the float64 oracle: the measurement behind ``urlstm_triton.doctor`` and
the persistent kernels' self-check (``urlstm_triton.selfcheck``).

A problem's leaves (input, weights, bias, initial state) are drawn in float64 from a private generator (the
caller's RNG is left alone), rounded to the compute dtype and widened back, so the oracle
(``reference.naive_recurrence``: float64 autograd, no hand-written derivative) and the kernels see exactly the
same numbers; the upstream gradients of the outputs and final states are rounded the same way. Errors are
``||ours - oracle|| / ||oracle||`` per quantity: outputs, final states, every gradient, and the gradients of the
fused weights and the bias also per gate block (a wrong derivative of one gate is an O(1) error in its block
that the norm over all blocks could hide).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch

from .gates import GateSpec, parse_gate
from .reference import naive_recurrence
from .triton_backend import triton_recurrence

# issue 3's bounds on the relative error vs float64 (outputs, states and gradients)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# one variant per gate mode of the kernels (kernels/common.py: MODE_TIED, MODE_REFINE, MODE_CLASSIC)
MODE_GATES = {"tied": "U-", "refine": "UR", "classic": "lstm"}
QUANTITIES = ("out", "h_T", "c_T", "dx", "dw_ih", "dw_hh", "dbias", "dh0", "dc0")


@dataclass(frozen=True)
class Problem:
    """Sizes of one parity problem: T steps, B rows, I inputs, H hidden units.

    The leaves are normal with standard deviation :attr:`scale`, shrinking like ``1/sqrt(width)``: with wide
    layers and O(1) weights the pre-activations would saturate every gate, and the gradients of a saturated,
    chaotic recurrence amplify rounding far beyond what the kernels' arithmetic contributes."""

    steps: int
    batch: int
    inputs: int
    hidden: int

    @property
    def scale(self) -> float:
        return min(0.6, 4.0 / math.sqrt(max(self.inputs, self.hidden)))

    def __str__(self) -> str:
        return f"T={self.steps} B={self.batch} I={self.inputs} H={self.hidden}"


@dataclass(frozen=True)
class Parity:
    """Relative errors of one run against the oracle, and the bound they must stay under."""

    errors: Dict[str, float]
    tolerance: float

    @property
    def worst(self) -> tuple:
        """``(quantity, error)`` with the largest error (NaN counts as infinite)."""
        name = max(self.errors, key=lambda k: _finite_or_inf(self.errors[k]))
        return name, _finite_or_inf(self.errors[name])

    @property
    def passed(self) -> bool:
        return self.worst[1] < self.tolerance

    def describe(self) -> str:
        name, err = self.worst
        return f"{name} {err:.1e} {'<' if err < self.tolerance else '>='} {self.tolerance:g}"


def _finite_or_inf(v: float) -> float:
    return v if not math.isnan(v) else math.inf


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for a report row."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def rel_error(ours: torch.Tensor, oracle: torch.Tensor) -> float:
    """``||ours - oracle|| / ||oracle||`` in float64 (inf if ``ours`` is not finite)."""
    ours, oracle = ours.detach().double(), oracle.detach().double()
    if not torch.isfinite(ours).all():
        return math.inf
    return float((ours - oracle).norm() / oracle.norm().clamp_min(1e-30))


def _rounded(gen: torch.Generator, shape, dtype, device, scale: float) -> torch.Tensor:
    """float64 normal(0, scale) values that ``dtype`` represents exactly, on ``device``."""
    return (torch.randn(*shape, dtype=torch.float64, generator=gen) * scale).to(dtype).double().to(device)


def measure(gate, problem: Problem, dtype: torch.dtype, device, *, seed: int = 0, **options) -> Parity:
    """Run ``triton_recurrence`` (``options``: its backend options, e.g. ``kernel``, ``chunk_size``,
    ``cuda_graph``, ``config``) forward and backward in ``dtype`` on ``device``, and the oracle on the same
    rounded leaves; return the relative errors (module docstring) and ``TOLERANCE[dtype]``.

    Runs with gradients on, outside inference mode and with autocast off, whatever the caller's context (the
    self-check may run inside an inference call)."""
    spec: GateSpec = parse_gate(gate)
    T, B, I, H = problem.steps, problem.batch, problem.inputs, problem.hidden
    G = spec.num_gates
    gen = torch.Generator().manual_seed(seed)
    shapes = ((T, B, I), (G * H, I), (G * H, H), (G * H,), (B, H), (B, H))  # x, w_ih, w_hh, bias, h0, c0
    leaves = [_rounded(gen, s, dtype, device, problem.scale) for s in shapes]
    # c_T comes back in fp32 for half precision: its upstream gradient is rounded to what it receives
    out_dtypes = (dtype, dtype, torch.float32 if dtype != torch.float32 else dtype)
    upstream = [_rounded(gen, s, d, device, 1.0) for s, d in zip(((T, B, H), (B, H), (B, H)), out_dtypes)]
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        ref_in = [t.clone().requires_grad_() for t in leaves]
        ref_out = naive_recurrence(*ref_in, spec)
        ref_grads = torch.autograd.grad(ref_out, ref_in, upstream)
        our_in = [t.to(dtype).requires_grad_() for t in leaves]
        our_out = triton_recurrence(*our_in, spec, **options)
        our_grads = torch.autograd.grad(our_out, our_in, [u.to(o.dtype) for u, o in zip(upstream, our_out)])
    ours, oracle = list(our_out) + list(our_grads), list(ref_out) + list(ref_grads)
    errors = {name: rel_error(a, b) for name, a, b in zip(QUANTITIES, ours, oracle)}
    for name, k in (("dw_ih", 4), ("dw_hh", 5), ("dbias", 6)):
        for q, block in enumerate(spec.block_names()):
            errors[f"{name}[{block}]"] = rel_error(ours[k][q * H:(q + 1) * H], oracle[k][q * H:(q + 1) * H])
    return Parity(errors, TOLERANCE[dtype])
