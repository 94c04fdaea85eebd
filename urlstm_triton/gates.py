"""Gate variants of the paper's ablation grid and their parameter initialisation.

A variant is a primary gate init {``-`` standard, ``C`` chrono, ``U`` uniform, ``O`` ordered/cumax} times an
auxiliary gate {``-`` none, ``M`` master, ``R`` refine}; the UR-LSTM is ``UR``. ``lstm`` is the classic LSTM
with a separate input gate, laid out exactly as ``torch.nn.LSTM`` (gate blocks i, f, g, o).

Tied-gate variants lay their weights out in gate blocks ``f, [aux], u, o`` (the aux block exists only when
there is an auxiliary gate), so the UR-LSTM's fused weight is ``(4H, I)`` in the order f, r, u, o. The master
gate's aux block holds ON-LSTM's two master gates, ``H / master_chunk`` rows each (master forget, then master
input), so a master-gate layer has ``3H + 2H / master_chunk`` rows. docs/variants.md writes out every
variant's formula.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import torch

PRIMARY = {"-": "standard", "C": "chrono", "U": "uniform", "O": "ordered"}
AUXILIARY = {"-": "none", "M": "master", "R": "refine"}


@dataclass(frozen=True)
class GateSpec:
    """One variant: ``primary`` in ``-CUO``, ``aux`` in ``-MR``; or ``classic=True`` for nn.LSTM's gating.

    ``master_chunk`` (master-gate variants only): ON-LSTM's chunk factor C. The master gates have ``H / C``
    units, each spanning C consecutive hidden units.
    """

    primary: str = "U"
    aux: str = "R"
    classic: bool = False
    master_chunk: int = 1

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
        """Gate blocks per layer: 3 (f, u, o) without an auxiliary gate, 4 with the refine gate or for the
        classic LSTM, 5 with the master gates (f, master forget, master input, u, o; the master blocks have
        ``H / master_chunk`` rows, see :meth:`gate_rows`)."""
        if self.classic or self.aux == "R":
            return 4
        return 5 if self.aux == "M" else 3

    def master_units(self, hidden: int) -> int:
        """Units of each master gate: ``hidden / master_chunk`` (ValueError unless it divides)."""
        if hidden % self.master_chunk:
            raise ValueError(f"gate {self.code!r}: hidden_size {hidden} is not a multiple of master_chunk "
                             f"{self.master_chunk} (each master-gate unit spans master_chunk hidden units)")
        return hidden // self.master_chunk

    def gate_rows(self, hidden: int) -> int:
        """Rows of a layer's fused weights and bias: ``num_gates * hidden``, except with the master gates
        (``3 * hidden + 2 * hidden / master_chunk``)."""
        if self.aux == "M" and not self.classic:
            return 3 * hidden + 2 * self.master_units(hidden)
        return self.num_gates * hidden

    def block_sizes(self, hidden: int) -> tuple:
        """Rows of each gate block, in :meth:`block_names` order."""
        if self.aux == "M" and not self.classic:
            m = self.master_units(hidden)
            return (hidden, m, m, hidden, hidden)
        return (hidden,) * self.num_gates

    def with_master_chunk(self, master_chunk: int) -> "GateSpec":
        """This variant with ON-LSTM's chunk factor; only master-gate variants take one other than 1."""
        if isinstance(master_chunk, bool) or not isinstance(master_chunk, int) or master_chunk < 1:
            raise ValueError(f"master_chunk must be a positive integer, got {master_chunk!r}")
        if master_chunk != 1 and (self.classic or self.aux != "M"):
            raise ValueError(f"master_chunk={master_chunk} applies only to the master-gate variants (-M, CM, UM, OM), "
                             f"not to gate {self.code!r}")
        return replace(self, master_chunk=master_chunk)

    @property
    def elementwise(self) -> bool:
        """True when every gate is an elementwise function of its pre-activation (no cumax over units):
        these are the variants a fused kernel can run."""
        return self.classic or (self.primary != "O" and self.aux != "M")

    def block_names(self) -> tuple:
        if self.classic:
            return ("i", "f", "g", "o")
        return {"R": ("f", "r", "u", "o"), "M": ("f", "mf", "mi", "u", "o")}.get(self.aux, ("f", "u", "o"))


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


def master_gates(z_mf: torch.Tensor, z_mi: torch.Tensor, master_chunk: int):
    """ON-LSTM's master forget and master input gates from their pre-activations (``..., M`` each), expanded
    to ``M * master_chunk`` hidden units (unit ``k`` of a master gate covers hidden units
    ``k C .. k C + C - 1``, as Shen et al.'s chunks do).

    ``f~ = cumax(z_mf)`` rises from 0 to 1 over the units; ``i~ = 1 - cumax(z_mi)`` falls from 1 to 0.
    """
    mf, mi = cumax(z_mf), 1.0 - cumax(z_mi)
    if master_chunk > 1:
        mf, mi = mf.repeat_interleave(master_chunk, dim=-1), mi.repeat_interleave(master_chunk, dim=-1)
    return mf, mi


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
    follows the primary init and the refine-gate bias is ``-b_f`` (so ``r`` starts at ``1 - f``). The master
    gates' biases are 0 (cumax of 0 is a linear ramp over the master units). Without a bias (``bias=None``)
    any of these that is not 0 cannot be set: a warning names what is dropped.
    """
    hidden = w_hh.shape[1]
    bound = 1.0 / math.sqrt(hidden)
    for t in (w_ih, w_hh) + ((bias,) if bias is not None else ()):
        t.uniform_(-bound, bound)
    if bias is None:
        dropped = dropped_bias_inits(spec, forget_bias)
        if dropped:
            warnings.warn(f"gate {spec.code!r} with bias=False: no bias to hold the {' and the '.join(dropped)}; "
                          "those gates start from a zero bias instead", UserWarning, stacklevel=3)
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
    else:  # ordered: cumax of a zero pre-activation is a linear ramp over units, no bias needed; with the
        # master gates (OM) f is a sigmoid and the ordering comes from the master gates: f starts at 1/2
        b_f = torch.zeros(hidden, dtype=torch.float64)
    bias[:hidden].copy_(b_f)
    if spec.aux == "R":
        bias[hidden : 2 * hidden].copy_(-b_f)
    elif spec.aux == "M":
        bias[hidden : hidden + 2 * spec.master_units(hidden)].zero_()


def dropped_bias_inits(spec: GateSpec, forget_bias: Optional[float] = None) -> list:
    """The initialisations of ``spec`` that live in the bias (so ``bias=False`` drops them), by name."""
    if spec.classic:
        return [f"forget-gate bias {forget_bias:g}"] if forget_bias is not None and forget_bias != 0 else []
    names = []
    if spec.primary == "-":
        b = 1.0 if forget_bias is None else float(forget_bias)
        if b != 0:
            names.append(f"standard forget-gate bias {b:g}")
    elif spec.primary == "C":
        names.append("chrono forget-gate bias (Tallec & Ollivier)")
    elif spec.primary == "U":
        names.append("uniform gate initialisation (UGI) of the forget-gate bias")
    if spec.aux == "R" and spec.primary != "O":
        names.append("refine-gate bias -b_f")
    return names
