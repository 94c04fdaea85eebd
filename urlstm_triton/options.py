"""The recurrent layer's options as one typed, frozen object, validated once when it is made.

``LayerOptions`` holds the backend choice and the Triton backend's knobs. ``URLSTM(..., backend="triton",
kernel="step", chunk_size=64)`` builds one from its keywords, ``urlstm(...)`` does the same, the Triton backend
reads it, and every trainer's model section turns its fields into one (``RecurrentConfig.layer_options``).
A bad value raises here, naming the field; an unknown keyword raises ``TypeError`` naming it.

This module imports nothing else of the package (a leaf), so every layer of it can depend on it. To add an
option, add one field below with its check; ``make_options`` and the backends pick it up by name.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

BACKENDS = ("auto", "reference", "triton")
KERNELS = ("auto", "step", "persistent")  # kernel families of the Triton backend
DOT_PRECISIONS = ("ieee", "tf32")
GATE_STORAGE = ("compute", "fp32")
TILES = ("tuned", "model")

Backend = Literal["auto", "reference", "triton"]
Kernel = Literal["auto", "step", "persistent"]
ChunkSize = Optional[Union[int, Literal["auto"]]]  # None: save every step; K: chunks of K steps; "auto": by memory


# ---------------------------------------------------------------------------------------------- field checks
def one_of(choices):
    def check(name: str, value) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return check


def check_chunk_size(name: str, value) -> None:
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be None, a positive int or 'auto', got {value!r}")


def check_memory_budget(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
        raise ValueError(f"{name} must be a positive number of bytes, got {value!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def any_value(name: str, value) -> None:
    """No check here: the kernels validate their own tile configs when they pick them up."""


def option(default, check, doc: str):
    return field(default=default, metadata={"check": check, "doc": doc})


# ---------------------------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class LayerOptions:
    """How the recurrence runs. Every field but ``backend`` is a Triton backend option ("kernel option")."""

    backend: Backend = option("auto", one_of(BACKENDS),
                              "auto (Triton on CUDA when it can run the variant, else the reference), reference, "
                              "triton")
    kernel: Kernel = option("auto", one_of(KERNELS),
                            "kernel family: auto, step (one launch per step), persistent (one launch per chunk)")
    chunk_size: ChunkSize = option(None, check_chunk_size,
                                   "None (save every step's gates: fastest), K (save every K-th state, recompute "
                                   "in backward) or 'auto' (from memory_budget)")
    memory_budget: Optional[int] = option(None, check_memory_budget,
                                          "bytes for chunk_size='auto' (default: half the free CUDA memory)")
    dot_precision: Literal["ieee", "tf32"] = option("ieee", one_of(DOT_PRECISIONS),
                                                    "fp32 products: ieee (exact) or tf32 (tensor cores)")
    cuda_graph: bool = option(False, check_bool, "replay each sequence's step launches from a CUDA graph")
    gate_storage: Literal["compute", "fp32"] = option("compute", one_of(GATE_STORAGE),
                                                      "dtype of the gates saved for backward: the compute dtype "
                                                      "(half the bytes in bf16/fp16) or fp32")
    tiles: Literal["tuned", "model"] = option("tuned", one_of(TILES),
                                              "step-kernel tiles on a GPU: tuned (the fastest of a few candidates, "
                                              "timed once per size and GPU, cached on disk) or model (the cost "
                                              "model's pick, untimed)")
    config: Any = option(None, any_value, "a kernels TileConfig/PersistentConfig overriding the tile choice")

    def __post_init__(self):
        for f in fields(self):
            f.metadata["check"](f.name, getattr(self, f.name))
        if self.backend == "reference" and self.kernel_options():
            raise TypeError(f"backend='reference' takes no backend options, got {sorted(self.kernel_options())}: "
                            "they tune the Triton kernels")

    def kernel_options(self) -> dict:
        """The kernel options that differ from their defaults, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "backend" and getattr(self, f.name) != f.default}


NAMES = tuple(f.name for f in fields(LayerOptions))
KERNEL_OPTION_NAMES = NAMES[1:]


def make_options(options: Optional[LayerOptions] = None, what: str = "triton backend option",
                 **changes) -> LayerOptions:
    """``options`` (default: all defaults) with ``changes`` applied, validated. An unknown name is a
    ``TypeError`` that names it (``what`` says what the caller calls its keywords)."""
    unknown = sorted(set(changes) - set(NAMES))
    if unknown:
        raise TypeError(f"unknown {what}(s) {unknown}; the backend options are {list(NAMES)}")
    base = options if options is not None else LayerOptions()
    return dataclasses.replace(base, **changes) if changes else base


def parse_chunk_size(text) -> ChunkSize:
    """``chunk_size`` from text (command line, YAML): none/null/0 -> None, auto -> 'auto', K -> K."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in ("", "none", "null", "0"):
        return None
    if value == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise ValueError(f"expected none, auto or a positive integer, got {text!r}") from None
    check_chunk_size("chunk_size", k)
    return k
