"""Collect validation-task run summaries into a Markdown table and PNG curves (``scripts/compare.py``).

A run is a directory holding ``summary.json`` (written by ``train/synthetic.py`` or ``train/vision.py``) and
``metrics.jsonl`` (the training loss of every step and each evaluation). Runs are grouped by task; within a task
each variant is one row of the table and one line on each plot, so variants sit side by side.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import SummaryError
from ..gates import ALL_VARIANTS, parse_gate
from ..training.records import read_metrics
from .run_summary import HIGHER_IS_BETTER, best_metrics, eval_history

# the metric each task is judged by, first in the table
HEADLINE = {"copy": "accuracy", "adding": "mse", "smnist": "accuracy", "pmnist": "accuracy", "scifar": "accuracy",
            "lm": "word_ppl"}
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


def setup(r: Dict[str, Any], seed: bool = False) -> str:
    """What else distinguishes runs of one task: hidden size, batch, learning rate, forget bias (and, with
    ``seed``, a seed other than 0); runs of one variant and setup are the seeds of one cell."""
    cfg = r.get("config", {})
    m, t = cfg.get("model", {}), cfg.get("train", {})
    batch = cfg.get("task", cfg.get("data", {})).get("batch_size")
    parts = [f"H {m['hidden']}"] if "hidden" in m else []
    parts += [f"batch {batch}"] if batch else []
    parts += [f"lr {t['lr']:g}"] if "lr" in t else []
    parts += [f"forget bias {m['forget_bias']:g}"] if m.get("forget_bias") is not None else []
    parts += [f"seed {t['seed']}"] if seed and t.get("seed") else []
    return ", ".join(parts) or "–"


def groups(runs: List[Dict[str, Any]]):
    """``(title, runs)`` per task and size (sizes in numeric order: lag 20 before lag 100), runs in variant order."""
    def size_key(key):
        number = "".join(ch for ch in key[1] if ch.isdigit())
        return key[0], int(number) if number else -1, key[1]

    keys = sorted({(r["task"], task_size(r)) for r in runs}, key=size_key)
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


def lm_summary(summary: Dict[str, Any], rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A ``train/lm.py`` summary in the validation tasks' terms: task ``lm``; the variant (``lstm`` for the
    torch.nn.LSTM baseline, else the URLSTM's gate); final and best of the periodic ``valid`` evaluations; the
    end-of-run ``test`` evaluation (of the final weights: the LM job does not select)."""
    model = summary.get("config", {}).get("model", {})
    variant = model.get("variant") or ("lstm" if model.get("rnn") == "lstm" else model.get("gate", "?"))
    valid = eval_history(rows, "valid")
    return {**summary, "task": "lm", "variant": variant, "eval_split": "valid",
            "final": summary.get("eval", {}).get("valid", {}), "best": best_metrics(valid),
            "test": summary.get("eval", {}).get("test", {}), "chance": {}}


