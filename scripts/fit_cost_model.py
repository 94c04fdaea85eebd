"""Fit the cost model's latency constants to measured tile sweeps, and say how well it then ranks them.

Reads the JSON of ``bench_kernels.py --tile-sweep`` runs (default: ``results/gpu/*/tiles-*.json``, the H200
sweep of 2026-11-29), and for each row (a forward and a backward tiling) compares the measured forward-only
and forward+backward medians with the model's estimate of the same: ``T`` step launches each way
(``kernels/step_plan.py``) plus the GEMMs around the recurrence (``kernels/cost_model.py``). A grid search over
``Machine``'s latency fields (``load_latency_s``, ``load_latency_hbm_s``, ``subtile_latency_s``,
``partial_latency_s``) and the co-residency cap ``max_ctas_per_sm`` minimises the mean squared log error; the
table then gives, per config and measure, the Spearman rank correlation of estimate and measurement before
(the constants in ``H200``... at zero) and after the fit. Without a GPU: this is how the model gets corrected
from measurements others took.

    python scripts/fit_cost_model.py                      # the committed H200 sweep
    python scripts/fit_cost_model.py --json fit.json results/gpu/*/tiles-*.json
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import math
import os
import sys
from typing import Dict, List, Sequence, Tuple

from urlstm_triton.kernels import MODE_REFINE, Tiles, num_gates
from urlstm_triton.kernels import cost_model as CM
from urlstm_triton.kernels import step_plan as SP
from urlstm_triton.tuning import parse_tile_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GLOB = os.path.join(ROOT, "results", "gpu", "*", "tiles-*.json")
GRID = {
    "load_latency_s": (0.1e-6, 0.25e-6, 0.5e-6, 1.0e-6),
    "load_latency_hbm_s": (0.5e-6, 1.0e-6, 1.5e-6, 2.0e-6, 3.0e-6),
    "subtile_latency_s": (0.0, 0.5e-6, 1.0e-6, 2.0e-6, 3.0e-6, 4.0e-6),
    "partial_latency_s": (0.0, 0.25e-6, 0.5e-6, 1.0e-6),
    "max_ctas_per_sm": (2, 4, 8),
}
LATENCY_FIELDS = tuple(GRID)


def tiles_of(spec: str) -> Tuple[Tiles, Tiles]:
    """``(fwd, bwd)`` from a row name ``triton-tF_B[-graph]``, each as ``tuning.tile_spec`` writes it."""
    fwd, bwd = spec[len("triton-t"):].replace("-graph", "").split("_")
    return parse_tile_spec(fwd), parse_tile_spec(bwd)


def load_rows(paths: Sequence[str]) -> List[Dict]:
    """One dict per measured tile row: config, dims, dtype bytes, tiles, measured fwd and fwd+bwd ms."""
    rows = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for r in report.get("results", []):
            if not r.get("impl", "").startswith("triton-t") or "fwd_bwd" not in r or "fwd" not in r:
                continue
            fwd, bwd = tiles_of(r["impl"])
            rows.append({"config": r["config"], "dims": tuple(r["dims"]), "elem": 2 if r["dtype"] in ("bf16", "fp16")
                         else 4, "fwd_tiles": fwd, "bwd_tiles": bwd, "fwd_ms": r["fwd"]["median_ms"],
                         "fwd_bwd_ms": r["fwd_bwd"]["median_ms"]})
    return rows


def estimate(row: Dict, machine: CM.Machine) -> Tuple[float, float]:
    """The model's forward-only and forward+backward milliseconds of a row."""
    T, B, I, H = row["dims"]
    G, e = num_gates(MODE_REFINE), row["elem"]
    f = SP.forward_estimate(B, H, G, row["fwd_tiles"], e, e, "tf32", machine).seconds
    b = SP.backward_estimate(B, H, G, row["bwd_tiles"], e, e, "tf32", machine).seconds
    gemms = CM.non_recurrent_seconds(machine, T, B, I, H, G, e)
    fwd = T * f + gemms["xproj"]
    return 1e3 * fwd, 1e3 * (T * (f + b) + sum(gemms.values()))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    n = len(a)
    if n < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def log_error(rows: List[Dict], machine: CM.Machine) -> float:
    err = 0.0
    for row in rows:
        f, fb = estimate(row, machine)
        err += math.log(f / row["fwd_ms"]) ** 2 + math.log(fb / row["fwd_bwd_ms"]) ** 2
    return err / (2 * len(rows))


def correlations(rows: List[Dict], machine: CM.Machine) -> Dict[str, Dict[str, float]]:
    """Per config: Spearman of estimate vs measurement for fwd-only and fwd+bwd."""
    out = {}
    for config in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == config]
        est = [estimate(r, machine) for r in rs]
        out[config] = {"fwd": spearman([e[0] for e in est], [r["fwd_ms"] for r in rs]),
                       "fwd_bwd": spearman([e[1] for e in est], [r["fwd_bwd_ms"] for r in rs])}
    return out


def fit(rows: List[Dict], base: CM.Machine) -> Tuple[CM.Machine, float]:
    best = None
    for values in itertools.product(*GRID.values()):
        machine = dataclasses.replace(base, **dict(zip(GRID, values)))
        err = log_error(rows, machine)
        if best is None or err < best[1]:
            best = (machine, err)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", help=f"tile-sweep JSON files (default: {os.path.relpath(DEFAULT_GLOB, ROOT)})")
    p.add_argument("--json", help="write the fitted constants and correlations to this file")
    args = p.parse_args(argv)
    paths = args.paths or sorted(glob.glob(DEFAULT_GLOB))
    rows = load_rows(paths)
    if not rows:
        raise SystemExit(f"no tile-sweep rows in {paths}: run bench_kernels.py --tile-sweep N --json FILE on a GPU")
    zero = dataclasses.replace(CM.H200, **{f: 0.0 for f in LATENCY_FIELDS if f != "max_ctas_per_sm"},
                               max_ctas_per_sm=2)
    fitted, err = fit(rows, CM.H200)
    before, after = correlations(rows, zero), correlations(rows, fitted)
    print(f"{len(rows)} rows from {len(paths)} files; mean squared log error {log_error(rows, zero):.3f} without "
          f"latency terms, {err:.3f} fitted")
    print("fitted: " + ", ".join(f"{f}={getattr(fitted, f):g}" for f in LATENCY_FIELDS))
    print(f"{'config':10s} {'measure':8s} {'spearman before':>16s} {'after':>7s}")
    for config in before:
        for m in ("fwd", "fwd_bwd"):
            print(f"{config:10s} {m:8s} {before[config][m]:16.2f} {after[config][m]:7.2f}")
    print(f"{'config':10s} {'fwd tiles':22s} {'bwd tiles':22s} {'fwd ms':>7s} {'est':>7s} {'fwd+bwd':>8s} {'est':>7s}")
    for r in rows:
        f, fb = estimate(r, fitted)
        t = [".".join(str(getattr(x, k)) for k in ("block_b", "block_h", "block_k", "split_k", "num_warps",
                                                   "num_stages")) for x in (r["fwd_tiles"], r["bwd_tiles"])]
        print(f"{r['config']:10s} {t[0]:22s} {t[1]:22s} {r['fwd_ms']:7.2f} {f:7.2f} {r['fwd_bwd_ms']:8.2f} {fb:7.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"files": paths, "fitted": {f: getattr(fitted, f) for f in LATENCY_FIELDS},
                       "log_error": err, "spearman_before": before, "spearman_after": after}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
