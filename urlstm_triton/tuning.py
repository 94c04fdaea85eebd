"""Measured tiles for the step kernels: time a few candidates once per problem size and GPU, keep the fastest.

Why measure: on the first H200 runs (BENCHMARKS.md, 2026-11-29) the cost model's pick
(``kernels/step_plan.py``: ``pick_config``) was up to twice as slow as the best tiling of a sweep (lm-seed
31 ms against 15 ms forward+backward), and the model's ranking of the sweep's tilings did not follow the
hardware's (it has no term for the latency of a deep K loop). A short list of candidates covers what measured
fastest there: ``step_plan.tuning_candidates`` (the model's pick, then the measured families fitted to the
problem), and for 16-bit operands the library-GEMM step (``Tiles.gemm``: the product by cuBLAS, the gate math
by a Triton kernel), which may win where ``U`` streams from HBM every step.

``tiles="tuned"`` (the default, ``LayerOptions.tiles``): on the first call of a problem size on a CUDA GPU,
each candidate of each direction runs ``STEPS`` steps of its launch helper on random inputs of the real size,
captured in a CUDA graph (so that host launch costs do not decide: graphs remove them in training too) and
replayed ``REPS`` times; the fastest median wins. The choice is kept in memory and on disk beside the
persistent kernels' self-check verdicts (``selfcheck.cache_directory()``, file ``step_tiles.json``), keyed by
GPU name, Triton version, the step kernels' sources, direction, batch (rounded up to a power of two: nearby
batch sizes share a choice), hidden size, gate count and dtypes. The first call pays the candidates'
compilation (about a second or two each) once per machine and size.

The model's pick is used, untimed, with ``tiles="model"``, with ``URLSTM_TUNE=0`` in the environment, for
small problems (batch x hidden < ``MIN_WORK``: launch-bound, where tiles matter little and a tuning would cost
more than it saves), in Triton's interpreter, and while a CUDA graph is being captured (nothing can be timed).
A candidate that fails to compile or launch is skipped; if all fail, the model's pick runs and one warning
says why.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import threading
import warnings
from typing import Dict, List, Optional, Tuple

import torch

from . import kernels as _kernels
from .benchmarks import time_fn
from .kernels import TileConfig, Tiles
from .kernels.common import num_gates, pdl_supported
from .kernels.step_plan import tuning_candidates

TUNE_ENV = "URLSTM_TUNE"
CACHE_FILE = "step_tiles.json"
STEPS = 8
MIN_WORK = 1 << 15  # batch x hidden below which the model's pick runs untimed: a step that small is launch-bound
REPS = 5
TILE_FIELDS = ("block_b", "block_h", "block_k", "split_k", "num_warps", "num_stages", "epi_h", "gemm", "pdl")

_LOCK = threading.RLock()
_MEMORY: Dict[str, Tuple[Tiles, Tiles]] = {}
_CHOSEN: Dict[tuple, TileConfig] = {}  # per call signature: every call after the first is one dict lookup
_FINGERPRINT: List[str] = []
_WARNED = set()


def enabled() -> bool:
    return os.environ.get(TUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def step_kernels_fingerprint() -> str:
    """A short hash of the step kernels' sources: an edited kernel is tuned again."""
    if not _FINGERPRINT:
        from .kernels import common, recurrence_bwd, recurrence_fwd

        digest = hashlib.sha256()
        for module in (recurrence_fwd, recurrence_bwd, common):
            digest.update(pathlib.Path(module.__file__).read_bytes())
        _FINGERPRINT.append(digest.hexdigest()[:16])
    return _FINGERPRINT[0]


def bucket(batch: int) -> int:
    """Batch sizes that share a tuning: rounded up to a power of two."""
    return 1 << max(0, (int(batch) - 1).bit_length())


def entry_key(device, batch: int, hidden: int, mode: int, dtype: torch.dtype, gate_dtype: torch.dtype,
              precision: str) -> str:
    import triton

    name = torch.cuda.get_device_name(torch.device(device))
    return (f"{name} | triton {triton.__version__} | step kernels {step_kernels_fingerprint()} | batch<={bucket(batch)}"
            f" | hidden {hidden} | gates {num_gates(mode)} | {str(dtype).replace('torch.', '')} | gates in "
            f"{str(gate_dtype).replace('torch.', '')} | {precision}")


def _tiles_dict(t: Tiles) -> dict:
    return {f: getattr(t, f) for f in TILE_FIELDS}


def _valid(entry) -> bool:
    try:
        _from_entry(entry)
        return True
    except (TypeError, ValueError, KeyError):
        return False


def _from_entry(entry) -> Tuple[Tiles, Tiles]:
    return Tiles(**entry["fwd"]), Tiles(**entry["bwd"])


