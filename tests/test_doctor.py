"""``python -m urlstm_triton.doctor`` (urlstm_triton/doctor.py): its report, its exit status, and a fault it must catch.

Without a GPU the doctor runs its checks in Triton's interpreter (conftest has turned it on for this process;
the subprocess test checks that the doctor turns it on by itself). Filters keep each run to a few seconds.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from urlstm_triton import doctor
from urlstm_triton import kernels as step_kernels
from urlstm_triton.kernels import persistent as P
from urlstm_triton.parity import QUANTITIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, *args):
    path = tmp_path / "doctor.json"
    rc = doctor.main([*args, "--json", str(path)])
    return rc, json.loads(path.read_text())


def by_family(report):
    out = {}
    for c in report["checks"]:
        out.setdefault(c["family"], {})[(c["mode"], c["dtype"])] = c
    return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter report (a GPU runs the GPU checks)")
def test_interpreter_report_names_every_family_and_passes(tmp_path, capsys):
    rc, report = run(tmp_path, "--modes", "refine", "--dtypes", "fp32,bf16")
    out = capsys.readouterr().out
    assert rc == 0 and report["ok"] is True and report["failed"] == []
    assert report["device"] == "interpreter" and "no CUDA GPU" in out
    env = report["environment"]
    for key in ("python", "torch", "triton", "cuda", "cudnn", "gpu", "sm_count", "shared_memory_per_block"):
        assert key in env
    assert env["triton"] and env["interpreter"] is True
    families = by_family(report)
    assert set(families) == set(doctor.FAMILIES)
    for family in ("step", "persistent", "chunked"):
        c = families[family][("refine", "fp32")]
        assert c["passed"] is True and c["skipped"] is None and 0 < c["max_error"] < c["tolerance"] == 1e-4
        for case in c["cases"]:
            # outputs, final states, every gradient, and the fused weights' gradients per gate block
            assert set(QUANTITIES) <= set(case["errors"]) and "dw_hh[r]" in case["errors"]
        assert "bf16" in families[family][("refine", "bf16")]["skipped"]
        assert families[family][("refine", "bf16")]["passed"] is None
    assert [c["options"]["kernel"] for c in families["chunked"][("refine", "fp32")]["cases"]] == ["step", "persistent"]
    for c in families["graphed"].values():
        assert c["passed"] is None and "CUDA" in c["skipped"]
    assert report["self_check"][0]["passed"] is None and report["timings"] == []
    for family in doctor.FAMILIES:  # the printed table names every family too
        assert f"\n{family} " in out
    assert "all checks passed" in out


def test_a_wrong_kernel_fails_the_check_and_the_exit_status(tmp_path, capsys, monkeypatch):
    real = P.forward_sequence

    def off_by_a_little(xproj, w_hh, hs, cs, gates, mode, config):
        real(xproj, w_hh, hs, cs, gates, mode, config)
        hs[1:] *= 1.001  # 0.1% off: ten times issue 3's fp32 bound

    monkeypatch.setattr(P, "forward_sequence", off_by_a_little)
    rc, report = run(tmp_path, "--families", "step,persistent", "--modes", "classic", "--dtypes", "fp32")
    out = capsys.readouterr().out
    assert rc == 1 and report["ok"] is False
    families = by_family(report)
    assert families["step"][("classic", "fp32")]["passed"] is True
    bad = families["persistent"][("classic", "fp32")]
    assert bad["passed"] is False and bad["max_error"] > 1e-4 and "one hidden tile" in bad["error"]
    assert len(report["failed"]) == 1 and report["failed"][0].startswith("persistent/classic/fp32")
    assert "FAILED (1):\n  persistent/classic/fp32: one hidden tile" in out


def test_a_kernel_that_raises_is_a_failure_with_its_message(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of resources: shared memory\nmore detail")

    monkeypatch.setattr(step_kernels, "backward_sequence", broken)
    rc, report = run(tmp_path, "--families", "chunked", "--modes", "tied", "--dtypes", "fp16", "--quick")
    assert rc == 1
    (check,) = report["checks"]
    assert check["passed"] is False and check["error"].endswith("RuntimeError: out of resources: shared memory")
    assert check["cases"][0]["options"] == {"kernel": "step", "chunk_size": 3}


def test_bad_arguments_exit_2_with_the_choices(capsys):
    assert doctor.main(["--families", "step,fast"]) == 2
    assert "step,persistent,chunked,graphed" in capsys.readouterr().err
    assert doctor.main(["--dtypes", ""]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter fallback of a machine without a GPU")
def test_command_line_turns_the_interpreter_on_by_itself(tmp_path):
    path = tmp_path / "d.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "urlstm_triton.doctor", "--quick", "--families", "persistent",
                           "--modes", "tied", "--dtypes", "fp32", "--json", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    assert report["device"] == "interpreter" and report["checks"][0]["passed"] is True


@pytest.mark.cuda
def test_gpu_quick_report(tmp_path):
    rc, report = run(tmp_path, "--quick", "--modes", "refine", "--dtypes", "bf16", "--cache-dir", str(tmp_path))
    assert rc == 0, report["failed"]
    assert report["device"] == "gpu" and report["environment"]["sm_count"] > 0
    assert {c["family"] for c in report["checks"] if c["passed"]} == set(doctor.FAMILIES)
    assert report["self_check"][0]["passed"] is True


# ---------------------------------------------------- the GPU path's pieces, checked without a GPU


H200 = P.DeviceLimits(sm_count=132, smem_per_block=232448, regs_per_sm=65536)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_problems_are_what_their_names_say(dtype):
    """On an H200 (132 SMs) the GPU problems give the persistent kernels a program on every SM, several hidden
    and batch tiles, ragged last tiles; and the step kernels more programs than SMs."""
    from urlstm_triton.kernels import pick_config

    def plan(problem, options, gates=4):
        return P.plan_persistent(problem.batch, problem.hidden, gates, dtype, H200, options.get("config"))

    cases = {name: (problem, options) for name, problem, options in doctor.family_cases("persistent", True, 132)}
    full = plan(*cases["one program per SM, U streamed"])
    assert full.num_programs == 132 and cases["one program per SM, U streamed"][0].hidden % full.block_h
    assert P.coresidency_reason(full, H200) == ""
    for gates in (3, 4):
        planned = plan(*cases["planned tiles"], gates=gates)
        assert planned.n_h > 1 and cases["planned tiles"][0].hidden % planned.block_h
        batch_tiles = plan(*cases["5 batch tiles, U streamed"], gates=gates)
        assert batch_tiles.n_b == 5 and not batch_tiles.u_on_chip
    (_, odd, _), (_, many, _), (_, split_problem, split), (_, gemm_problem, gemm) = \
        doctor.family_cases("step", True, 132)
    assert split["config"].fwd.split_k > 1 and split["config"].bwd.split_k > 1
    assert split["config"].bwd.epi_h < split["config"].bwd.block_h  # the epilogue in sub-tiles
    assert gemm["config"].fwd.gemm and gemm["config"].bwd.gemm  # the library-GEMM step, both directions
    assert gemm_problem.hidden % gemm["config"].bwd.block_h and gemm_problem.batch % gemm["config"].fwd.block_b
    for problem in (odd, many):
        config = pick_config(problem.batch, problem.hidden, True, num_sms=132, elem_bytes=dtype.itemsize, gates=4)
        for t in (config.fwd, config.bwd):
            assert problem.batch % t.block_b and problem.hidden % t.block_h  # ragged last tiles
            if problem is many:
                assert -(-many.batch // t.block_b) * t.split_k * -(-many.hidden // t.block_h) >= 132
    graphed = doctor.family_cases("graphed", True, 132)
    assert [o["kernel"] for _, _, o in graphed] == ["step", "persistent"]
    assert all(o["cuda_graph"] for _, _, o in graphed)


def test_gpu_self_check_rows_and_table(monkeypatch):
    from urlstm_triton import selfcheck

    calls = []

    def fake_verdict(device, mode, dtype, cache_dir=None, refresh=False):
        calls.append((mode, dtype, refresh))
        ok = dtype != torch.float16
        return selfcheck.Verdict(ok, "" if ok else "planned tiles: dx 1e-1 >= 0.02", 2.5, "checked", "k", "/c")

    monkeypatch.setattr(selfcheck, "verdict", fake_verdict)
    def fake_run_checks(device, mode, dtype):  # the second run, timed: the GPU's memory full for classic
        if mode == 2:
            raise selfcheck.Inconclusive("memory full")
        return ""

    monkeypatch.setattr(selfcheck, "run_checks", fake_run_checks)
    rows = doctor.self_check_rows(["tied", "classic"], ["bf16", "fp16"], torch.device("cuda"), True, None)
    assert calls == [(0, torch.bfloat16, True), (0, torch.float16, True),
                     (2, torch.bfloat16, True), (2, torch.float16, True)]
    assert [r["passed"] for r in rows] == [True, False, True, False]
    assert [r["seconds_compiled"] is None for r in rows] == [False, False, True, True]
    table = doctor.self_check_table(rows)
    assert "FAILED: step kernels run" in table and "dx 1e-1" in table and "passed: persistent kernels on" in table
    report = {"checks": [], "self_check": rows}
    assert doctor.failures(report) == ["self-check tied/fp16: planned tiles: dx 1e-1 >= 0.02",
                                       "self-check classic/fp16: planned tiles: dx 1e-1 >= 0.02"]


def test_timing_rows_and_table():
    """The GPU timing on a tiny shape in the interpreter (the code path; the numbers mean nothing here)."""
    rows = doctor.time_against_lstm(torch.device("cpu"), {"tiny": (3, 2, 3, 8)}, dtype=torch.float32, reps=1, warmup=0)
    (row,) = rows
    assert row["auto_kernel"] == "step" and row["urlstm_ms"] > 0 and row["lstm_ms"] > 0 and "error" not in row
    assert row["ratio"] == pytest.approx(row["urlstm_ms"] / row["lstm_ms"], rel=1e-2)
    table = doctor.timing_table(rows)
    assert table.splitlines()[2].startswith("tiny") and "float32" in table


def test_pdl_cases_only_where_the_gpu_has_programmatic_dependent_launch(monkeypatch):
    """On sm_90+ the doctor checks the step kernels launched with PDL, eagerly and graph-replayed (its
    programmatic edges captured); elsewhere there is nothing to check beyond the plain step kernels."""
    from urlstm_triton.kernels import common

    for supported in (True, False):
        monkeypatch.setattr(common, "pdl_supported", lambda device, s=supported: s)
        step = {name: o for name, _, o in doctor.family_cases("step", True, 132)}
        graphed = {name: o for name, _, o in doctor.family_cases("graphed", True, 132)}
        pdl = step.get("programmatic dependent launch")
        assert (pdl is not None) == supported
        assert ("step kernels, programmatic dependent launch" in graphed) == supported
        if supported:
            assert pdl["config"].fwd.pdl and pdl["config"].bwd.pdl and pdl["config"].fwd.split_k > 1
            assert graphed["step kernels, programmatic dependent launch"]["cuda_graph"]
        assert not any(name.startswith("programmatic") for name, _, _ in doctor.family_cases("step", False, 0))
