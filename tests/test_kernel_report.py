"""scripts/kernel_report.py: every kernel family compiled for sm_90 without a GPU, with the installed triton.

The compile targets of issue 11, checked from ptxas's own log: no spill in any bf16 compile of the step and
persistent kernels (the benchmark configs, the tiles the dispatcher chooses and every other candidate of the tile
tuner), and a full wave of programs
(>= one per SM) for the step kernels of lm-seed, big-batch, lm-1k and smnist. Plus the report's own contract
(columns, JSON, estimates beside cuDNN's measured times, argument errors), and the step kernels launched with
programmatic dependent launch. Run in a subprocess: the tests
run the kernels in Triton's interpreter, the report needs them compiled.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import triton

from conftest import ROOT

FULL_WAVE = ("lm-seed", "big-batch", "lm-1k", "smnist")


def _has_ptxas() -> bool:
    return (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def run_report(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_report.py"), *args, "--json", str(path)],
                          capture_output=True, text=True, env=env, timeout=1500)
    return proc, (json.loads(path.read_text()) if path.exists() else None)


@pytest.fixture(scope="module")
def bf16_report(tmp_path_factory):
    if not _has_ptxas():
        pytest.skip("this triton wheel has no ptxas")
    proc, report = run_report(tmp_path_factory.mktemp("report"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, report


def test_every_bf16_compile_is_spill_free_and_step_launches_fill_the_gpu(bf16_report):
    proc, report = bf16_report
    rows = report["rows"]
    assert report["problems"] == [] and "PROBLEM" not in proc.stdout
    step = {(r["kernel"], r["config"]): r for r in rows if r["kernel"].startswith("step-")}
    assert set(step) == {(k, c) for k in ("step-fwd", "step-bwd")
                         for c in ("lm-seed", "lm-1k", "smnist", "adding", "big-batch")}
    persistent = [r for r in rows if r["kernel"].startswith("persistent-")]
    assert {r["config"] for r in persistent} >= {"adding", "smnist", "lm-1k"}  # co-resident plans compile
    for r in step.values():
        assert r["arch"] == "sm_90" and r["dtype"] == "bf16" and r["triton"] == triton.__version__
    candidates = [r for r in rows if r["kernel"].startswith("cand-")]  # what the tile tuner may pick instead
    assert {(r["kernel"], r["config"]) for r in candidates} >= {("cand-fwd", "lm-seed"), ("cand-bwd", "big-batch")}
    for r in list(step.values()) + persistent + candidates:
        assert r["spill_bytes"] == 0 and r["stack"] == 0, r
        assert 0 < r["registers"] <= 255 and 0 < r["shared_bytes"] <= 232448, r
    for (kernel, config), r in step.items():
        if config in FULL_WAVE:
            assert r["programs"] >= r["sms"] == 132, r
    # one MMA per reduction step over all gate blocks: the forward's is at least 64 wide where it is a wgmma
    for config in FULL_WAVE:
        mma = step[("step-fwd", config)]["mma"]
        widths = [int(shape.split("n")[1].split("k")[0]) for shape in mma.split() if shape.startswith("m64n")]
        assert widths and min(widths) >= 64, mma
    # lm-seed's backward has at most ~128 registers (issue 11: one CTA per SM and two waves before)
    assert step[("step-bwd", "lm-seed")]["registers"] <= 128


def test_pdl_rows_are_the_step_tiles_with_griddepcontrol_and_no_spills(bf16_report):
    """The step kernels launched with programmatic dependent launch (``Tiles.pdl``, what the tuner tries for its
    winner on sm_90): the same tiles and registers as without, both griddepcontrol instructions in the PTX (and
    none without PDL), the wait before any global memory access, and an estimate that drops only the launch
    gaps."""
    from urlstm_triton.benchmarks import CONFIGS
    from urlstm_triton.kernels.cost_model import H200

    _, report = bf16_report
    rows = {(r["kernel"], r["config"]): r for r in report["rows"]}
    for config, (T, B, I, H) in CONFIGS.items():
        for direction in ("fwd", "bwd"):
            step, pdl = rows[(f"step-{direction}", config)], rows[(f"pdl-{direction}", config)]
            assert pdl["tiles"] == step["tiles"] + " pdl" and pdl["programs"] == step["programs"]
            assert pdl["griddepcontrol"] and pdl["waits_first"] and not step["griddepcontrol"]
            assert pdl["spill_bytes"] == 0 and pdl["registers"] <= 255, pdl
        saved = rows[("step-fwd", config)]["est_ms_fwd_bwd"] - rows[("pdl-fwd", config)]["est_ms_fwd_bwd"]
        assert abs(saved - 2 * T * H200.launch_gap_s * 1e3) < 0.02, (config, saved)


def test_estimates_sit_beside_cudnn_and_the_table_has_every_column(bf16_report):
    proc, report = bf16_report
    from urlstm_triton.benchmarks import CUDNN_MS

    for r in report["rows"]:
        if r.get("est_ms_fwd_bwd") is not None:
            assert r["est_ms_fwd_bwd"] > 0 and r["cudnn_ms"] == CUDNN_MS["bf16"][r["config"]]
    header = report["table"].splitlines()[0]
    for column in ("kernel", "config", "dtype", "triton", "arch", "registers", "spill_bytes", "shared_bytes",
                   "programs", "sms", "mma", "est_ms_fwd_bwd", "cudnn_ms"):
        assert f" {column} " in header
    assert report["table"] in proc.stdout and "ESTIMATE" in proc.stdout
    assert report["environment"]["machine"]["sms"] == 132
    # the persistent family is reported as not used where no tiling is co-resident
    lm_seed = [r for r in report["rows"] if r["config"] == "lm-seed" and r["kernel"] == "persistent"]
    assert lm_seed and lm_seed[0]["note"].startswith("not used:")


def test_roofline_estimate_meets_the_lm_seed_target(bf16_report):
    """Issue 11's estimate target for lm-seed (<= 12 ms, cuDNN measured 13.8): the planner must keep a
    tiling that the cost model says reaches it."""
    _, report = bf16_report
    est = next(r["est_ms_fwd_bwd"] for r in report["rows"] if r["kernel"] == "step-fwd" and r["config"] == "lm-seed")
    assert est <= 12.0


def test_every_candidate_row_has_an_estimate_of_its_whole_config(bf16_report):
    """Candidate rows carry the estimate of the config with that candidate in its direction (the model's pick in
    the other); the library-GEMM step's rows are there, one per config and direction."""
    _, report = bf16_report
    candidates = [r for r in report["rows"] if r["kernel"].startswith("cand-")]
    assert all(r["est_ms_fwd_bwd"] > 0 for r in candidates)
    gemm = {(r["kernel"], r["config"]) for r in candidates if r["tiles"].startswith("library GEMM")}
    assert gemm == {(k, c) for k in ("cand-fwd", "cand-bwd") for c in ("lm-seed", "lm-1k", "smnist", "adding",
                                                                      "big-batch")}


