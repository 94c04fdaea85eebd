"""Input validation shared by the layer, the cell and the functional entry point.

Every check raises before any work, with a message that names the offending argument, so a user never sees
a silent broadcast or a shape error from deep inside a kernel.
"""
from __future__ import annotations

import numbers

import torch


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_dropout(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1], got {type(value).__name__} ({value!r})")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"dropout must be in [0, 1] (the probability of zeroing an element), got {value}")
    return float(value)


def check_float_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {t.dtype}; convert it first, e.g. {name}.float()"
        )
    return t


def check_same_device(tensors: dict) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")


def check_dtype_match(name: str, t: torch.Tensor, expected: torch.dtype, what: str) -> None:
    if t.dtype != expected:
        raise TypeError(f"{name} has dtype {t.dtype} but {what} is {expected}; convert with {name}.to({expected})")


def check_shape(name: str, t: torch.Tensor, expected: tuple, hint: str = "") -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)}{hint}, got {tuple(t.shape)}"
        )
