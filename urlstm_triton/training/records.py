"""Run records: the per-step metrics log (JSON lines) and the JSON summary.

``metrics.jsonl`` holds one line per optimiser step (loss, lr, grad norm, skipped, ...) and one per evaluation
(``"eval": split``). It is always the record of one run as if it had never been interrupted:

- when a run resumes from step s, the lines after s (written by the killed run) are dropped first; a damaged line
  (not JSON: cut by a kill, or edited) is reported by its line number and dropped, and every other line is kept;
- an evaluation of a split is recorded once per step: evaluating it again at the same step (a run killed during
  its final evaluation, or a finished run resumed) replaces the earlier line;
- every line is strict JSON: a non-finite value (the loss of a skipped step) is written as ``null`` and named in
  ``"nonfinite": {"loss": "nan"}``; ``read_metrics`` gives the float back.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ..errors import StorageError
from ..files import atomic_write, finite_json, write_json_atomic

log = logging.getLogger("urlstm_triton.training")
NONFINITE = "nonfinite"


def encode_row(row: Dict[str, Any]) -> str:
    """One metrics line: non-finite floats as null, named with their value in ``"nonfinite"``."""
    flags = {k: str(v) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    out = finite_json(row)
    if flags:
        out[NONFINITE] = flags
    return json.dumps(out, allow_nan=False)


def decode_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A metrics line as written: the flagged values back as floats (nan, inf, -inf)."""
    flags = row.pop(NONFINITE, None)
    if isinstance(flags, dict):
        for k, v in flags.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
    return row


def read_metrics(path) -> List[Dict[str, Any]]:
    """Every readable line of a metrics log; each damaged one is reported (with its line number) and skipped."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a row of this log")
        except ValueError:
            if number == len(lines):  # no newline after it: the last write was cut (a kill)
                log.info("%s: line %d was cut off by an interrupted write; dropped", path, number)
            else:
                log.warning("%s: line %d is damaged (not a JSON row); dropped, the other lines are kept", path,
                            number)
            continue
        rows.append(decode_row(row))
    return rows


def _eval_key(row: Dict[str, Any]) -> Optional[Tuple[int, str]]:
    return (row["step"], row["eval"]) if "eval" in row else None


class MetricsLog:
    """Appends rows to ``path``; made when a run starts or resumes at step ``keep_until_step`` (see the module
    docstring). A write that fails (disk full) is kept as ``error``, a ``StorageError`` naming the file, and the
    log writes nothing more; ``check()`` raises it (the trainer does, on every process at once, at the next step's
    collective: only the main process writes the log)."""

    def __init__(self, path, keep_until_step: int, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.error: Optional[StorageError] = None
        self._fh = None
        if not enabled:
            return
        rows = [r for r in read_metrics(self.path) if r["step"] <= keep_until_step]
        self._evals: Set[Tuple[int, str]] = {k for k in map(_eval_key, rows) if k}
        try:
            self._rewrite(rows)
        except StorageError as e:
            self.error = e

    def _rewrite(self, rows: List[Dict[str, Any]]) -> None:
        if self._fh is not None:
            self._fh.close()
        try:
            atomic_write(self.path, "".join(encode_row(r) + "\n" for r in rows))
            self._fh = open(self.path, "a")
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror or e}") from e

    def write(self, row: Dict[str, Any]) -> None:
        if not self.enabled or self.error is not None:
            return
        key = _eval_key(row)
        try:
            if key in self._evals:  # this split was evaluated at this step before (an interrupted final evaluation)
                self._fh.close()
                self._fh = None
                self._rewrite([r for r in read_metrics(self.path) if _eval_key(r) != key])
            if key:
                self._evals.add(key)
            self._fh.write(encode_row(row) + "\n")
            self._fh.flush()
        except StorageError as e:
            self.error = e
        except OSError as e:
            self.error = StorageError(f"cannot write {self.path}: {e.strerror or e}")

    def check(self) -> None:
        """Raise the error of a failed write, if there was one."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass  # the write that failed already said why
            self._fh = None


def write_summary(path, summary: Dict[str, Any]) -> None:
    """``summary.json``, replaced atomically (non-finite values as null); a failed write is a ``StorageError``."""
    try:
        write_json_atomic(summary, path)
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e.strerror or e}") from e