def load_run(path: Path) -> Dict[str, Any]:
    """One run: its summary plus its metrics history (``train_loss`` and ``evals`` by step)."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SummaryError(f"{path}: cannot be read as JSON ({err})") from err
    if isinstance(summary, dict) and summary.get("job") == "lm" and "task" not in summary:
        summary = lm_summary(summary, read_metrics(Path(path).parent / "metrics.jsonl"))
    for key in ("task", "variant", "final", "best", "step"):
        if key not in summary:
            raise SummaryError(f"{path}: has no {key!r}: not a summary of train/synthetic.py, train/vision.py or "
                               "train/lm.py")
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


def _headline_metrics(task: str) -> List[str]:
    if task == "adding":
        return ["mse", "mse_vs_chance"]
    if task == "lm":
        return ["word_ppl", "ppl", "loss"]
    return [HEADLINE.get(task, "loss")] + (["loss"] if HEADLINE.get(task) != "loss" else [])


def _title_note(task: str, group: List[Dict[str, Any]]) -> str:
    chance = group[0].get("chance", {})
    note = ", ".join(f"{k} {_fmt(v, k)}" for k, v in chance.items())
    paper = next((r["paper_ur_lstm_accuracy"] for r in group if r.get("paper_ur_lstm_accuracy")), None)
    if paper:
        note += f"; the paper's UR-LSTM on the full data set: {_fmt(paper, 'accuracy')}"
    return f" (chance: {note})" if note else ""


def _reach_header(task: str) -> List[str]:
    target = TARGETS.get(task)
    if not target:
        return []
    sign = "≥" if target[0] in HIGHER_IS_BETTER else "≤"
    return [f"first step with {target[0]} {sign} {_fmt(target[1], target[0])}"]


def _solved_at(r: Dict[str, Any]) -> Optional[int]:
    target = TARGETS.get(r["task"])
    return first_step_reaching(r["_evals"], *target) if target else None


def markdown_table(runs: List[Dict[str, Any]]) -> str:
    """One row per run, one table per task and size: variant, setup (with the seed), steps, final and best of
    each metric, first step to solve, wall time, throughput, run directory."""
    out: List[str] = []
    for task, title, group in groups(runs):
        metrics = _headline_metrics(task)
        out += [f"### {title}" + _title_note(task, group), ""]
        has_data = any("train_images" in r for r in group)
        selected = all(_selected_test(r) for r in group)
        split = group[0].get("eval_split", "test")
        reach = _reach_header(task)
        head = ["variant", "setup", "steps"] + \
            ([_test_label(group, metrics[0], split) + (" (step)" if group[0].get("selected") else "")]
             if selected else []) + \
            [f"final {split} {m}" if selected else f"final {m}" for m in metrics] + \
            [f"best {split} {m} (step)" if selected else f"best {m} (step)" for m in metrics] + reach + \
            ([f"data (train/{'valid/' if selected else ''}test)"] if has_data else []) + ["wall", "throughput", "run"]
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
            data = [_data_cell(r)] if has_data else []
            if selected:
                step = f" ({r['selected'].get('step', '?')})" if r.get("selected") else ""
                final = [_fmt(r["test"].get(metrics[0]), metrics[0]) + step] + final
            if reach:
                hit = _solved_at(r)
                best.append(str(hit) if hit is not None else "not reached")
            cells = [_variant_label(r["variant"]), setup(r, seed=True), str(r["step"])] + final + best + data + [
                f"{r.get('wall_s', float('nan')):.0f} s", f"{rate:.0f} {unit}/s" if rate else "–",
                f"`{Path(r['_path']).parent}`"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def cells(group: List[Dict[str, Any]]) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """The runs of one task and size grouped into cells: same variant and setup, any seed."""
    out: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in group:
        out.setdefault((r["variant"], setup(r)), []).append(r)
    return [(variant, rs) for (variant, _), rs in out.items()]


def mean_std(values: List[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _fmt_mean_std(values: List[Optional[float]], metric: str) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return "–"
    mean, std = mean_std(vals)
    text = _fmt(mean, metric) + (f" ± {_fmt(std, metric)}" if std is not None else "")
    return text + (f" ({len(vals)} of {len(values)})" if len(vals) < len(values) else "")


def _run_dirs(rs: List[Dict[str, Any]]) -> str:
    """The cell's run directories, compactly: ``parent/{seed0,seed1}`` when they share a parent."""
    dirs = [Path(r["_path"]).parent for r in rs]
    if len(dirs) > 1 and len({d.parent for d in dirs}) == 1:
        return f"`{dirs[0].parent}/{{{','.join(d.name for d in dirs)}}}`"
    return ", ".join(f"`{d}`" for d in dirs)