def test_waits_before_memory_reads_the_ptx_order():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import kernel_report
    finally:
        sys.path.pop(0)
    head = ".visible .entry k(\n\tld.param.b64 %rd1, [p];\n"
    assert kernel_report.waits_before_memory(head + "\tgriddepcontrol.wait ;\n\tld.global.b32 %r1, [%rd1];\n")
    assert not kernel_report.waits_before_memory(head + "\tld.global.b32 %r1, [%rd1];\n\tgriddepcontrol.wait ;\n")
    assert not kernel_report.waits_before_memory(head + "\tcp.async.cg.shared.global [%r2], [%rd1], 16;\n"
                                                        "\tgriddepcontrol.wait ;\n")
    assert not kernel_report.waits_before_memory(head + "\tld.global.b32 %r1, [%rd1];\n")  # no wait at all


def test_library_gemm_step_estimate_is_bounded_by_streaming_u():
    """The library-GEMM step's estimate: never faster than streaming U (from HBM where it does not fit in L2,
    as lm-seed's 75 MB; from L2 otherwise) plus two launches; forward and backward estimates dispatch to it."""
    from urlstm_triton.kernels import Tiles
    from urlstm_triton.kernels.cost_model import H200
    from urlstm_triton.kernels.step_plan import backward_estimate, forward_estimate, library_gemm_estimate

    gemm = Tiles(16, 64, 16, gemm=True)
    for B, H, rate in ((128, 3072, H200.hbm_bytes_per_s), (256, 1024, H200.l2_bytes_per_s)):
        u = 4 * H * H * 2
        floor = u / rate + 2 * (H200.launch_gap_s + H200.latency_s)
        for backward, estimate in ((False, forward_estimate), (True, backward_estimate)):
            e = library_gemm_estimate(B, H, 4, 2, 2, backward)
            assert e.seconds > floor and e.parts["main"] >= u / rate
            assert estimate(B, H, 4, gemm, 2, 2).seconds == e.seconds
    # more rows cost more gate math and GEMM output, never less
    small, large = (library_gemm_estimate(B, 1024, 4, 2, 2, True).seconds for B in (64, 512))
    assert large > small


def test_report_rejects_bad_arguments(tmp_path):
    for args, msg in ((["--dtypes", "fp8"], "--dtypes"), (["--configs", "huge"], "--configs"),
                      (["--families", "fast"], "--families"), (["--arch", "75"], "--arch")):
        proc, _ = run_report(tmp_path, *args)
        assert proc.returncode == 2 and msg in proc.stderr, (args, proc.stderr[-500:])


def test_custom_config_and_other_architecture(tmp_path):
    """A T,B,I,H config and sm_80 (no wgmma there: mma.sync), fp32 beside bf16, the persistent family only."""
    if not _has_ptxas():
        pytest.skip("this triton wheel has no ptxas")
    proc, report = run_report(tmp_path, "--arch", "80", "--dtypes", "bf16,fp32", "--configs", "300,8,4,64",
                              "--families", "persistent,pdl")  # no PDL before sm_90: no pdl rows
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = report["rows"]
    assert {(r["kernel"], r["dtype"]) for r in rows} == {(k, d) for k in ("persistent-fwd", "persistent-bwd")
                                                         for d in ("bf16", "fp32")}
    for r in rows:
        assert r["arch"] == "sm_80" and r["sms"] == 108 and r["config"] == "T300-B8-I4-H64"
        assert "wgmma" not in (r["mma"] or "") and r["spill_bytes"] == 0


def test_started_under_the_interpreter_it_compiles_anyway(tmp_path):
    """TRITON_INTERPRET=1 (as in this test process) makes main() run the report again without it; importing
    the module changes nothing in the caller's environment."""
    if not _has_ptxas():
        pytest.skip("this triton wheel has no ptxas")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import kernel_report
    finally:
        sys.path.pop(0)
    assert os.environ.get("TRITON_INTERPRET") == "1"  # conftest's setting survived the import
    path = tmp_path / "r.json"
    rc = kernel_report.main(["--configs", "50,8,4,32", "--families", "persistent", "--json", str(path)])
    assert rc == 0 and os.environ.get("TRITON_INTERPRET") == "1"
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(r["registers"] and r["spill_bytes"] == 0 for r in rows)
