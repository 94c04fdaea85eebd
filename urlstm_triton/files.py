"""File helpers for writing that survives a crash, for the whole package (training runs, data caches, the kernel
self-check and tile caches, reports): checksums, fsync, and files replaced atomically."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path) -> None:
    """Flush a file written by someone else's code (e.g. ``accelerator.save_state``) to the disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path) -> None:
    """Make a rename or a new entry in ``path`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_torch(obj: Any, path) -> None:
    """``torch.save`` then fsync, so the bytes are on disk before a manifest claims them."""
    import torch

    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def remove_path(path) -> None:
    """Remove a file, a link or a directory tree at ``path``; nothing if it is not there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def atomic_write(path, text: str, make_parents: bool = False) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never a part: a temporary
    file in the same directory, flushed to disk, then renamed over ``path``. A failed write (disk full) removes
    the temporary file and raises the ``OSError``. ``make_parents``: create missing parent directories first."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def write_json_atomic(obj: Any, path) -> None:
    """JSON to ``path`` by :func:`atomic_write`. Non-finite floats are written as ``null`` (``NaN`` is not JSON;
    see training/records.py for how metrics rows flag them)."""
    atomic_write(path, json.dumps(finite_json(obj), indent=2, default=str, allow_nan=False) + "\n")


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
