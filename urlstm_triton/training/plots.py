"""Curves from finished or running training runs, for ``scripts/plot_runs.py``.

A run is read from, in order of preference: its ``metrics.jsonl`` (every step, written by the Trainer), its
TensorBoard event files (``train/loss``, ``valid/loss``, ...), or a ``summary.json`` (final evaluation only,
drawn as points). Curves are returned as ``{"train/loss": [(step, value), ...], "valid/ppl": [...], ...}``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .records import read_metrics

Curves = Dict[str, List[Tuple[int, float]]]


def _from_metrics(path: Path) -> Curves:
    curves: Curves = {}
    for row in read_metrics(path):
        split = row.get("eval")
        prefix = split if split else "train"
        for k, v in row.items():
            if k in ("step", "eval", "skipped") or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if split is None and k not in ("loss", "lr", "grad_norm"):
                continue
            curves.setdefault(f"{prefix}/{k}", []).append((int(row["step"]), float(v)))
    if "train/loss" in curves:  # token runs: a perplexity curve too
        curves["train/ppl"] = [(s, math.exp(min(v, 50))) for s, v in curves["train/loss"]]
    return curves


def _from_tensorboard(directory: Path) -> Curves:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: Curves = {}
    for events in sorted(directory.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(dict(v).items()) for k, v in curves.items()}


def _from_summary(path: Path) -> Curves:
    s = json.loads(path.read_text())
    curves: Curves = {}
    for split, metrics in (s.get("eval") or {}).items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                curves[f"{split}/{k}"] = [(int(s.get("step", 0)), float(v))]
    return curves


def load_curves(path) -> Curves:
    """Curves of one run directory, TensorBoard directory or summary.json."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return _from_summary(p)
    if p.is_file() and p.name == "metrics.jsonl":
        return _from_metrics(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: not a run directory, TensorBoard directory or summary.json")
    if (p / "metrics.jsonl").exists():
        return _from_metrics(p / "metrics.jsonl")
    if any(p.rglob("events.out.tfevents.*")):
        return _from_tensorboard(p)
    if (p / "summary.json").exists():
        return _from_summary(p / "summary.json")
    raise FileNotFoundError(f"{p}: no metrics.jsonl, TensorBoard events or summary.json inside")


def _ema(values: Sequence[float], alpha: float) -> List[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def plot_runs(runs: Dict[str, Curves], out_png, keys: Sequence[str], smooth: float = 0.0, title: str = ""):
    """One panel per key in ``keys`` present in any run, one line per run; saves ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in c for c in runs.values())]
    if not present:
        raise ValueError(f"none of {list(keys)} in these runs; available: "
                         f"{sorted(set(k for c in runs.values() for k in c))}")
    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, present):
        for name, curves in runs.items():
            pts = curves.get(key)
            if not pts:
                continue
            steps = [s for s, _ in pts]
            vals = [v for _, v in pts]
            if key.startswith("train/") and smooth > 0:
                vals = _ema(vals, smooth)
            style = "o-" if len(pts) < 30 else "-"
            ax.plot(steps, vals, style, label=name, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key.endswith("ppl"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return present
