"""What a validation-task run adds to the shared trainer's ``summary.json``: the task, the variant, the final
and best evaluation metrics (best over every periodic evaluation in ``metrics.jsonl``) and the chance level.

``scripts/compare.py`` reads these summaries (and the metrics logs beside them) back.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..errors import StorageError
from ..training.records import read_metrics, write_summary

log = logging.getLogger("urlstm_triton.training")

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


def complete_summary(run_dir, split: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Add the final/best metrics of ``split`` and ``extra`` (task, variant, chance...) to the ``summary.json``
    the trainer wrote, and rewrite it. Called whether the run completed or not (a run stopped by the
    non-finite guard, interrupted or failed still says what it was), so it reads the summary from disk.
    ``extra`` values may be callables of the summary (e.g. epochs from the steps reached)."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():  # the run failed before training started: nothing to complete
        return {}
    summary = json.loads(path.read_text())
    history = eval_history(read_metrics(Path(run_dir) / "metrics.jsonl"), split)
    out = dict(summary)
    out.update({k: (v(summary) if callable(v) else v) for k, v in extra.items()})
    out["eval_split"] = split
    out["final"] = summary.get("eval", {}).get(split, {})
    out["best"] = best_metrics(history)
    failing = sys.exc_info()[1]  # called from a job's `finally`: the error the run is stopping with, if any
    try:
        write_summary(path, out)
    except StorageError as e:  # a full disk: the error that stopped the run stays the one reported
        if failing is None:
            raise
        log.error("%s (the summary of this failed run is not completed)", e)
    return out
