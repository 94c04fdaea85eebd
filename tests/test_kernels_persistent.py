"""Persistent kernels (kernels/persistent.py) vs the float64 oracle, their co-residency rule and the dispatch.

On a CPU the kernels run in Triton's interpreter, which runs programs one after another: a grid barrier can
only be met there by a grid with a single hidden tile, so the math is tested with one program per batch tile
(several batch tiles are independent and fine), and multi-tile grids only for a single step (no barrier).
The barrier's timeout guard is tested on a CPU by launching a grid whose programs can never meet. Grids with
many programs, bf16 and a grid exactly as large as the GPU are in the ``cuda`` tests below.

Errors and tolerances come from tests/test_kernels.py (the step kernels' tests): relative errors vs
``naive_recurrence`` in float64, gradients of the fused weights checked per gate block.
"""
from types import SimpleNamespace

import pytest
import torch

from test_kernels import TOL, assert_close, errors, make_problem, rel
from urlstm_triton import selfcheck
from urlstm_triton.gates import parse_gate
from urlstm_triton.kernels import persistent as P
from urlstm_triton.kernels import MODE_REFINE, TileConfig, forward_sequence as step_forward
from urlstm_triton.triton_backend import choose_kernel

STREAM = P.PersistentConfig(u_on_chip=False, block_k=16)  # U streamed in 16-wide K chunks every step

# H200-like limits (132 SMs, 227 KiB opt-in shared memory, 64K registers per SM).
H200 = P.DeviceLimits(sm_count=132, smem_per_block=232448, regs_per_sm=65536)


# ------------------------------------------------------------------------------- math, one hidden tile


@pytest.mark.parametrize("code", ["UR", "U-", "-R", "--", "CR", "lstm"])
def test_every_mode_fp32_matches_float64(code):
    spec = parse_gate(code)
    errs = errors(spec, make_problem(spec, 4, 3, 5, 7, torch.float32), torch.float32, kernel="persistent")
    assert_close(errs, TOL[torch.float32])


@pytest.mark.parametrize("code", ["UR", "U-", "lstm"])
def test_streamed_u_matches_float64(code):
    """U_ON_CHIP=False: H=20 takes two masked 16-wide K chunks per step in both directions."""
    spec = parse_gate(code)
    errs = errors(spec, make_problem(spec, 3, 2, 4, 20, torch.float32), torch.float32, kernel="persistent",
                  config=STREAM)
    assert_close(errs, TOL[torch.float32])


@pytest.mark.parametrize(
    "T,B,I,H,with_state",
    [
        (1, 1, 3, 12, True),    # one step, one row, H not a power of two
        (3, 1, 2, 16, False),   # B=1, exact tile, zero initial state
        (2, 17, 4, 20, True),   # B and H cross 16 (one 32-row tile, padded units)
        (3, 2, 9, 5, False),    # I > H, H < one tile
        (2, 70, 2, 5, True),    # two batch tiles of 64 rows: each its own barrier counter
    ],
)
def test_odd_shapes_fp32(T, B, I, H, with_state):
    spec = parse_gate("UR")
    errs = errors(spec, make_problem(spec, T, B, I, H, torch.float32, with_state), torch.float32,
                  kernel="persistent")
    assert_close(errs, TOL[torch.float32])


@pytest.mark.parametrize("code", ["UR", "U-", "lstm"])
@pytest.mark.parametrize("config", [None, STREAM], ids=["on_chip", "streamed"])
def test_fp16_matches_float64(code, config):
    spec = parse_gate(code)
    opts = {"config": config} if config else {}
    errs = errors(spec, make_problem(spec, 4, 3, 6, 20, torch.float16), torch.float16, kernel="persistent", **opts)
    assert_close(errs, TOL[torch.float16])


@pytest.mark.parametrize("code", ["UR", "lstm"])
def test_chunked_recurrence_on_persistent_kernels(code):
    """chunk_size=2 over T=5: backward takes dz_next from the later chunk (HAS_NEXT) for two of three chunks."""
    spec = parse_gate(code)
    errs = errors(spec, make_problem(spec, 5, 2, 3, 9, torch.float32), torch.float32, kernel="persistent",
                  chunk_size=2)
    assert_close(errs, TOL[torch.float32])


