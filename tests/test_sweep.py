"""scripts/sweep.py: grid files, the runs they expand to, which runs are done, a tiny sweep end to end, resume."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from urlstm_triton.tasks.sweep import SweepError, expand, parse_sweep, run_state, run_sweep, select, variant_args

GRID = {"job": "synthetic", "preset": "copy-tiny", "variants": ["lstm", "--", "UR-LSTM"], "seeds": [0, 1],
        "sizes": {"lag3": ["--lag", "3"], "lag5": ["--lag", "5"]}, "args": ["--run.threads", "1"]}


def test_grid_expands_seed_major_with_resumable_commands(tmp_path):
    sweep = parse_sweep(GRID)
    assert sweep.variants == ["lstm", "--", "UR"]  # canonical codes
    runs = expand(sweep, tmp_path)
    assert len(runs) == 12
    assert [r.seed for r in runs] == [0] * 6 + [1] * 6  # every cell once before any second seed
    r = runs[1]
    assert (r.size, r.variant, r.seed) == ("lag3", "--", 0) and r.dir == tmp_path / "lag3" / "__" / "seed0"
    assert r.argv == ["--preset", "copy-tiny", "--lag", "3", "--run.threads", "1", "--model.variant=--",
                      "--train.seed", "0", "--run.dir", str(r.dir), "--resume"]
    assert variant_args("lstm") == ["--model.variant=lstm"] and variant_args("--") == ["--model.variant=--"]
    assert [x.name for x in select(runs, variants=["UR"], seeds=[1])] == [str(tmp_path / s / "UR" / "seed1")
                                                                         for s in ("lag3", "lag5")]
    with pytest.raises(SweepError, match="seed 7 is in no sweep"):
        select(runs, seeds=[7])


@pytest.mark.parametrize("change, problem", [
    ({"job": "nope"}, "job must be one of"),
    ({"variants": ["UR", "XX"]}, "unknown variant 'XX'"),
    ({"seeds": [0, 0]}, "seeds has duplicates"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"sizes": {"a/b": []}}, "not usable as a directory name"),
    ({"args": ["--train.seed", "3"]}, "--train.seed is set by the sweep itself"),
    ({"sizes": {"x": ["--variant=UR"]}}, "--variant is set by the sweep itself"),
    ({"extra": 1}, "unknown field"),
])
def test_bad_grids_are_refused_with_the_field(change, problem):
    with pytest.raises(SweepError, match=problem):
        parse_sweep({**GRID, **change}, "grid.json")


def test_run_state(tmp_path):
    assert run_state(tmp_path / "none") == "new"
    d = tmp_path / "r"
    d.mkdir()
    assert run_state(d) == "new"
    (d / "config.json").write_text("{}")
    assert run_state(d) == "partial"  # started, no summary yet (killed before its first one)
    for summary, state in (({"status": "completed", "step": 10, "steps": 10}, "done"),
                           ({"status": "completed", "step": 10, "steps": 20}, "partial"),  # more steps asked now
                           ({"status": "interrupted", "step": 4, "steps": 10}, "partial"),
                           ({"status": "failed: RuntimeError", "step": 4, "steps": 10}, "partial"),
                           ({"status": "stopped: non-finite", "step": 4, "steps": 10}, "done")):
        (d / "summary.json").write_text(json.dumps(summary))
        assert run_state(d) == state, summary


def test_tiny_sweep_runs_skips_finished_runs_resumes_and_reports(tmp_path):
    grid = {"job": "synthetic", "preset": "copy-tiny", "variants": ["lstm", "U-"], "seeds": [0, 1],
            "sizes": {"lag2": ["--lag", "2", "--train.steps", "4", "--train.eval_every", "2"]},
            "args": ["--run.threads", "1", "--run.tensorboard", "false", "--run.progress", "false",
                     "--task.eval_size", "32", "--hidden", "8", "--train.save_every", "2"]}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(grid))
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), str(path), "--root", str(tmp_path / "runs"),
           "--workers", "2", "--collect", str(tmp_path / "kept")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "4 completed, 0 skipped, 0 failed" in proc.stderr
    assert "| U-LSTM (`U-`) | H 8, batch 32, lr 0.01 | 0, 1 | 4 |" in proc.stdout  # one row, both seeds
    kept = sorted(p.relative_to(tmp_path / "kept").as_posix() for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert kept == [f"tiny/lag2/{v}/seed{s}/{f}" for v in ("U_", "lstm") for s in (0, 1)
                    for f in ("metrics.jsonl", "summary.json")]
    kept_summary = json.loads((tmp_path / "kept" / "tiny" / "lag2" / "U_" / "seed0" / "summary.json").read_text())
    assert kept_summary["run_dir"] == "runs/tiny/lag2/U_/seed0" == kept_summary["config"]["run"]["dir"]
    assert kept_summary["last_checkpoint"] == "runs/tiny/lag2/U_/seed0/checkpoints/step-00000004"
    assert str(tmp_path) not in (tmp_path / "kept" / "tiny" / "lag2" / "U_" / "seed0" / "summary.json").read_text()
    report = tmp_path / "runs" / "report"
    assert {p.name for p in report.iterdir()} == {"comparison.md", "runs.md", "copy-lag2.png"}

    # a run that was interrupted at step 2 is resumed from its checkpoint; the finished ones are skipped
    run_dir = tmp_path / "runs" / "tiny" / "lag2" / "U_" / "seed1"
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    proc = subprocess.run(cmd[:-2] + ["--no-report"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "1 completed, 3 skipped, 0 failed" in proc.stderr
    assert "resumed from" in (run_dir / "sweep.log").read_text()


def test_a_failing_run_is_reported_and_the_rest_still_run(tmp_path):
    from urlstm_triton.tasks.sweep import SweepRun

    ok = SweepRun("synthetic", "s", "lstm", 0, tmp_path / "ok", ["--help"])
    bad = SweepRun("synthetic", "s", "lstm", 1, tmp_path / "bad", ["--no-such-option", "1"])
    lines = []
    res = run_sweep([bad, ok], workers=1, echo=lines.append)
    assert res["failed"] == [str(tmp_path / "bad"), str(tmp_path / "ok")]  # --help exits 0 but writes no summary
    assert "unknown option" in (tmp_path / "bad" / "sweep.log").read_text().lower() or \
        "no-such-option" in (tmp_path / "bad" / "sweep.log").read_text()
    assert any("FAILED" in line and "exit 2" in line for line in lines)
