"""Collect validation-task run summaries into a Markdown table and PNG curves (``scripts/compare.py``).

A run is a directory holding ``summary.json`` (written by ``train/synthetic.py`` or ``train/vision.py``) and
``metrics.jsonl`` (the training loss of every step and each evaluation). Runs are grouped by task; within a task
each variant is one row of the table and one line on each plot, so variants sit side by side.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from ..gates import ALL_VARIANTS, parse_gate
from ..training.records import read_metrics
from .run_summary import HIGHER_IS_BETTER, eval_history

# the metric each task is judged by, first in the table
HEADLINE = {"copy": "accuracy", "adding": "mse", "smnist": "accuracy", "pmnist": "accuracy", "scifar": "accuracy"}
# "solved" thresholds of the synthetic tasks: the first evaluation that reaches it says how fast a variant learns
TARGETS = {"copy": ("accuracy", 0.9), "adding": ("mse", 0.01)}
# table and legend order: the outside baseline first, then the paper's grid
ORDER = ("lstm",) + tuple(v for v in ALL_VARIANTS if v != "lstm")


def _order(r: Dict[str, Any]):
    return (ORDER.index(r["variant"]) if r["variant"] in ORDER else len(ORDER), r["_path"])


def task_size(r: Dict[str, Any]) -> str:
    """The task's size from the run's config (``lag 20``, ``T 100``): runs of different sizes are not compared."""
    t = r.get("config", {}).get("task", {})
    if r["task"] == "copy" and "lag" in t:
        return f"lag {t['lag']}"
    if r["task"] == "adding" and "length" in t:
        return f"T {t['length']}"
    return ""


def setup(r: Dict[str, Any]) -> str:
    """What else distinguishes runs of one task: hidden size, batch, learning rate, forget bias, seed."""
    cfg = r.get("config", {})
    m, t = cfg.get("model", {}), cfg.get("train", {})
    batch = cfg.get("task", cfg.get("data", {})).get("batch_size")
    parts = [f"H {m['hidden']}"] if "hidden" in m else []
    parts += [f"batch {batch}"] if batch else []
    parts += [f"lr {t['lr']:g}"] if "lr" in t else []
    parts += [f"forget bias {m['forget_bias']:g}"] if m.get("forget_bias") is not None else []
    parts += [f"seed {t['seed']}"] if t.get("seed") else []
    return ", ".join(parts) or "–"


def groups(runs: List[Dict[str, Any]]):
    """``(title, runs)`` per task and size, runs in variant order."""
    keys = sorted({(r["task"], task_size(r)) for r in runs})
    for task, size in keys:
        yield task, (f"{task}, {size}" if size else task), sorted(
            (r for r in runs if r["task"] == task and task_size(r) == size), key=_order)


def first_step_reaching(history: List[Dict[str, Any]], metric: str, target: float) -> Optional[int]:
    """The first evaluated step at which ``metric`` reached ``target`` (>= for accuracy, <= otherwise)."""
    for row in history:
        v = row.get(metric)
        if isinstance(v, (int, float)) and (v >= target if metric in HIGHER_IS_BETTER else v <= target):
            return int(row["step"])
    return None


class SummaryError(ValueError):
    """A summary file that is missing, unreadable or not a validation-task summary; names the file."""


def find_summaries(paths: Iterable) -> List[Path]:
    """``summary.json`` files: given directly, in a given run directory, or anywhere below a given directory."""
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / "summary.json").is_file():
            found.append(p / "summary.json")
        elif p.is_dir():
            found.extend(sorted(p.rglob("summary.json")))
        else:
            raise SummaryError(f"{p}: no such file or directory")
    if not found:
        raise SummaryError(f"no summary.json found under {', '.join(map(str, paths)) or '(no paths given)'}")
    return sorted(dict.fromkeys(found))


def load_run(path: Path) -> Dict[str, Any]:
    """One run: its summary plus its metrics history (``train_loss`` and ``evals`` by step)."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SummaryError(f"{path}: cannot be read as JSON ({err})") from err
    for key in ("task", "variant", "final", "best", "step"):
        if key not in summary:
            raise SummaryError(f"{path}: has no {key!r}: not a summary of train/synthetic.py or train/vision.py")
    rows = read_metrics(Path(path).parent / "metrics.jsonl")
    summary["_path"] = str(path)
    summary["_train_loss"] = [(r["step"], r["loss"]) for r in rows if "eval" not in r and "loss" in r]
    summary["_evals"] = eval_history(rows, summary.get("eval_split", "test"))
    return summary