def test_single_step_with_many_hidden_tiles():
    """A one-step launch meets no barrier, so any grid is allowed (and runs in the interpreter): three
    hidden tiles of 16 units over H=40 check the tile offsets and masks of both kernels."""
    spec = parse_gate("UR")
    cfg = P.PersistentConfig(block_h=16)
    assert P.plan_persistent(2, 40, 4, torch.float32, P.INTERPRETER_LIMITS, cfg).n_h == 3
    errs = errors(spec, make_problem(spec, 1, 2, 3, 40, torch.float32), torch.float32, kernel="persistent",
                  config=cfg)
    assert_close(errs, TOL[torch.float32])


def _forward(family, config, steps=5, batch=3, hidden=20, mode=MODE_REFINE, save=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    xproj = torch.randn(steps, batch, 4 * hidden, generator=g)
    w_hh = torch.randn(4 * hidden, hidden, generator=g) / hidden ** 0.5
    hs = torch.empty(steps + 1, batch, hidden)
    cs = torch.empty(steps + 1, batch, hidden)
    hs[0] = torch.randn(batch, hidden, generator=g)
    cs[0] = torch.randn(batch, hidden, generator=g)
    gates = torch.empty(steps, batch, 4 * hidden) if save else None
    family(xproj, w_hh, hs, cs, gates, mode, config)
    return hs, cs, gates


def test_matches_the_step_kernels_and_inference_writes_no_gates():
    """Same launch-helper contract as the step kernels, same numbers (fp32, ieee dots); without a gates
    buffer (inference) the states are the same."""
    hs_s, cs_s, gates_s = _forward(step_forward, TileConfig())
    hs_p, cs_p, gates_p = _forward(P.forward_sequence, TileConfig())
    hs_i, cs_i, _ = _forward(P.forward_sequence, P.PersistentConfig(), save=False)
    assert rel(hs_p, hs_s) < 1e-6 and rel(cs_p, cs_s) < 1e-6 and rel(gates_p, gates_s) < 1e-6
    assert torch.equal(hs_i, hs_p) and torch.equal(cs_i, cs_p)


# --------------------------------------------------------------------------- barrier guard and refusal


def _never_met_plan(hidden=20):
    # two hidden tiles: in the interpreter program 0 runs to the end before program 1 starts, so program 0
    # can never see program 1 at the barrier: the bounded spin must give up and raise the flag
    plan = P.plan_persistent(3, hidden, 4, torch.float32, P.INTERPRETER_LIMITS, P.PersistentConfig(block_h=16))
    assert plan.n_h == 2
    return plan


def test_barrier_times_out_with_an_error_instead_of_hanging():
    cfg = P.PersistentConfig(max_spins=5, check="sync")
    g = torch.Generator().manual_seed(0)
    xproj = torch.randn(3, 3, 80, generator=g)
    w_hh = torch.randn(80, 20, generator=g)
    hs = torch.zeros(4, 3, 20)
    cs = torch.zeros(4, 3, 20)
    with pytest.raises(RuntimeError, match="grid barrier timed out"):
        P._launch_forward(xproj, w_hh, hs, cs, None, MODE_REFINE, _never_met_plan(), cfg)
    gates = torch.rand(3, 3, 80)
    with pytest.raises(RuntimeError, match="grid barrier timed out"):
        P._launch_backward(torch.randn(3, 3, 20), w_hh, gates, cs, torch.empty(3, 3, 80), torch.zeros(3, 20),
                           MODE_REFINE, _never_met_plan(), cfg, None, torch.zeros(3, 20))
    # the error cleared the flag (the only write to it is a timeout), so the next launch starts clean: a grid
    # that can meet (one hidden tile) does not raise with the same tiny spin budget, and its results are right
    assert int(P.error_flag(torch.device("cpu")).item()) == 0
    one = P.plan_persistent(3, 20, 4, torch.float32, P.INTERPRETER_LIMITS)
    P._launch_forward(xproj, w_hh, hs, cs, None, MODE_REFINE, one, cfg)
    hs_s, cs_s = torch.zeros(4, 3, 20), torch.zeros(4, 3, 20)
    step_forward(xproj, w_hh, hs_s, cs_s, None, MODE_REFINE, TileConfig())
    assert torch.allclose(hs, hs_s, atol=1e-6) and torch.allclose(cs, cs_s, atol=1e-6)


def test_forced_grid_that_cannot_meet_is_refused_with_the_reason():
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 3, 2, 3, 20, torch.float32)]
    from urlstm_triton.triton_backend import triton_recurrence
    with pytest.raises(RuntimeError, match="refused.*2 hidden tiles of 16"):
        triton_recurrence(*ps, spec, kernel="persistent", config=P.PersistentConfig(block_h=16))
    with pytest.raises(ValueError, match="block_h must be a power of two"):
        triton_recurrence(*ps, spec, kernel="persistent", config=P.PersistentConfig(block_h=24))
    with pytest.raises(ValueError, match="check must be"):
        triton_recurrence(*ps, spec, kernel="persistent", config=P.PersistentConfig(check="never"))


