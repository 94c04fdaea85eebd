"""Gate variants of the paper's ablation grid and their parameter initialisation.

A variant is a primary gate init {``-`` standard, ``C`` chrono, ``U`` uniform, ``O`` ordered/cumax} times an
auxiliary gate {``-`` none, ``M`` master, ``R`` refine}; the UR-LSTM is ``UR``. ``lstm`` is the classic LSTM
with a separate input gate, laid out exactly as ``torch.nn.LSTM`` (gate blocks i, f, g, o).

Tied-gate variants lay their weights out in gate blocks ``f, [aux], u, o`` (the aux block exists only when
there is an auxiliary gate), so the UR-LSTM's fused weight is ``(4H, I)`` in the order f, r, u, o.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

PRIMARY = {"-": "standard", "C": "chrono", "U": "uniform", "O": "ordered"}
AUXILIARY = {"-": "none", "M": "master", "R": "refine"}


@dataclass(frozen=True)
class GateSpec:
    """One variant: ``primary`` in ``-CUO``, ``aux`` in ``-MR``; or ``classic=True`` for nn.LSTM's gating."""

    primary: str = "U"
    aux: str = "R"
    classic: bool = False

    @property
    def code(self) -> str:
        return "lstm" if self.classic else self.primary + self.aux

    @property
    def paper_name(self) -> str:
        """The name used in Gu et al. (2020): ``UR-LSTM``, ``U-LSTM``, ``R-LSTM``, ``-LSTM`` (tied baseline)."""
        if self.classic:
            return "LSTM"
        letters = (self.primary + self.aux).replace("-", "")
        return f"{letters or '-'}-LSTM"

    @property
    def num_gates(self) -> int:
        """Gate blocks per layer: 4 with an auxiliary gate or for the classic LSTM, else 3 (f, u, o)."""
        return 4 if (self.classic or self.aux != "-") else 3

    @property
    def elementwise(self) -> bool:
        """True when every gate is an elementwise function of its pre-activation (no cumax over units):
        these are the variants a fused kernel can run."""
        return self.classic or (self.primary != "O" and self.aux != "M")

    def block_names(self) -> tuple:
        if self.classic:
            return ("i", "f", "g", "o")
        if self.aux == "-":
            return ("f", "u", "o")
        return ("f", "r" if self.aux == "R" else "m", "u", "o")


def parse_gate(gate) -> GateSpec:
    """Parse a variant name: ``"UR"``, ``"U-"``, ``"-R"``, ``"--"``, ``"OM"``, ``"UR-LSTM"``, ``"lstm"`` ...

    One letter means that gate with nothing on the other side (``"U"`` is ``"U-"``, ``"R"`` is ``"-R"``).
    """
    if isinstance(gate, GateSpec):
        return gate
    if not isinstance(gate, str):
        raise TypeError(f"gate must be a string such as 'UR' or 'lstm', got {type(gate).__name__}")
    name = gate.strip().upper()
    if name in ("LSTM", "CLASSIC"):
        return GateSpec(classic=True)
    if name.endswith("-LSTM"):
        name = name[: -len("-LSTM")]
    elif name.endswith("LSTM"):
        name = name[: -len("LSTM")]
    if name in ("", "-"):
        name = "--"
    if len(name) == 1:
        if name in "CUO":
            name = name + "-"
        elif name in "MR":
            name = "-" + name
    if len(name) != 2 or name[0] not in PRIMARY or name[1] not in AUXILIARY:
        raise ValueError(
            f"unknown gate {gate!r}: expected a primary init from '-CUO' followed by an auxiliary gate from "
            "'-MR' (e.g. 'UR' for the UR-LSTM, 'U-', '-R', '--', 'C-', 'OM'), or 'lstm' for the classic LSTM"
        )
    return GateSpec(primary=name[0], aux=name[1])


ALL_VARIANTS = tuple(p + a for p in PRIMARY for a in AUXILIARY) + ("lstm",)


def cumax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cumulative softmax (Shen et al. 2019): a monotone gate over the hidden units."""
    return torch.cumsum(torch.softmax(x, dim=dim), dim=dim)


def uniform_forget_bias(hidden_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """UGI: ``b_f = logit(p)`` with ``p ~ U[1/H, 1 - 1/H]``, so forget-gate activations span every timescale."""
    lo = 1.0 / hidden_size
    p = lo + (1.0 - 2.0 * lo) * torch.rand(hidden_size, generator=generator, dtype=torch.float64)
    if hidden_size <= 2:  # 1/H == 1 - 1/H leaves p on the boundary: keep it strictly inside (0, 1)
        p = p.clamp(1e-3, 1 - 1e-3)
    return torch.log(p) - torch.log1p(-p)


def chrono_forget_bias(hidden_size: int, t_max: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Chrono init (Tallec & Ollivier 2018): ``b_f = log(U[1, T_max - 1])``."""
    u = 1.0 + (t_max - 2.0) * torch.rand(hidden_size, generator=generator, dtype=torch.float64)
    return torch.log(u)


@torch.no_grad()
def init_layer_(
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    bias: Optional[torch.Tensor],
    spec: GateSpec,
    forget_bias: Optional[float] = None,
    chrono_tmax: Optional[float] = None,
) -> None:
    """Initialise one layer's fused weights in place as the paper does.

    Weights and the u/o biases follow ``torch.nn.LSTM`` (``U(-1/sqrt(H), 1/sqrt(H))``); the forget-gate bias
    follows the primary init and the refine-gate bias is ``-b_f`` (so ``r`` starts at ``1 - f``).
    """
    hidden = w_hh.shape[1]
    bound = 1.0 / math.sqrt(hidden)
    for t in (w_ih, w_hh) + ((bias,) if bias is not None else ()):
        t.uniform_(-bound, bound)
    if bias is None:
        return
    if spec.classic:
        if forget_bias is not None:
            bias[hidden : 2 * hidden].fill_(forget_bias)
        return
    if spec.primary == "-":
        b_f = torch.full((hidden,), 1.0 if forget_bias is None else float(forget_bias), dtype=torch.float64)
    elif spec.primary == "C":
        b_f = chrono_forget_bias(hidden, chrono_tmax)
    elif spec.primary == "U":
        b_f = uniform_forget_bias(hidden)
    else:  # ordered: cumax of a zero pre-activation is a linear ramp over units, no bias needed
        b_f = torch.zeros(hidden, dtype=torch.float64)
    bias[:hidden].copy_(b_f)
    if spec.aux == "R":
        bias[hidden : 2 * hidden].copy_(-b_f)
    elif spec.aux == "M":
        bias[hidden : 2 * hidden].zero_()
