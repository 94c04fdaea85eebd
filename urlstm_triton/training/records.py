"""Run records: the per-step metrics log (JSON lines) and the JSON summary.

``metrics.jsonl`` holds one line per optimiser step (loss, lr, grad norm, skipped, ...). When a run resumes from
step s, lines after s (written by the killed run) are dropped first, so the file is always the loss curve of the
run as if it had never been interrupted; a half-written last line is dropped too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

from .files import write_json_atomic


def read_metrics(path) -> List[Dict[str, Any]]:
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is unreliable
    return rows


class MetricsLog:
    def __init__(self, path, keep_until_step: int, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a")

    def write(self, row: Dict[str, Any]) -> None:
        if self.enabled:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self.enabled:
            self._fh.close()


def write_summary(path, summary: Dict[str, Any]) -> None:
    write_json_atomic(summary, path)