# ------------------------------------------------------------------------ co-residency rule (fake GPUs)


def test_plan_for_the_benchmark_configs_on_an_h200():
    # adding: 16 programs of 16 rows x 16 units; U's forward slice with one step's h rows (44 KiB) is over the
    # on-chip budget, so it is streamed
    adding = P.plan_persistent(10, 256, 4, torch.bfloat16, H200)
    assert (adding.block_b, adding.block_h, adding.n_h, adding.n_b, adding.u_on_chip) == (16, 16, 16, 1, False)
    assert adding.num_warps == 4 and P.coresidency_reason(adding, H200) == ""
    # smnist: one 64-row tile (an MMA of 64 rows) x 64 hidden tiles
    smnist = P.plan_persistent(50, 1024, 4, torch.bfloat16, H200)
    assert (smnist.block_b, smnist.block_h, smnist.n_h, smnist.n_b) == (64, 16, 64, 1)
    assert P.coresidency_reason(smnist, H200) == ""
    # H=3072 (lm-seed's width) at a small batch: 32-unit tiles (8 warps) so that the grid fits 132 SMs
    wide = P.plan_persistent(8, 3072, 4, torch.bfloat16, H200)
    assert wide.block_h == 32 and wide.n_h == 96 and wide.num_warps == 8 and P.coresidency_reason(wide, H200) == ""
    # a small hidden size keeps U's forward slice on chip (8 warps)
    small = P.plan_persistent(8, 128, 4, torch.bfloat16, H200)
    assert small.u_on_chip and small.num_warps == 8 and small.onchip_bytes <= P.ONCHIP_MAX_BYTES + P.SMEM_SLACK
    # big-batch: 4 batch tiles x 32 hidden tiles = 128 programs, co-resident
    big = P.plan_persistent(256, 1024, 4, torch.bfloat16, H200)
    assert big.num_programs <= 132 and P.coresidency_reason(big, H200) == ""
    # lm-seed: no tiling fits one program per SM
    assert "co-resident programs" in P.coresidency_reason(P.plan_persistent(128, 3072, 4, torch.bfloat16, H200),
                                                          H200)


def test_grid_exactly_full_is_accepted_one_more_program_is_refused():
    full = P.DeviceLimits(sm_count=16, smem_per_block=232448)
    plan = P.plan_persistent(10, 256, 4, torch.bfloat16, full)
    assert plan.num_programs == 16 and P.coresidency_reason(plan, full) == ""
    short = P.DeviceLimits(sm_count=15, smem_per_block=232448)
    auto = P.plan_persistent(10, 256, 4, torch.bfloat16, short)  # the planner widens the tiles instead
    assert auto.block_h == 32 and auto.num_programs == 8 and P.coresidency_reason(auto, short) == ""
    forced = P.plan_persistent(10, 256, 4, torch.bfloat16, short, P.PersistentConfig(block_h=16))
    reason = P.coresidency_reason(forced, short)
    assert "16 co-resident programs" in reason and "15 SMs" in reason
    assert P.coresidency_reason(forced, short, steps=1) == ""  # one step: no barrier
    # batch tiles count too: 2 x 64-row tiles x 16 hidden tiles = 32 > 16
    big_b = P.plan_persistent(100, 256, 4, torch.bfloat16, full, P.PersistentConfig(block_h=16))
    assert big_b.num_programs == 32 and "32 co-resident programs" in P.coresidency_reason(big_b, full)


