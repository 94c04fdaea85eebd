"""What a validation-task run adds to the shared trainer's ``summary.json``: the task, the variant, the final
and best evaluation metrics (best over every periodic evaluation in ``metrics.jsonl``) and the chance level.

``scripts/compare.py`` reads these summaries (and the metrics logs beside them) back.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

from ..training.records import read_metrics, write_summary

# metrics where larger is better; every other metric (loss, mse) is better when smaller
HIGHER_IS_BETTER = ("accuracy",)


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` beats ``b``."""
    return a > b if metric in HIGHER_IS_BETTER else a < b


def eval_history(rows: List[Dict[str, Any]], split: str) -> List[Dict[str, Any]]:
    """The evaluation rows of ``split`` from a metrics log, in step order."""
    return [r for r in rows if r.get("eval") == split]


def best_metrics(history: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """``{metric: {"value": best, "step": at}}`` over the evaluation history."""
    best: Dict[str, Dict[str, float]] = {}
    for row in history:
        for k, v in row.items():
            if k in ("step", "eval") or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            if k not in best or better(k, v, best[k]["value"]):
                best[k] = {"value": float(v), "step": int(row["step"])}
    return best


def complete_summary(summary: Dict[str, Any], run_dir, split: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Add the final/best metrics of ``split`` and ``extra`` (task, variant, chance...) and rewrite the file."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    history = eval_history(rows, split)
    out = dict(summary)
    out.update(extra)
    out["eval_split"] = split
    out["final"] = summary.get("eval", {}).get(split, {})
    out["best"] = best_metrics(history)
    write_summary(Path(run_dir) / "summary.json", out)
    return out
