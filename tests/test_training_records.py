"""metrics.jsonl (urlstm_triton/training/records.py): strict JSON with flagged non-finite values, damaged lines
reported and skipped (the rest kept), cut back to the resumed step, one evaluation row per split and step."""
import json
import math
import os

import pytest

from urlstm_triton.errors import StorageError
from urlstm_triton.training import MetricsLog, read_metrics


def test_non_finite_values_are_null_with_a_flag_and_read_back_as_floats(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, keep_until_step=0)
    log.write({"step": 1, "loss": 2.5, "grad_norm": 1.0, "lr": 0.1, "skipped": False})
    log.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1, "skipped": True})
    log.write({"step": 2, "eval": "valid", "loss": float("-inf")})
    log.close()
    lines = path.read_text().splitlines()
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    raw = [json.loads(line) for line in lines]  # every line is strict JSON
    assert raw[1]["loss"] is None and raw[1]["nonfinite"] == {"loss": "nan", "grad_norm": "inf"}
    assert raw[2]["nonfinite"] == {"loss": "-inf"} and "nonfinite" not in raw[0]
    rows = read_metrics(path)
    assert math.isnan(rows[1]["loss"]) and rows[1]["grad_norm"] == math.inf and rows[2]["loss"] == -math.inf
    assert rows[0] == {"step": 1, "loss": 2.5, "grad_norm": 1.0, "lr": 0.1, "skipped": False}


def test_a_damaged_line_is_reported_and_the_rest_kept(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    good = [{"step": s, "loss": float(s)} for s in range(1, 6)]
    lines = [json.dumps(r) for r in good]
    lines.insert(2, '{"step": 3, "lo')  # damaged in the middle
    path.write_text("\n".join(lines) + '\n{"step": 6, "loss"')  # and a last line cut by a kill
    with caplog.at_level("INFO", logger="urlstm_triton.training"):
        rows = read_metrics(path)
    assert rows == good
    assert f"{path}: line 3 is damaged (not a JSON row); dropped, the other lines are kept" in caplog.text
    assert f"{path}: line 7 was cut off by an interrupted write; dropped" in caplog.text
    MetricsLog(path, keep_until_step=4).close()  # a resume from step 4: rows after it go, the damaged line too
    assert read_metrics(path) == good[:4] and len(path.read_text().splitlines()) == 4


def test_an_evaluation_is_recorded_once_per_split_and_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, keep_until_step=0)
    for s in (1, 2):
        log.write({"step": s, "loss": 1.0})
    log.write({"step": 2, "eval": "valid", "loss": 3.0})
    log.close()
    # killed during the final evaluation (valid written, test not), resumed from the checkpoint of step 2
    log = MetricsLog(path, keep_until_step=2)
    log.write({"step": 2, "eval": "valid", "loss": 3.5})
    log.write({"step": 2, "eval": "test", "loss": 4.0})
    log.write({"step": 2, "eval": "test", "loss": 4.5})
    log.close()
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 1.0},
                                  {"step": 2, "eval": "valid", "loss": 3.5}, {"step": 2, "eval": "test", "loss": 4.5}]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_failed_write_names_the_file(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", keep_until_step=0)
    log._fh.close()
    log._fh = open("/dev/full", "w")  # every write: ENOSPC
    log.write({"step": 1, "loss": 1.0})  # kept, for the trainer to raise on every process at once
    with pytest.raises(StorageError, match=r"cannot write .*metrics.jsonl: No space left on device"):
        log.check()
    log.close()


def test_a_log_that_cannot_be_rewritten_keeps_the_error(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)  # the rewrite's temporary file cannot reach the disk
    log = MetricsLog(tmp_path / "metrics.jsonl", keep_until_step=0)
    log.write({"step": 1, "loss": 1.0})
    with pytest.raises(StorageError, match=r"cannot write .*metrics.jsonl: No space left on device"):
        log.check()
    log.close()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