def test_on_chip_budget():
    """U's forward slice stays on chip only within ONCHIP_MAX_BYTES (larger tiles spilled when compiled for
    sm_90) and the device's shared memory; forcing it on a small part is refused with the reason."""
    assert P.plan_persistent(10, 128, 4, torch.bfloat16, H200).u_on_chip      # (64 + 16) x 128 x 2 B = 20 KiB
    assert not P.plan_persistent(10, 256, 4, torch.bfloat16, H200).u_on_chip  # 40 KiB
    assert not P.plan_persistent(10, 128, 4, torch.float32, H200).u_on_chip   # 40 KiB in fp32
    small = P.DeviceLimits(sm_count=132, smem_per_block=16 * 1024)  # a 16 KiB part
    assert not P.plan_persistent(10, 128, 4, torch.bfloat16, small).u_on_chip
    forced = P.plan_persistent(10, 512, 4, torch.float32, small, P.PersistentConfig(u_on_chip=True))
    assert "shared memory" in P.coresidency_reason(forced, small)


def _fake_gpu(monkeypatch, sm_count=132):
    props = SimpleNamespace(multi_processor_count=sm_count, shared_memory_per_block_optin=232448,
                            regs_per_multiprocessor=65536)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(P, "interpreting", lambda: False)


def test_device_limits_from_properties(monkeypatch):
    _fake_gpu(monkeypatch, sm_count=78)
    lim = P.device_limits(torch.device("cuda"))
    assert (lim.sm_count, lim.smem_per_block, lim.regs_per_sm, lim.sequential) == (78, 232448, 65536, False)
    assert lim.onchip_budget == 232448


def test_auto_dispatch_rule(monkeypatch):
    cpu = torch.device("cpu")
    assert "CUDA" in P.unsuitable_reason(10, 256, cpu)
    assert choose_kernel("auto", 10, 256, cpu, dtype=torch.float32, steps=2000) is not P
    assert choose_kernel("persistent", 10, 256, cpu) is P
    _fake_gpu(monkeypatch)
    cuda = torch.device("cuda")
    bf16 = torch.bfloat16
    # where the rule holds, auto also needs the device's self-check (tests/test_selfcheck.py): here, a pass
    monkeypatch.setattr(selfcheck, "passed", lambda device, mode, dtype: True)
    assert P.suits(10, 256, cuda, dtype=bf16, steps=2000)        # adding
    assert P.suits(50, 1024, cuda, dtype=bf16, steps=784)        # smnist
    assert P.suits(64, 1024, cuda, dtype=bf16, steps=256)        # lm-1k
    assert not P.suits(128, 3072, cuda, dtype=bf16, steps=128)   # lm-seed: batch > 64
    assert not P.suits(256, 1024, cuda, dtype=bf16, steps=512)   # big-batch
    assert "steps" in P.unsuitable_reason(10, 256, cuda, dtype=bf16, steps=1)  # generation: one step per call
    assert P.suits(10, 256, cuda, dtype=bf16, steps=P.AUTO_MIN_STEPS)
    assert choose_kernel("auto", 10, 256, cuda, dtype=bf16, steps=2000) is P
    assert choose_kernel("auto", 10, 256, cuda, dtype=bf16, steps=1) is not P
    # graph-replayed, the step kernels measured faster on every small-batch config (BENCHMARKS.md)
    assert choose_kernel("auto", 10, 256, cuda, dtype=bf16, steps=2000, cuda_graph=True) is not P
    assert choose_kernel("persistent", 10, 256, cuda, dtype=bf16, steps=2000, cuda_graph=True) is P
    assert choose_kernel("step", 10, 256, cuda, dtype=bf16, steps=2000) is not P
    # a GPU too small for the grid at any tile size: the rule says why
    _fake_gpu(monkeypatch, sm_count=0)
    assert "SMs" in P.unsuitable_reason(10, 256, cuda, dtype=bf16, steps=2000)


