"""The persistent kernels' self-check: ``kernel="auto"`` runs them only on a device where it has passed.

Why: the persistent kernels' grid barrier depends on memory ordering and on every program of the grid being
resident at once, which only the hardware can prove, and a bug there gives wrong numbers, not an error. So
the first time ``kernel="auto"`` would pick them for a (device, gate mode, dtype), :func:`verdict` first
checks them against the float64 oracle (``urlstm_triton.parity``) on small problems that cover what the
planner can choose (:func:`cases`): several hidden tiles meeting at the barrier, ragged hidden and batch
tiles, several batch tiles, ``U`` on chip and streamed, a chunked backward that takes ``dz`` from the next
chunk. Where the check fails, the step kernels run instead, with one warning that says why (:func:`passed`).

The verdict is kept in memory and on disk, keyed by device name, triton version, a hash of the kernels'
sources, gate mode and dtype: another GPU model, another triton, or edited kernels are checked again. The
cache is one JSON file, ``selfcheck.json`` in :func:`cache_directory` (``$URLSTM_CACHE_DIR``, else
``$XDG_CACHE_HOME/urlstm_triton``, else ``~/.cache/urlstm_triton``), written atomically (a temporary file,
then ``os.replace``) under a file lock, since the processes of a multi-GPU job start together. A file that
does not parse is ignored and rewritten; where it cannot be written (a read-only home) each process checks
once for itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Tuple

import filelock
import torch
import triton

from .errors import Inconclusive
from .files import atomic_write
from .kernels import common as _common

CACHE_ENV = "URLSTM_CACHE_DIR"
CACHE_FILE = "selfcheck.json"
CACHE_FORMAT = 1
MODE_NAMES = {_common.MODE_TIED: "tied", _common.MODE_REFINE: "refine", _common.MODE_CLASSIC: "classic"}
# A deadlocked barrier gives up after this many spins (~1 us each), so a broken grid fails the check in about a
# second instead of the kernels' default of several seconds per launch.
CHECK_MAX_SPINS = 1 << 20


@dataclass(frozen=True)
class Verdict:
    """The self-check's result for one (device, mode, dtype). ``source``: ``"checked"`` (just ran), ``"cache"``
    (read from the file or memory), ``"inconclusive"`` (the check could not run to the end, see
    :class:`Inconclusive`: the step kernels run in this process, and the next one checks again) or
    ``"deferred"`` (not checked: a CUDA graph was being captured, where no check can run; nothing is recorded
    and the step kernels run this time)."""

    passed: bool
    reason: str  # '' when passed, else what failed
    seconds: float  # how long the check took when it ran (kernel compilation included)
    source: str
    key: str
    path: str


def cache_directory(override=None) -> pathlib.Path:
    """Directory of the verdict cache: ``override``, else ``$URLSTM_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/urlstm_triton``, else ``~/.cache/urlstm_triton``."""
    if override:
        return pathlib.Path(override)
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "urlstm_triton"


_FINGERPRINT = []


def kernels_fingerprint() -> str:
    """A short hash of the persistent kernels' sources (and the cell math they share with the step kernels):
    an edited kernel invalidates every cached verdict."""
    if not _FINGERPRINT:
        from .kernels import persistent

        digest = hashlib.sha256()
        for module in (persistent, _common):
            digest.update(pathlib.Path(module.__file__).read_bytes())
        _FINGERPRINT.append(digest.hexdigest()[:16])
    return _FINGERPRINT[0]


def entry_key(device, mode: int, dtype: torch.dtype) -> str:
    """The cache key of a verdict: device name, triton version, kernel sources, gate mode, dtype."""
    if mode not in MODE_NAMES:
        raise ValueError(f"mode must be one of {sorted(MODE_NAMES)}, got {mode!r}")
    name = torch.cuda.get_device_name(torch.device(device))
    return (f"{name} | triton {triton.__version__} | kernels {kernels_fingerprint()} | {MODE_NAMES[mode]} | "
            f"{str(dtype).replace('torch.', '')}")


def cases():
    """``(name, parity.Problem, backend options)`` of the check, all on the persistent kernels. On an H100/H200
    the first plans 13 hidden tiles of 16 units (the last one ragged) over one batch tile with U on chip; the
    second streams U in 32-wide slices over 5 batch tiles (the last one ragged) x 6 hidden tiles, in chunks of
    4 steps (chunked forward without saved gates, backward from the next chunk's dz). In Triton's interpreter
    (tests; one hidden tile there) the same paths on problems a tenth the size."""
    from .kernels.persistent import PersistentConfig
    from .parity import Problem

    sync = dict(check="sync", max_spins=CHECK_MAX_SPINS)  # a timeout raises here, not a device-side assert
    small = _common.interpreting()
    return (
        ("planned tiles", Problem(3, 3, 5, 20) if small else Problem(10, 10, 8, 200),
         {"config": PersistentConfig(**sync)}),
        ("U streamed, chunked", Problem(5, 3, 5, 24) if small else Problem(10, 70, 8, 96),
         {"config": PersistentConfig(u_on_chip=False, block_k=16 if small else 32, **sync), "chunk_size": 4}),
    )


def run_checks(device, mode: int, dtype: torch.dtype) -> str:
    """Run :func:`cases` on ``device``; '' if every one is within the oracle's tolerance, else what failed.
    Raises :class:`Inconclusive` if the GPU ran out of memory."""
    from .parity import MODE_GATES, measure, one_line

    gate = MODE_GATES[MODE_NAMES[mode]]
    device = torch.device(device)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        for name, problem, options in cases():
            try:
                parity = measure(gate, problem, dtype, device, kernel="persistent", **options)
            except torch.cuda.OutOfMemoryError as e:
                raise Inconclusive(f"{name} ({problem}): the GPU's memory is full: {one_line(e)}") from e
            except Exception as e:  # a kernel that does not compile, a barrier that timed out ...
                return f"{name} ({problem}): {one_line(e)}"
            if not parity.passed:
                return f"{name} ({problem}): relative error vs float64 {parity.describe()}"
    return ""


# ------------------------------------------------------------------------------------------------- cache


def _is_verdict(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("passed"), bool) and isinstance(entry.get("reason"), str)


def _load(path: pathlib.Path, valid=_is_verdict) -> Dict[str, dict]:
    """The entries of the cache file that ``valid`` accepts; {} when it is missing or does not parse (it is
    then rewritten at the next store). The tile tuner (``urlstm_triton.tuning``) keeps its file the same way."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == CACHE_FORMAT else None
    if not isinstance(entries, dict):
        return {}
    return {k: e for k, e in entries.items() if valid(e)}


def _store(path: pathlib.Path, key: str, entry: dict, valid=_is_verdict) -> None:
    """Add ``entry`` under ``key``: read, merge and replace the file atomically under its lock. A cache that
    cannot be written is skipped (the verdict still holds for this process)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(path) + ".lock", timeout=30):
            entries = _load(path, valid)
            entries[key] = entry
            atomic_write(path, json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True))
    except (OSError, filelock.Timeout):
        pass


_LOCK = threading.RLock()  # held across a check, which calls back into the backend
_MEMORY: Dict[Tuple[str, str], Verdict] = {}
_WARNED = set()


def forget() -> None:
    """Drop the verdicts held in memory (the file stays) and the record of warnings given."""
    with _LOCK:
        _MEMORY.clear()
        _WARNED.clear()


def _capturing(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        return torch.cuda.is_current_stream_capturing()
    except RuntimeError:  # a torch built without CUDA has no graphs to capture
        return False


def verdict(device, mode: int, dtype: torch.dtype, *, cache_dir=None, refresh: bool = False) -> Verdict:
    """The self-check's verdict for the persistent kernels on ``device`` in gate ``mode`` (``kernels.MODE_*``)
    and ``dtype``: from memory, else from the cache file, else checked now (:func:`run_checks`) and stored.
    ``refresh=True`` checks again and overwrites the stored verdict."""
    device = torch.device(device)
    key = entry_key(device, mode, dtype)
    path = cache_directory(cache_dir) / CACHE_FILE
    slot = (str(path), key)
    with _LOCK:
        if not refresh:
            if slot in _MEMORY:
                return _MEMORY[slot]
            entry = _load(path).get(key)
            if entry is not None:
                found = Verdict(entry["passed"], entry["reason"], float(entry.get("seconds", 0.0)), "cache", key,
                                str(path))
                _MEMORY[slot] = found
                return found
        if _capturing(device):
            return Verdict(False, "not checked yet, and no check can run while a CUDA graph is captured", 0.0,
                           "deferred", key, str(path))
        start = time.perf_counter()
        try:
            reason = run_checks(device, mode, dtype)
        except Inconclusive as e:
            unsure = Verdict(False, f"could not be checked: {e}", time.perf_counter() - start, "inconclusive", key,
                             str(path))
            _MEMORY[slot] = unsure  # not on disk: the next process checks again
            return unsure
        seconds = time.perf_counter() - start
        checked = Verdict(reason == "", reason, seconds, "checked", key, str(path))
        _MEMORY[slot] = checked
        _store(path, key, {"passed": checked.passed, "reason": reason, "seconds": round(seconds, 4),
                           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return checked


def passed(device, mode: int, dtype: torch.dtype, *, cache_dir=None) -> bool:
    """True where the persistent kernels passed their self-check (:func:`verdict`); else False, with one
    warning per process and verdict that says why and what to do."""
    v = verdict(device, mode, dtype, cache_dir=cache_dir)
    if not v.passed and v.source != "deferred":
        with _LOCK:
            first = (v.path, v.key) not in _WARNED
            _WARNED.add((v.path, v.key))
        if first:
            what = f"{v.key.split(' | ')[0]} ({MODE_NAMES[mode]}, {str(dtype).replace('torch.', '')})"
            if v.source == "inconclusive":
                msg = (f"kernel='auto' runs the step kernels: the persistent kernels' self-check for {what} "
                       f"{v.reason}; the next process checks again.")
            else:
                msg = (f"kernel='auto' runs the step kernels: the persistent kernels failed their self-check for "
                       f"{what}: {v.reason}. The verdict is cached in {v.path} (delete it to check again); "
                       "kernel='persistent' forces them.")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return v.passed
