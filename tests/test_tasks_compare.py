"""scripts/compare.py on generated summaries: the Markdown table and one PNG of curves per task."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from urlstm_triton.tasks.compare import SummaryError, compare, find_summaries


def _run(root, name, task, variant, accuracy, steps=100, extra=None):
    d = root / name
    d.mkdir(parents=True)
    evals = [{"step": s, "eval": "test", "loss": 2.0 - s / 100, "accuracy": accuracy * s / steps}
             for s in range(20, steps + 1, 20)]
    lines = [{"step": s, "loss": 2.0 - s / steps, "grad_norm": 1.0, "lr": 1e-3, "skipped": False}
             for s in range(1, steps + 1)] + evals
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    summary = {"task": task, "variant": variant, "step": steps, "status": "completed", "wall_s": 12.0,
               "units": "images", "train_images_per_s": 321.0, "eval_split": "test",
               "final": evals[-1] | {"eval": None}, "chance": {"accuracy": 0.1},
               "best": {"accuracy": {"value": accuracy, "step": steps}, "loss": {"value": 1.0, "step": steps}},
               **(extra or {})}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_table_and_plots(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "a", "smnist", "UR", 0.91, extra={"paper_ur_lstm_accuracy": 0.9928, "train_images": 4000,
                                                 "test_images": 1000})
    _run(runs, "b", "smnist", "lstm", 0.55, extra={"train_images": 4000, "test_images": 1000})
    _run(runs, "c", "copy", "U-", 0.3)
    res = compare([runs], tmp_path / "out")
    table = res["table"]
    assert res["runs"] == 3
    assert "### copy" in table and "### smnist" in table
    assert "99.28%" in table  # the paper's number beside ours
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "91.00%" in rows["UR-LSTM (`UR`)"] and "55.00%" in rows["LSTM (`lstm`)"]
    assert "4000/1000" in rows["UR-LSTM (`UR`)"] and "321 images/s" in rows["LSTM (`lstm`)"]
    assert "U-LSTM (`U-`)" in rows
    assert (tmp_path / "out" / "comparison.md").read_text() == table
    pngs = sorted(p.name for p in res["plots"])
    assert pngs == ["copy.png", "smnist.png"]
    for p in res["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10000


def test_script_and_bad_input(tmp_path):
    _run(tmp_path / "runs", "a", "adding", "UR", 0.0)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(tmp_path / "runs" / "a"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "### adding" in proc.stdout and (tmp_path / "o" / "adding.png").exists()
    with pytest.raises(SummaryError, match="no summary.json found"):
        find_summaries([tmp_path / "o"])
    with pytest.raises(SummaryError, match="nowhere: no such file"):
        find_summaries([tmp_path / "nowhere"])
    bad = tmp_path / "bad" / "summary.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(SummaryError, match=r"bad/summary.json: cannot be read as JSON"):
        compare([bad], tmp_path / "o2")
    bad.write_text(json.dumps({"job": "lm"}))
    with pytest.raises(SummaryError, match="has no 'task'"):
        compare([bad], tmp_path / "o2")
