"""scripts/bench_kernels.py runs on a CPU (reference, nn.LSTM and, in the interpreter, Triton) and writes its
table and JSON."""
import importlib.util
import json

import pytest

from conftest import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "scripts" / "bench_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_runs_on_cpu_and_writes_table_and_json(tmp_path, capsys):
    bench = load_bench()
    path = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--configs", "", "--config", "3,2,4,8", "--dtypes", "fp32,bf16",
                     "--chunk", "2", "--min-time", "0", "--max-reps", "3", "--warmup", "1", "--json", str(path)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["environment"]["torch"] and report["environment"]["triton"]
    # the correctness check ran for the Triton rows in fp32 (bf16 is skipped in the interpreter)
    checks = {(c["dtype"], c["impl"]): c for c in report["checks"]}
    assert set(checks) == {("fp32", "triton"), ("fp32", "triton-chunk2")}
    assert all(c["ok"] and c["max_error"] < 1e-4 for c in checks.values())
    rows = {(r["dtype"], r["impl"]): r for r in report["results"]}
    assert set(rows) == {(d, i) for d in ("fp32", "bf16") for i in ("triton", "triton-chunk2", "reference", "nn.LSTM")}
    for key in [("fp32", i) for i in ("triton", "triton-chunk2", "reference", "nn.LSTM")] + [("bf16", "reference")]:
        r = rows[key]
        assert r["fwd_bwd"]["median_ms"] > 0 and r["fwd"]["median_ms"] > 0 and r["fwd_bwd"]["reps"] == 3
        assert r["peak_mib_fwd_bwd"] is None  # no memory accounting on a CPU
    assert "interpreter" in rows[("bf16", "triton")]["skipped"]
    table = report["table"]
    assert table in printed
    header = table.splitlines()[0].split()
    assert header[:3] == ["config", "dtype", "impl"] and "nn.LSTM" in header
    line = next(l for l in table.splitlines() if " fp32 " in l and " reference " in l)
    assert line.split()[0] == "T3-B2-I4-H8"
    # the reference row's ratio against nn.LSTM is its time over nn.LSTM's
    ref_ms = rows[("fp32", "reference")]["fwd_bwd"]["median_ms"]
    lstm_ms = rows[("fp32", "nn.LSTM")]["fwd_bwd"]["median_ms"]
    assert f"{ref_ms / lstm_ms:.3g}" in line
    # --summarize re-prints a saved report (what scripts/gpu_check.sh ends with); a missing file is named
    assert bench.main(["--summarize", str(tmp_path / "missing.json"), str(path)]) == 0
    summary = capsys.readouterr().out
    assert "missing.json: missing" in summary and table in summary and "check T3-B2-I4-H8 fp32 triton:" in summary


def test_bench_rejects_bad_arguments():
    bench = load_bench()
    with pytest.raises(SystemExit, match="T,B,I,H"):
        bench.main(["--device", "cpu", "--configs", "", "--config", "3,2,4"])
    with pytest.raises(SystemExit, match="unknown config"):
        bench.main(["--device", "cpu", "--configs", "huge"])
    with pytest.raises(SystemExit, match="--dtypes"):
        bench.main(["--device", "cpu", "--configs", "", "--config", "3,2,4,8", "--dtypes", "fp8"])


def test_bench_times_explicit_step_tiles_and_rejects_bad_ones(tmp_path):
    """--tile FWD/BWD runs the step kernels with those tiles (here split reductions and sub-tiled epilogues in
    the interpreter), checked against float64 like every Triton row."""
    bench = load_bench()
    path = tmp_path / "tiles.json"
    rc = bench.main(["--device", "cpu", "--configs", "", "--config", "2,3,4,20", "--dtypes", "fp32", "--impls",
                     "triton", "--tile", "16.4.16.2.4.4/16.16.16.3.4.8", "--min-time", "0", "--max-reps", "3",
                     "--warmup", "0", "--no-fwd-only", "--check-steps", "2", "--json", str(path)])
    assert rc == 0
    report = json.loads(path.read_text())
    checks = {c["impl"]: c for c in report["checks"]}
    assert checks["triton-t16.4.16.2.4.4_16.16.16.3.4.8"]["ok"]
    cfg = bench.triton_options("triton-t16.4.16.2.4.4_16.16.16.3.4.8")["config"]
    assert (cfg.fwd.split_k, cfg.fwd.epi_h, cfg.bwd.split_k, cfg.bwd.epi_h) == (2, 4, 3, 8)
    # the library-GEMM step (Tiles.gemm) in one direction, fused in the other; specs round-trip
    impl = "triton-tgemm.16.8.4_16.16.16.3.4.8.3"
    rc = bench.main(["--device", "cpu", "--configs", "", "--config", "2,3,4,20", "--dtypes", "fp32", "--impls",
                     "triton", "--tile", impl[len("triton-t"):], "--min-time", "0", "--max-reps", "3", "--warmup",
                     "0", "--no-fwd-only", "--check-steps", "2", "--json", str(path)])
    assert rc == 0 and {c["impl"]: c for c in json.loads(path.read_text())["checks"]}[impl]["ok"]
    cfg = bench.triton_options(impl)["config"]
    assert cfg.fwd.gemm and (cfg.fwd.block_b, cfg.fwd.block_h) == (16, 8) and not cfg.bwd.gemm
    assert f"{bench.tile_spec(cfg.fwd)}_{bench.tile_spec(cfg.bwd)}" == impl[len("triton-t"):]
    for bad in ("16.4.16.2", "16.4.16.2.4/16.16", "12.4.16.1.4/16.16.16.1.4", "gemm.16.8/16.16.16.1.4"):
        with pytest.raises(SystemExit, match="--tile"):
            bench.main(["--device", "cpu", "--configs", "", "--config", "2,3,4,20", "--tile", bad])