def _buffers(batch: int, hidden: int, mode: int, dtype, gate_dtype, device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    gh = num_gates(mode) * hidden

    def rand(*shape, dt=dtype, scale=1.0):
        return (torch.rand(*shape, generator=g, device=device) * scale).to(dt)

    return {"xproj": rand(STEPS, batch, gh, scale=0.5), "w_hh": rand(gh, hidden, scale=hidden ** -0.5),
            "hs": rand(STEPS + 1, batch, hidden), "cs": rand(STEPS + 1, batch, hidden, dt=torch.float32),
            "gates": rand(STEPS, batch, gh, dt=gate_dtype), "d_out": rand(STEPS, batch, hidden),
            "dzs": torch.empty(STEPS, batch, gh, device=device, dtype=dtype),
            "dc": rand(batch, hidden, dt=torch.float32), "dh_last": rand(batch, hidden, dt=torch.float32)}


def time_launches(tiles: Tiles, backward: bool, mode: int, buf: dict, precision: str) -> float:
    """Median seconds per step of ``STEPS`` steps of one direction with ``tiles``, replayed from a CUDA graph
    (the eager first run compiles the kernel)."""
    from .kernels.graphs import capture_cuda_graph

    config = TileConfig(fwd=tiles if not backward else TileConfig().fwd, bwd=tiles if backward else TileConfig().bwd,
                        dot_precision=precision)
    if backward:
        def run():
            _kernels.backward_sequence(buf["d_out"], buf["w_hh"], buf["gates"], buf["cs"], buf["dzs"], buf["dc"],
                                       mode, config, dh_last=buf["dh_last"])
    else:
        def run():
            _kernels.forward_sequence(buf["xproj"], buf["w_hh"], buf["hs"], buf["cs"], buf["gates"], mode, config)
    graph = capture_cuda_graph(run)
    # the first replay (warm-up) uploads the graph; then median of REPS replays, timed with CUDA events
    return time_fn(graph.replay, "cuda", warmup=1, min_time=1.0, max_reps=REPS)["median_ms"] / 1e3 / STEPS


def fastest(candidates: List[Tiles], timer, report: dict, label: str) -> Optional[Tiles]:
    """The candidate with the smallest ``timer(tiles)`` (seconds); timings and failures go into ``report``."""
    best = None
    for tiles in candidates:
        try:
            seconds = timer(tiles)
        except Exception as e:  # a candidate that does not compile or launch here is skipped, and said why
            first = (str(e).strip().splitlines() or [""])[0]
            report.setdefault("failed", []).append(f"{label} {_tiles_dict(tiles)}: {type(e).__name__}: {first}")
            continue
        report.setdefault(f"{label}_us", []).append([_tiles_dict(tiles), round(seconds * 1e6, 3)])
        if best is None or seconds < best[0]:
            best = (seconds, tiles)
    return None if best is None else best[1]


def _timed_us(report: dict, label: str, tiles: Tiles) -> float:
    want = _tiles_dict(tiles)
    return next(us for t, us in report[f"{label}_us"] if t == want)


def with_pdl_if_faster(pick: Tiles, timer, report: dict, label: str) -> Tiles:
    """The fastest fused tiling timed again with programmatic dependent launch (``Tiles.pdl``), and kept so where
    that is faster: one more compile and timing per direction instead of one per candidate, on the assumption
    that PDL, which removes launch overhead and not work, shifts every tiling's time alike."""
    variant = dataclasses.replace(pick, pdl=True)
    if fastest([variant], timer, report, label) is None:
        return pick
    return variant if _timed_us(report, label, variant) < _timed_us(report, label, pick) else pick


def measure(batch: int, hidden: int, mode: int, dtype, gate_dtype, device, precision: str):
    """Time every candidate of both directions on ``device``, then the fastest fused one with programmatic
    dependent launch where the GPU has it: ``(fwd or None, bwd or None, report)``."""
    elem, gate_elem, gates = dtype.itemsize, gate_dtype.itemsize, num_gates(mode)
    plan_precision = precision if elem == 4 else "tf32"
    report: dict = {}
    picks = []
    with torch.cuda.device(device):
        buf = _buffers(batch, hidden, mode, dtype, gate_dtype, device)
        for backward in (False, True):
            label = "bwd" if backward else "fwd"
            candidates = tuning_candidates(batch, hidden, gates, elem, gate_elem, backward, plan_precision)

            def timer(t, bw=backward):
                return time_launches(t, bw, mode, buf, precision)

            pick = fastest(candidates, timer, report, label)
            if pick is not None and not pick.gemm and pdl_supported(device):
                pick = with_pdl_if_faster(pick, timer, report, label)
            picks.append(pick)
    return picks[0], picks[1], report


def tuned_config(batch: int, hidden: int, mode: int, dtype: torch.dtype, gate_dtype: torch.dtype, device,
                 precision: str = "ieee", fallback: Optional[TileConfig] = None, cache_dir=None) -> TileConfig:
    """The measured tiles for this problem on ``device`` (see the module docstring), or ``fallback`` (the
    model's pick) where nothing can be measured."""
    from . import selfcheck

    device = torch.device(device)
    signature = (device, bucket(batch), hidden, mode, dtype, gate_dtype, precision)
    chosen = _CHOSEN.get(signature)
    if chosen is not None:
        return chosen
    if fallback is None:
        fallback = _kernels.pick_config(batch, hidden, True, precision, None, dtype.itemsize, num_gates(mode),
                                        gate_dtype.itemsize)
    if (not enabled() or batch * hidden < MIN_WORK or device.type != "cuda"
            or torch.cuda.is_current_stream_capturing()):
        return fallback
    key = entry_key(device, batch, hidden, mode, dtype, gate_dtype, precision)
    with _LOCK:
        if key not in _MEMORY:
            path = selfcheck.cache_directory(cache_dir) / CACHE_FILE
            entry = selfcheck._load(path, _valid).get(key)
            if entry is None:
                fwd, bwd, report = measure(batch, hidden, mode, dtype, gate_dtype, device, precision)
                if fwd is None or bwd is None:
                    if key not in _WARNED:
                        _WARNED.add(key)
                        warnings.warn(f"urlstm_triton: no step-kernel tiling could be timed for {key}; using the "
                                      f"cost model's pick. {'; '.join(report.get('failed', []))[:500]}",
                                      RuntimeWarning, stacklevel=3)
                    _MEMORY[key] = (fallback.fwd, fallback.bwd)
                    return fallback
                entry = {"fwd": _tiles_dict(fwd), "bwd": _tiles_dict(bwd), "timings": report}
                selfcheck._store(path, key, entry, _valid)
            _MEMORY[key] = _from_entry(entry)
    fwd, bwd = _MEMORY[key]
    _CHOSEN[signature] = TileConfig(fwd=fwd, bwd=bwd, dot_precision=fallback.dot_precision)
    return _CHOSEN[signature]


def tile_spec(t: Tiles) -> str:
    """A short name of one direction's tiles: ``BB.BH.BK.SPLIT.WARPS.EPI.STAGES[.pdl]`` or ``gemm.BB.BH.WARPS``
    (the spelling of ``scripts/bench_kernels.py --tile``; :func:`parse_tile_spec` reads it back)."""
    if t.gemm:
        return f"gemm.{t.block_b}.{t.block_h}.{t.num_warps}"
    fields = (t.block_b, t.block_h, t.block_k, t.split_k, t.num_warps, t.epi_h, t.num_stages)
    return ".".join(str(v) for v in fields) + (".pdl" if t.pdl else "")


def parse_tile_spec(text: str) -> Tiles:
    """One direction's ``Tiles`` from ``BB.BH.BK.SPLIT.WARPS[.EPI[.STAGES]][.pdl]`` or ``gemm.BB.BH.WARPS`` (the
    library-GEMM step with its gate-math tiles). Raises ValueError (or Tiles' own ValueError) on a bad spec."""
    gemm = text.startswith("gemm.")
    body = text[len("gemm."):] if gemm else text
    pdl = body.endswith(".pdl")
    if pdl:
        body = body[:-len(".pdl")]
    d = [int(v) for v in body.split(".")]
    if gemm:
        if len(d) != 3:
            raise ValueError("gemm.BB.BH.WARPS takes three numbers")
        return Tiles(d[0], d[1], 16, num_warps=d[2], gemm=True, pdl=pdl)
    if len(d) not in (5, 6, 7):
        raise ValueError("a direction takes five to seven numbers")
    return Tiles(*d[:3], split_k=d[3], num_warps=d[4], epi_h=d[5] if len(d) > 5 else None,
                 num_stages=d[6] if len(d) > 6 else 3, pdl=pdl)


def summarize_cache(cache_dir=None) -> str:
    """What the tuner chose and measured on this machine (its cache file), one block per problem: the chosen
    tiles per direction and every candidate's microseconds per step, fastest first (``scripts/gpu_check.sh``
    prints it)."""
    from . import selfcheck

    path = selfcheck.cache_directory(cache_dir) / CACHE_FILE
    entries = selfcheck._load(path, _valid)
    if not entries:
        return f"tile tuner: no choices in {path}"
    lines = [f"tile tuner: {len(entries)} choice(s) in {path}"]
    for key, entry in sorted(entries.items()):
        fwd, bwd = _from_entry(entry)
        lines.append(f"{key}\n  chosen: fwd {tile_spec(fwd)}, bwd {tile_spec(bwd)}")
        timings = entry.get("timings") or {}
        for label in ("fwd", "bwd"):  # rows of [tiles as a dict, us per step], as measure() wrote them
            rows = sorted(timings.get(f"{label}_us") or [], key=lambda r: r[1])
            shown = ", ".join(f"{tile_spec(Tiles(**tiles))} {us:.1f}" for tiles, us in rows)
            lines.append(f"  {label} us/step: {shown or '-'}")
        lines += [f"  failed: {f}" for f in timings.get("failed", [])]
    return "\n".join(lines)


def forget() -> None:
    """Drop the choices held in memory (the file stays) and the record of warnings given."""
    with _LOCK:
        _MEMORY.clear()
        _CHOSEN.clear()
        _WARNED.clear()


__all__ = ["tuned_config", "measure", "fastest", "time_launches", "bucket", "entry_key", "enabled", "forget",
           "tile_spec", "parse_tile_spec", "with_pdl_if_faster", "summarize_cache",
           "TUNE_ENV", "CACHE_FILE"]