def _fmt(v: Optional[float], metric: str) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return f"{100 * v:.2f}%" if metric == "accuracy" else f"{v:.4g}"


def _variant_label(code: str) -> str:
    try:
        return f"{parse_gate(code).paper_name} (`{code}`)"
    except ValueError:
        return f"`{code}`"


def markdown_table(runs: List[Dict[str, Any]]) -> str:
    """One table per task and size: variant, setup, steps, final and best of each metric, wall time, throughput, run."""
    out: List[str] = []
    for task, title, group in groups(runs):
        metrics = [HEADLINE.get(task, "loss")] + (["loss"] if HEADLINE.get(task) != "loss" else [])
        if task == "adding":
            metrics = ["mse", "mse_vs_chance"]
        chance = group[0].get("chance", {})
        note = ", ".join(f"{k} {_fmt(v, k)}" for k, v in chance.items())
        paper = next((r["paper_ur_lstm_accuracy"] for r in group if r.get("paper_ur_lstm_accuracy")), None)
        if paper:
            note += f"; the paper's UR-LSTM on the full data set: {_fmt(paper, 'accuracy')}"
        out.append(f"### {title}" + (f" (chance: {note})" if note else ""))
        out.append("")
        target = TARGETS.get(task)
        has_data = any("train_images" in r for r in group)
        reach = [f"first step with {target[0]} {'≥' if target[0] in HIGHER_IS_BETTER else '≤'} "
                 f"{_fmt(target[1], target[0])}"] if target else []
        head = ["variant", "setup", "steps"] + [f"final {m}" for m in metrics] + \
               [f"best {m} (step)" for m in metrics] + reach + \
               (["data (train/test)"] if has_data else []) + ["wall", "throughput", "run"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in group:
            final = [_fmt(r["final"].get(m), m) for m in metrics]
            best = []
            for m in metrics:
                b = r["best"].get(m)
                best.append(f"{_fmt(b['value'], m)} ({b['step']})" if b else "–")
            unit = r.get("units", "samples")
            rate = r.get(f"train_{unit}_per_s")
            data = [f"{r.get('train_images', '?')}/{r.get('test_images', '?')}"] if has_data else []
            if target:
                hit = first_step_reaching(r["_evals"], *target)
                best.append(str(hit) if hit is not None else "not reached")
            cells = [_variant_label(r["variant"]), setup(r), str(r["step"])] + final + best + data + [
                f"{r.get('wall_s', float('nan')):.0f} s", f"{rate:.0f} {unit}/s" if rate else "–",
                f"`{Path(r['_path']).parent}`"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def _smooth(values: List[float], window: int) -> List[float]:
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(runs: List[Dict[str, Any]], out_dir: Path) -> List[Path]:
    """One PNG per task and size: training loss (smoothed), then each evaluation metric, a line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, title, group in groups(runs):
        metrics = ["mse"] if task == "adding" else [m for m in ("accuracy", "loss")]
        fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(5.0 * (1 + len(metrics)), 4.0), squeeze=False)
        axes = axes[0]
        counts = {}
        for r in group:
            counts[r["variant"]] = counts.get(r["variant"], 0) + 1
        for r in group:
            label = parse_gate(r["variant"]).paper_name
            if counts[r["variant"]] > 1:  # the same variant twice (another size or seed): name the run too
                label += f" ({Path(r['_path']).parent.name})"
            if r["_train_loss"]:
                steps, losses = zip(*r["_train_loss"])
                axes[0].plot(steps, _smooth(list(losses), max(1, len(losses) // 50)), label=label)
            for ax, m in zip(axes[1:], metrics):
                pts = [(e["step"], e[m]) for e in r["_evals"] if m in e]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
        axes[0].set_title(f"{title}: training loss")
        for ax, m in zip(axes[1:], metrics):
            ax.set_title(f"{title}: {group[0].get('eval_split', 'test')} {m}")
            chance = group[0].get("chance", {}).get(m)
            if chance is not None:
                ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
            if m == "mse":
                ax.set_yscale("log")  # solved runs sit orders of magnitude below chance
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / (title.replace(", ", "-").replace(" ", "") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def compare(paths: Iterable, out_dir) -> Dict[str, Any]:
    """Read every summary under ``paths``; write ``comparison.md`` and one PNG per task into ``out_dir``."""
    runs = [load_run(p) for p in find_summaries(list(paths))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    (out_dir / "comparison.md").write_text(table)
    pngs = plot_curves(runs, out_dir)
    return {"table": table, "markdown": out_dir / "comparison.md", "plots": pngs, "runs": len(runs)}