def _selected_test(r: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The end-of-run test metrics of a run evaluated periodically on validation (vision: of the weights
    selected on it; lm: of the final weights), or None (a run whose periodic evaluations were on test)."""
    return r["test"] if r.get("test") and r.get("eval_split") != "test" else None


def _test_label(group: List[Dict[str, Any]], metric: str, split: str) -> str:
    if all(r.get("selected") for r in group):
        return f"test {metric} of the weights selected on {split}"
    return f"test {metric} (final weights)"


def _data_cell(r: Dict[str, Any]) -> str:
    sizes = [r.get("train_images", "?")] + ([r["valid_images"]] if "valid_images" in r else []) + \
        [r.get("test_images", "?")]
    return "/".join(map(str, sizes))


def summary_table(runs: List[Dict[str, Any]], compact: bool = False) -> str:
    """One table per task and size, one row per cell (variant and setup) over its seeds: the final headline
    metric as mean ± sample std and per seed (for runs selected on validation: the selected weights' test
    metric), the best as a mean, the first step to solve per seed and its mean over the seeds that solved,
    wall time and throughput means. ``compact``: only the variant, seeds, steps, headline and solve columns."""
    out: List[str] = []
    for task, title, group in groups(runs):
        metrics = _headline_metrics(task)
        head_m = metrics[0]
        out += [f"### {title}" + _title_note(task, group), ""]
        has_data = any("train_images" in r for r in group)
        selected = all(_selected_test(r) for r in group)
        split = group[0].get("eval_split", "test")
        final = _test_label(group, head_m, split) if selected else f"final {head_m}"
        picked = selected and all(r.get("selected") for r in group)
        reach = _reach_header(task)
        head = (["variant", "setup", "seeds", "steps", f"{final} (mean ± std)", f"{final} per seed"] +
                ([f"selected at step (best {split} {head_m})"] if picked else []) +
                [f"final {m} (mean ± std)" for m in metrics[1:]] + [f"best {split} {head_m} (mean)"] +
                (reach + ["mean first step (seeds solved)"] if reach else []) +
                ([f"data (train/{'valid/' if selected else ''}test)"] if has_data else []) +
                ["wall (mean)", "throughput (mean)", "runs"])
        keep = [i for i, h in enumerate(head) if not compact or h in ("variant", "seeds", "steps") or
                h.startswith((final, "selected at", "first step", "mean first step"))]
        out.append("| " + " | ".join(head[i] for i in keep) + " |")
        out.append("|" + "---|" * len(keep))
        for variant, rs in cells(group):
            rs = sorted(rs, key=lambda r: r.get("config", {}).get("train", {}).get("seed", 0))
            seeds = [str(r.get("config", {}).get("train", {}).get("seed", "?")) for r in rs]
            steps = sorted({int(r["step"]) for r in rs})
            not_done = [r.get("status", "?") for r in rs if r.get("status", "completed") != "completed"]
            steps_cell = "/".join(map(str, steps)) + (f" ({', '.join(not_done)})" if not_done else "")
            finals = [(_selected_test(r) if selected else r["final"]).get(head_m) for r in rs]
            row = [_variant_label(variant), setup(rs[0]), ", ".join(seeds), steps_cell,
                   _fmt_mean_std(finals, head_m), " / ".join(_fmt(v, head_m) for v in finals)]
            if picked:
                row.append(" / ".join(f"{(r.get('selected') or {}).get('step', '?')} "
                                      f"({_fmt((r.get('selected') or {}).get('valid', {}).get(head_m), head_m)})"
                                      for r in rs))
            row += [_fmt_mean_std([r["final"].get(m) for r in rs], m) for m in metrics[1:]]
            row.append(_fmt_mean_std([(r["best"].get(head_m) or {}).get("value") for r in rs], head_m))
            if reach:
                hits = [_solved_at(r) for r in rs]
                row.append(" / ".join(str(h) if h is not None else "not reached" for h in hits))
                solved = [h for h in hits if h is not None]
                row.append(f"{sum(solved) / len(solved):.0f} ({len(solved)}/{len(hits)})" if solved
                           else f"– (0/{len(hits)})")
            if has_data:
                row.append(", ".join(sorted({_data_cell(r) for r in rs})))
            unit = rs[0].get("units", "samples")
            walls = [r["wall_s"] for r in rs if isinstance(r.get("wall_s"), (int, float))]
            rates = [r[f"train_{unit}_per_s"] for r in rs if r.get(f"train_{unit}_per_s")]
            row += [f"{sum(walls) / len(walls):.0f} s" if walls else "–",
                    f"{sum(rates) / len(rates):.0f} {unit}/s" if rates else "–", _run_dirs(rs)]
            out.append("| " + " | ".join(row[i] for i in keep) + " |")
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


def _band(curves: List[List[Tuple[int, float]]]):
    """Steps, mean, min and max over the curves at each step that any curve has (the runs of one cell)."""
    by_step: Dict[int, List[float]] = {}
    for curve in curves:
        for s, v in curve:
            if isinstance(v, (int, float)) and math.isfinite(v):
                by_step.setdefault(int(s), []).append(float(v))
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def plot_curves(runs: List[Dict[str, Any]], out_dir: Path) -> List[Path]:
    """One PNG per task and size: training loss (smoothed), then each evaluation metric; per cell (variant and
    setup) the mean over its seeds as a line and the range from the lowest to the highest seed shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, title, group in groups(runs):
        metrics = {"adding": ["mse"], "lm": ["word_ppl", "loss"]}.get(task, ["accuracy", "loss"])
        fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(5.0 * (1 + len(metrics)), 4.0), squeeze=False)
        axes = axes[0]
        group_cells = cells(group)
        per_variant: Dict[str, int] = {}
        for variant, _ in group_cells:
            per_variant[variant] = per_variant.get(variant, 0) + 1
        for variant, rs in group_cells:
            label = parse_gate(variant).paper_name
            if per_variant[variant] > 1:  # the same variant in two setups: say which
                label += f" ({setup(rs[0])})"
            label += f", {len(rs)} seed{'s' if len(rs) > 1 else ''}"
            losses = []
            for r in rs:
                if r["_train_loss"]:
                    steps, vals = zip(*r["_train_loss"])
                    losses.append(list(zip(steps, _smooth(list(vals), max(1, len(vals) // 50)))))
            curves = [(axes[0], losses)] + [(ax, [[(e["step"], e[m]) for e in r["_evals"] if m in e] for r in rs])
                                            for ax, m in zip(axes[1:], metrics)]
            color = None
            for ax, cs in curves:
                steps, mean, lo, hi = _band(cs)
                if not steps:
                    continue
                (line,) = ax.plot(steps, mean, marker="o" if ax is not axes[0] else None, markersize=3,
                                  label=label, color=color)
                color = line.get_color()
                if len(rs) > 1:
                    ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
        axes[0].set_title(f"{title}: training loss")
        for ax, m in zip(axes[1:], metrics):
            ax.set_title(f"{title}: {group[0].get('eval_split', 'test')} {m}")
            chance = group[0].get("chance", {}).get(m)
            if chance is not None:
                ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
            if m in ("mse", "word_ppl"):
                ax.set_yscale("log")  # solved runs sit orders of magnitude below chance; perplexity spans decades
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / (title.replace(", ", "-").replace(" ", "") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def compare(paths: Iterable, out_dir, compact: bool = False) -> Dict[str, Any]:
    """Read every summary under ``paths``; write ``comparison.md`` (a row per cell over its seeds; ``compact``:
    fewer columns), ``runs.md`` (a row per run) and one PNG per task and size into ``out_dir``."""
    runs = [load_run(p) for p in find_summaries(list(paths))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, compact)
    (out_dir / "comparison.md").write_text(table)
    (out_dir / "runs.md").write_text(markdown_table(runs))
    pngs = plot_curves(runs, out_dir)
    return {"table": table, "markdown": out_dir / "comparison.md", "runs_markdown": out_dir / "runs.md",
            "plots": pngs, "runs": len(runs)}