# ---------------------------------------------------------------------------------------- GPU: many programs


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("code", ["UR", "U-", "lstm"])
def test_gpu_many_programs_match_float64(dtype, code):
    """Adding-task widths (B=10, H=256: 16 programs, U on chip) over 64 steps."""
    spec = parse_gate(code)
    ps = make_problem(spec, 64, 10, 2, 256, dtype, device="cuda", scale=0.3, conditioned=True)
    plan = P.plan_persistent(10, 256, spec.num_gates, dtype, P.device_limits(torch.device("cuda")))
    assert plan.n_h > 1
    assert_close(errors(spec, ps, dtype, kernel="persistent"), TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("config", [None, P.PersistentConfig(u_on_chip=False)], ids=["planned", "streamed"])
def test_gpu_smnist_widths_bf16(config):
    """smnist widths (B=50, H=1024): planned, two batch tiles x 64 hidden tiles with U on chip (on an H200);
    and U streamed."""
    spec = parse_gate("UR")
    ps = make_problem(spec, 16, 50, 1, 1024, torch.bfloat16, device="cuda", scale=0.2, conditioned=True)
    plan = P.plan_persistent(50, 1024, 4, torch.bfloat16, P.device_limits(torch.device("cuda")), config)
    assert plan.n_h > 1
    opts = {"config": config} if config else {}
    assert_close(errors(spec, ps, torch.bfloat16, kernel="persistent", **opts), TOL[torch.bfloat16])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_grid_exactly_full(dtype):
    """One program on every SM: H = 16 x SM count, 16-unit tiles."""
    limits = P.device_limits(torch.device("cuda"))
    H = 16 * limits.sm_count
    cfg = P.PersistentConfig(block_h=16, u_on_chip=False)
    plan = P.plan_persistent(4, H, 4, dtype, limits, cfg)
    assert plan.num_programs == limits.sm_count and P.coresidency_reason(plan, limits) == ""
    spec = parse_gate("UR")
    ps = make_problem(spec, 12, 4, 3, H, dtype, device="cuda", scale=0.1, conditioned=True)
    assert_close(errors(spec, ps, dtype, kernel="persistent", config=cfg), TOL[dtype])


@pytest.mark.cuda
def test_gpu_chunked_many_programs():
    spec = parse_gate("UR")
    ps = make_problem(spec, 40, 10, 2, 256, torch.float32, device="cuda", scale=0.3, conditioned=True)
    assert_close(errors(spec, ps, torch.float32, kernel="persistent", chunk_size=16), TOL[torch.float32])


@pytest.mark.cuda
def test_gpu_refuses_a_grid_larger_than_the_device():
    limits = P.device_limits(torch.device("cuda"))
    H = 16 * (limits.sm_count + 1)
    spec = parse_gate("UR")
    ps = [p.float() for p in make_problem(spec, 4, 2, 3, H, torch.float32, device="cuda", conditioned=True)]
    from urlstm_triton.triton_backend import triton_recurrence
    with pytest.raises(RuntimeError, match="refused.*SMs"):
        triton_recurrence(*ps, spec, kernel="persistent", config=P.PersistentConfig(block_h=16))
    # auto never picks a grid it would refuse (at 64 steps, where nothing else rules the persistent kernels out)
    assert P.suits(2, H, torch.device("cuda"), dtype=torch.float32, steps=64) == (
        P.coresidency_reason(P.plan_persistent(2, H, 4, torch.float32, limits), limits) == "")


@pytest.mark.cuda
def test_gpu_auto_picks_persistent_for_the_adding_config():
    """The self-check runs on this GPU (once, then cached) and must pass for auto to take the kernels."""
    assert choose_kernel("auto", 10, 256, torch.device("cuda"), dtype=torch.bfloat16, steps=2000) is P


def test_u_on_chip_that_does_not_compile_falls_back_to_streaming():
    """The on-chip budget is an estimate: if the compiled program needs more shared memory than the SM has,
    the launch is retried with U streamed; a forced u_on_chip=True surfaces the error instead."""
    import triton

    plan = P.plan_persistent(10, 128, 4, torch.bfloat16, H200)
    assert plan.u_on_chip and plan.block_k == 32
    tried = []

    def launch(pl):
        tried.append((pl.u_on_chip, pl.block_k))
        if pl.u_on_chip:
            raise triton.runtime.errors.OutOfResources(300000, 232448, "shared memory")

    P._launch_or_stream(launch, plan, P.PersistentConfig())
    assert tried == [(True, 32), (False, 32)]
    with pytest.raises(triton.runtime.errors.OutOfResources):
        P._launch_or_stream(launch, plan, P.PersistentConfig(u_on_chip=True))


# ------------------------------------------------------------- compiled for a GPU, without one (ptxas)

_COMPILE_SM90 = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import kernel_report as kr  # compiled kernels: it removes TRITON_INTERPRET before importing them
import torch
P, arch = kr.P, kr.ARCHS[90]
out = []
for B, H in ((10, 256), (8, 128)):  # U streamed, U's forward slice on chip
    plan = P.plan_persistent(B, H, 4, torch.bfloat16, arch.limits)
    cfg = P.PersistentConfig(check="off", block_b=plan.block_b, block_h=plan.block_h, u_on_chip=plan.u_on_chip)
    for name, (fn, args, kwargs, grid) in kr.persistent_launches(B, H, 1, torch.bfloat16, arch, cfg).items():
        r = kr.compile_launch(fn, args, kwargs, 90, keep_ptx=True)
        out.append({"case": f"{name} B={B} H={H}", "on_chip": plan.u_on_chip, **r})
json.dump(out, sys.stdout)
'''


def test_kernels_compile_for_sm90_with_grid_barrier_semantics():
    """Without a GPU: compile both persistent kernels for sm_90 (ptxas ships in the triton wheel) through
    scripts/kernel_report.py's path (the JIT's own binder). The barrier must lower to a release reduction and
    acquire loads at GPU scope followed by a CTA barrier (which orders every thread's later loads of h/dz after
    the acquire: the PTX memory model's guarantee, whether or not a load bypasses L1), the timeout flag to an
    atomic; no spills; a program must fit an H200's shared memory."""
    import json
    import os
    import pathlib
    import re
    import subprocess
    import sys

    import triton

    from conftest import ROOT

    if not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton wheel has no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SM90, str(ROOT / "scripts")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [(r["case"].split()[0], r["on_chip"]) for r in results] == [
        ("persistent-fwd", False), ("persistent-bwd", False), ("persistent-fwd", True), ("persistent-bwd", True)]
    for r in results:
        ptx = r["ptx"]
        assert "red.global.gpu.release.add" in ptx or "atom.global.gpu.release.add" in ptx, r["case"]
        assert "ld.global.gpu.acquire" in ptx or "atom.global.gpu.acquire" in ptx, r["case"]
        assert "bar.sync" in ptx, r["case"]
        assert re.search(r"@%p\d+ (atom|red)\.global\.gpu(\.relaxed)?\.max", ptx), r["case"]  # timeout flag, predicated
        assert r["spill_bytes"] == 0, r["case"]
        assert r["shared_bytes"] <= H200.smem_per_block, r["case"]


def test_bench_times_the_persistent_kernel_beside_the_step_kernels(tmp_path):
    """scripts/bench_kernels.py --kernel step --kernel persistent: both families checked against float64 and
    timed as their own rows; a tile-size row stays on the step kernels (whose tiles they are)."""
    import json

    from test_bench_kernels import load_bench

    bench = load_bench()
    path = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--configs", "", "--config", "3,2,4,8", "--dtypes", "fp32", "--impls",
                     "triton", "--kernel", "step", "--kernel", "persistent", "--min-time", "0", "--max-reps", "3",
                     "--warmup", "0", "--no-fwd-only", "--json", str(path)])
    assert rc == 0
    report = json.loads(path.read_text())
    assert {c["impl"]: c["ok"] for c in report["checks"]} == {
        "triton": True, "triton-step": True, "triton-persistent": True}
    assert {r["impl"] for r in report["results"] if r["fwd_bwd"]["median_ms"] > 0} == {
        "triton", "triton-step", "triton-persistent"}
    assert bench.triton_options("triton-persistent") == {"kernel": "persistent"}
    assert bench.triton_options("triton-t16.16.16.1.4_16.16.16.1.4")["kernel"] == "step"


def test_layer_forces_the_persistent_kernels_through_the_backend_option(monkeypatch):
    """URLSTM(backend="triton", kernel="persistent"): every layer and direction on the persistent kernels, same
    outputs and gradients as the reference backend."""
    from urlstm_triton import URLSTM

    calls = []
    for name in ("forward_sequence", "backward_sequence"):
        fn = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    torch.manual_seed(3)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    ref = URLSTM(3, 6, backend="reference", **kw)
    per = URLSTM(3, 6, backend="triton", kernel="persistent", **kw)
    per.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 3)
    results = []
    for m in (ref, per):
        xi = x.clone().requires_grad_()
        out, (hn, cn) = m(xi)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + hn.sum() - 0.5 * cn.sum()
        results.append([out, hn, cn] + list(torch.autograd.grad(loss, [xi] + list(m.parameters()))))
    assert calls.count("forward_sequence") == 4 and calls.count("backward_sequence") == 4  # 2 layers x 2 directions
    for a, b in zip(*results):
        assert rel(b, a) < 1e-5
