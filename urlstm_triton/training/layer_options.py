"""The recurrent layer's kernel knobs as config fields, shared by every trainer's model section.

``chunk_size`` and ``kernel`` tune the Triton backend (see ``urlstm_triton.triton_backend``). Configs hold them
as strings (``"none"``, ``"64"``, ``"auto"``) so one CLI override sets them; :func:`layer_backend_options` turns
them into the keyword options ``URLSTM`` passes to its backend, and rejects what cannot work before any run.
"""
from __future__ import annotations

from typing import Union

from ..options import KERNELS
from .config import ConfigError

CHUNK_HELP = ("Triton backend: kernel chunks for long sequences: none (save every step: fastest), K (save only "
              "every K-th state, recompute in backward), or auto (from free GPU memory)")
KERNEL_HELP = "Triton backend: kernel family (auto, step: one launch per step, persistent: one launch per chunk)"


def parse_chunk_size(value) -> Union[None, int, str]:
    """``"none"``/``""``/``None`` -> None, ``"auto"`` -> ``"auto"``, a positive integer (or its string) -> int."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "none", "0"):
        return None
    if text == "auto":
        return "auto"
    try:
        k = int(text)
    except ValueError:
        raise ConfigError(f"model.chunk_size must be none, auto or a positive integer, got {value!r}") from None
    if k < 1:
        raise ConfigError(f"model.chunk_size must be none, auto or a positive integer, got {value!r}")
    return k


def layer_backend_options(backend: str, chunk_size, kernel: str) -> dict:
    """Keyword options for ``URLSTM(..., **options)``: only what differs from the defaults.

    The reference backend has no kernels, so asking it for chunks or a kernel family is a config error.
    """
    if kernel not in KERNELS:
        raise ConfigError(f"model.kernel must be one of {KERNELS}, got {kernel!r}")
    options = {}
    chunk = parse_chunk_size(chunk_size)
    if chunk is not None:
        options["chunk_size"] = chunk
    if kernel != "auto":
        options["kernel"] = kernel
    if options and backend == "reference":
        raise ConfigError(f"model.backend=reference runs no kernels: drop {', '.join('model.' + k for k in options)} "
                          "or use backend auto/triton")
    return options
