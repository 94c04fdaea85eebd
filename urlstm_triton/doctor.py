"""``python -m urlstm_triton.doctor``: check the Triton kernels on this machine before trusting them.

Prints the environment (python, torch, triton, CUDA, cuDNN, GPU, SM count, shared memory per block), then
checks every kernel family (``step``: one launch per step; ``persistent``: one launch per chunk; ``chunked``:
the chunked recurrence, on both; ``graphed``: CUDA-graph replay, on both) x gate mode (``tied``,
``refine``, ``classic``) x dtype (``fp32``, ``bf16``, ``fp16``) against the float64 oracle
(``urlstm_triton.parity``): outputs, final states and every gradient, on small problems that include ragged
tiles and, on a GPU, grids with a program on every SM. On a GPU it also runs the persistent kernels'
self-check that ``kernel="auto"`` relies on (``urlstm_triton.selfcheck``; refreshing its cached verdicts)
and times a short forward+backward of an LM shape and a small-batch long-sequence shape against
``torch.nn.LSTM``.

Without a GPU it says so and runs the same checks in Triton's CPU interpreter on tiny problems; there bf16
is skipped (the interpreter's bf16 ``tl.dot`` gives wrong numbers), the persistent kernels run with one
hidden tile (programs run one after another, so only one can meet the grid barrier) and ``graphed`` is
skipped (CUDA only). Every check is reported as passed, failed or skipped, with its largest relative error.
Exit status: 0 when nothing failed, 1 when a check failed (the failures are named at the end), 2 for bad
arguments.

    python -m urlstm_triton.doctor                      # everything this machine can run
    python -m urlstm_triton.doctor --quick --json doctor.json
    python -m urlstm_triton.doctor --families persistent --modes refine --dtypes bf16
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch

from .benchmarks import time_fn

FAMILIES = ("step", "persistent", "chunked", "graphed")
MODES = ("tied", "refine", "classic")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
TIMED = {  # (T, B, I, H), bf16 forward+backward against nn.LSTM
    "lm (T=256 B=64 I=1024 H=1024)": (256, 64, 1024, 1024),
    "long, small batch (T=2000 B=10 I=2 H=256)": (2000, 10, 2, 256),
}


def _names(value: str, allowed, what: str) -> List[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--{what}: expected a comma-separated subset of {','.join(allowed)}, "
                                         f"got {value!r}")
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m urlstm_triton.doctor",
                                description="Check the Triton kernels on this machine against a float64 oracle.",
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=lambda v: _names(v, FAMILIES, "families"), default=list(FAMILIES),
                   help=f"kernel families to check (default: {','.join(FAMILIES)})")
    p.add_argument("--modes", type=lambda v: _names(v, MODES, "modes"), default=list(MODES),
                   help=f"gate modes (default: {','.join(MODES)})")
    p.add_argument("--dtypes", type=lambda v: _names(v, DTYPE_NAMES, "dtypes"), default=list(DTYPE_NAMES),
                   help=f"dtypes (default: {','.join(DTYPE_NAMES)})")
    p.add_argument("--quick", action="store_true", help="one problem per family (the first of its list)")
    p.add_argument("--no-timing", action="store_true", help="skip the timing against nn.LSTM (GPU)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON (rewritten after every check)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="directory of the self-check cache (default: $URLSTM_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/urlstm_triton)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- environment


def environment() -> Dict:
    import triton

    from .kernels.common import library_gemm_fp32_out
    from .triton_backend import kernels_interpreted

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "gpu": None, "sm_count": None, "shared_memory_per_block": None, "compute_capability": None,
           "interpreter": kernels_interpreted(), "library_gemm_fp32_out": library_gemm_fp32_out(),
           "platform": platform.platform()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, sm_count=props.multi_processor_count,
                   shared_memory_per_block=getattr(props, "shared_memory_per_block_optin", None)
                   or getattr(props, "shared_memory_per_block", None),
                   compute_capability=f"{props.major}.{props.minor}")
    return env


def print_environment(env: Dict) -> None:
    print("urlstm_triton doctor")
    print("  " + "  ".join(f"{k} {env[k] if env[k] is not None else '-'}"
                           for k in ("python", "torch", "triton", "cuda", "cudnn")))
    if env["gpu"]:
        print(f"  GPU {env['gpu']} (compute capability {env['compute_capability']}): {env['sm_count']} SMs, "
              f"{env['shared_memory_per_block']} bytes of shared memory per block")
        if not env["library_gemm_fp32_out"]:
            print("  this torch's mm has no out_dtype (torch < 2.8): the library-GEMM step is neither tuned nor "
                  "checked (the fused tiles run everywhere)")
    else:
        print("  no CUDA GPU visible to torch: the kernels are checked in Triton's CPU interpreter on tiny "
              "problems (slow; bf16 and CUDA graphs skipped); nothing is timed")
    print()


# ---------------------------------------------------------------------------------------------- checks


def family_cases(family: str, on_gpu: bool, sm_count: int) -> List[tuple]:
    """``(name, Problem, backend options)`` for one family: the first is its basic problem (``--quick``)."""
    from .kernels import TileConfig, Tiles
    from .kernels.common import library_gemm_fp32_out, pdl_supported
    from .kernels.persistent import PersistentConfig
    from .parity import Problem
    from .selfcheck import CHECK_MAX_SPINS

    # a barrier timeout raises at once (no device-side assert that would end the session's CUDA context)
    sync = dict(check="sync", max_spins=CHECK_MAX_SPINS)
    planned = PersistentConfig(**sync)
    # split reductions (fp32 partials summed by the last program of a tile), epilogues in sub-tiles, ragged
    split = {"kernel": "step", "config": TileConfig(fwd=Tiles(16, 8, 16, split_k=3, epi_h=4),
                                                    bwd=Tiles(16, 32, 16, split_k=2, epi_h=8))}
    # the library-GEMM step (torch.mm with fp32 output, then the gate-math kernel): the tuner may pick it where
    # this torch has mm's out_dtype (the CPU computes the product in fp32 without it)
    gemm = {"kernel": "step", "config": TileConfig(fwd=Tiles(16, 16, 16, gemm=True), bwd=Tiles(16, 32, 16, gemm=True))}
    if not on_gpu:  # the interpreter: tiny; H=20 is two step-kernel tiles of 16 (the second ragged)
        tiny, chunks = Problem(3, 3, 5, 20), Problem(4, 2, 3, 20)
        return {
            "step": [("ragged tiles", tiny, {"kernel": "step"}), ("split-K, sub-tiled epilogues", tiny, split),
                     ("library GEMM + gate kernel", tiny, gemm)],
            "persistent": [("one hidden tile", tiny, {"kernel": "persistent", "config": planned})],
            "chunked": [("step kernels, chunks 3+1", chunks, {"kernel": "step", "chunk_size": 3}),
                        ("persistent kernels, chunks 3+1", chunks,
                         {"kernel": "persistent", "config": planned, "chunk_size": 3})],
            "graphed": [],
        }[family]
    # programmatic dependent launch (sm_90+): each step's programs wait for the previous step, then release the next
    pdl = {"kernel": "step", "config": TileConfig(fwd=Tiles(16, 8, 16, split_k=3, epi_h=4, pdl=True),
                                                  bwd=Tiles(16, 32, 16, split_k=2, epi_h=8, pdl=True))}
    pdl_cases = pdl_supported("cuda")
    odd = Problem(6, 19, 7, 45)  # neither B nor H a multiple of any tile
    many = Problem(10, 10, 8, 200)  # the persistent planner's 16-unit tiles: 13 programs, the last one ragged
    full = 16 * sm_count - 5  # 16-unit hidden tiles: one program on every SM, the last tile ragged
    return {
        "step": [("ragged tiles", odd, {"kernel": "step"}),
                 ("more programs than SMs", Problem(6, 130, 16, 16 * sm_count + 13), {"kernel": "step"}),
                 ("split-K, sub-tiled epilogues", odd, split)]
                + ([("library GEMM + gate kernel", odd, gemm)] if library_gemm_fp32_out() else [])
                + ([("programmatic dependent launch", odd, pdl)] if pdl_cases else []),
        "persistent": [("planned tiles", many, {"kernel": "persistent", "config": planned}),
                       ("one program per SM, U streamed", Problem(8, 4, 8, full),
                        {"kernel": "persistent", "config": PersistentConfig(block_h=16, u_on_chip=False, **sync)}),
                       ("5 batch tiles, U streamed", Problem(8, 70, 8, 96),
                        {"kernel": "persistent", "config": PersistentConfig(u_on_chip=False, block_k=32, **sync)})],
        "chunked": [("step kernels, chunks 4+4+2", Problem(10, 19, 7, 45), {"kernel": "step", "chunk_size": 4}),
                    ("persistent kernels, chunks 4+4+2", many,
                     {"kernel": "persistent", "config": planned, "chunk_size": 4})],
        # a capture cannot read the timeout flag: the graph wrapper reads it after each replay
        "graphed": [("step kernels", odd, {"kernel": "step", "cuda_graph": True}),
                    ("persistent kernels", many, {"kernel": "persistent", "cuda_graph": True})]
                   + ([("step kernels, programmatic dependent launch", odd, {**pdl, "cuda_graph": True})]
                      if pdl_cases else []),
    }[family]


def skip_reason(family: str, dtype_name: str, on_gpu: bool) -> str:
    if on_gpu:
        return ""
    if family == "graphed":
        return "CUDA graphs need a CUDA device"
    if dtype_name == "bf16":
        return "the interpreter's bf16 tl.dot gives wrong numbers (bf16: GPU only)"
    return ""


def _describe(options: Dict) -> Dict:
    return {k: (repr(v) if k == "config" else v) for k, v in options.items()}


def run_check(family: str, mode: str, dtype_name: str, cases, device) -> Dict:
    """Every case of one (family, mode, dtype); failed at the first exception."""
    from .parity import DTYPES, MODE_GATES, TOLERANCE, measure, one_line

    dtype = DTYPES[dtype_name]
    result = {"family": family, "mode": mode, "dtype": dtype_name, "passed": True, "skipped": None,
              "tolerance": TOLERANCE[dtype], "max_error": 0.0, "worst": None, "error": "", "cases": []}
    start = time.perf_counter()
    for name, problem, options in cases:
        case = {"name": name, "problem": str(problem), "options": _describe(options)}
        result["cases"].append(case)
        try:
            parity = measure(MODE_GATES[mode], problem, dtype, device, **options)
        except Exception as e:  # a kernel that does not compile or launch, a barrier timeout ...
            case.update(passed=False, error=one_line(e))
            result.update(passed=False, error=f"{name} ({problem}): {case['error']}")
            break
        quantity, err = parity.worst
        case.update(passed=parity.passed, max_error=err, errors=parity.errors)
        if err >= result["max_error"]:
            result.update(max_error=err, worst=f"{quantity} ({name})")
        if not parity.passed and result["passed"]:
            result.update(passed=False, error=f"{name} ({problem}): {parity.describe()}")
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def self_check_rows(modes, dtype_names, device, on_gpu: bool, cache_dir) -> List[Dict]:
    """The persistent kernels' self-check that kernel='auto' relies on, run again (refreshing the cached verdict;
    its time includes compiling the kernels, unless Triton's cache has them) and once more to time it with its
    kernels compiled (issue 12's budget: a few hundred milliseconds)."""
    from .parity import DTYPES
    from .selfcheck import MODE_NAMES, Inconclusive, run_checks, verdict

    if not on_gpu:
        return [{"mode": ",".join(modes), "dtype": ",".join(dtype_names), "passed": None,
                 "skipped": "kernel='auto' takes the persistent kernels only on a CUDA device"}]
    mode_ids = {name: m for m, name in MODE_NAMES.items()}
    rows = []
    for mode in modes:
        for d in dtype_names:
            v = verdict(device, mode_ids[mode], DTYPES[d], cache_dir=cache_dir, refresh=True)
            row = {"mode": mode, "dtype": d, "passed": v.passed, "reason": v.reason, "seconds": round(v.seconds, 3),
                   "cache": v.path}
            start = time.perf_counter()
            try:
                run_checks(device, mode_ids[mode], DTYPES[d])
                row["seconds_compiled"] = round(time.perf_counter() - start, 3)
            except Inconclusive:
                row["seconds_compiled"] = None
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- timing


def _fwd_bwd_ms(model: torch.nn.Module, dims, dtype, device: torch.device, reps: int, warmup: int) -> float:
    T, B, I, H = dims
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(T, B, H, device=device, dtype=dtype)

    def fwd_bwd():
        out, _ = model(x)
        out.backward(grad)

    return time_fn(fwd_bwd, device, warmup, 0.0, reps)["median_ms"]


def time_against_lstm(device, shapes=None, dtype=torch.bfloat16, reps: int = 5, warmup: int = 2) -> List[Dict]:
    """Median forward+backward time of URLSTM (backend triton, kernel auto) and nn.LSTM on ``shapes`` (default
    TIMED), after ``warmup`` runs (which compile the kernels)."""
    from . import URLSTM
    from .kernels import MODE_REFINE
    from .parity import one_line
    from .triton_backend import choose_kernel

    rows = []
    for label, (T, B, I, H) in (shapes or TIMED).items():
        row = {"shape": label, "dims": [T, B, I, H], "dtype": str(dtype).replace("torch.", "")}
        family = choose_kernel("auto", B, H, device, dtype=dtype, steps=T, mode=MODE_REFINE)
        row["auto_kernel"] = "persistent" if family.__name__.endswith("persistent") else "step"
        for name, make in (("urlstm_ms", lambda: URLSTM(I, H, gate="UR", backend="triton")),
                           ("lstm_ms", lambda: torch.nn.LSTM(I, H))):
            try:
                row[name] = round(_fwd_bwd_ms(make(), (T, B, I, H), dtype, device, reps, warmup), 3)
            except Exception as e:  # e.g. out of memory on a small GPU: reported in the row
                row[name] = None
                row["error"] = one_line(e)
        if row.get("urlstm_ms") and row.get("lstm_ms"):
            row["ratio"] = round(row["urlstm_ms"] / row["lstm_ms"], 3)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------- report


def _table(rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_table(checks: List[Dict]) -> str:
    """One row per check, grouped by family."""
    rows = [["family", "mode", "dtype", "result", "max rel error", "tolerance", "s", "worst / why"]]
    for c in sorted(checks, key=lambda c: FAMILIES.index(c["family"])):
        if c["skipped"]:
            rows.append([c["family"], c["mode"], c["dtype"], "skipped", "-", "-", "-", c["skipped"]])
            continue
        result = "passed" if c["passed"] else "FAILED"
        why = (c["worst"] or "") if c["passed"] else c["error"]
        rows.append([c["family"], c["mode"], c["dtype"], result, f"{c['max_error']:.1e}", f"{c['tolerance']:g}",
                     f"{c['seconds']:.1f}", why])
    return _table(rows)


def self_check_table(rows: List[Dict]) -> str:
    out = [["mode", "dtype", "kernel='auto' self-check", "s (first)", "s (compiled)", "why"]]
    for r in rows:
        if r.get("skipped"):
            out.append([r["mode"], r["dtype"], "skipped", "-", "-", r["skipped"]])
        else:
            verdict = "passed: persistent kernels on" if r["passed"] else "FAILED: step kernels run"
            again = "-" if r["seconds_compiled"] is None else f"{r['seconds_compiled']:.2f}"
            out.append([r["mode"], r["dtype"], verdict, f"{r['seconds']:.2f}", again, r["reason"]])
    return _table(out)


def timing_table(rows: List[Dict]) -> str:
    out = [["shape (fwd+bwd)", "dtype", "kernel='auto' takes", "URLSTM ms", "nn.LSTM ms", "URLSTM / nn.LSTM"]]
    def fmt(v):
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        out.append([r["shape"], r["dtype"], r["auto_kernel"], fmt(r.get("urlstm_ms")), fmt(r.get("lstm_ms")),
                    fmt(r.get("ratio")) + (f"  ({r['error']})" if r.get("error") else "")])
    return _table(out)


def failures(report: Dict) -> List[str]:
    names = [f"{c['family']}/{c['mode']}/{c['dtype']}: {c['error']}" for c in report["checks"] if c["passed"] is False]
    names += [f"self-check {r['mode']}/{r['dtype']}: {r['reason']}" for r in report["self_check"]
              if r.get("passed") is False]
    return names


def _write(path: Optional[str], report: Dict) -> None:
    if path:
        from .files import atomic_write

        atomic_write(path, json.dumps(report, indent=1, default=str), make_parents=True)


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse: usage error (2) or --help (0)
        return int(e.code or 0)
    on_gpu = torch.cuda.is_available()
    if not on_gpu and "urlstm_triton.kernels" not in sys.modules:
        # the kernels are compiled for the interpreter only if this is set when they are first imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .triton_backend import kernels_interpreted

    if not on_gpu and not kernels_interpreted():
        print("no CUDA GPU, and the kernels were imported without Triton's interpreter: run the doctor in a fresh "
              "process (python -m urlstm_triton.doctor), or set TRITON_INTERPRET=1 before importing urlstm_triton")
        return 2
    on_gpu = on_gpu and not kernels_interpreted()
    device = torch.device("cuda" if on_gpu else "cpu")
    env = environment()
    print_environment(env)
    report = {"environment": env, "device": "gpu" if on_gpu else "interpreter", "checks": [], "self_check": [],
              "timings": [], "failed": [], "ok": True}
    families = [f for f in FAMILIES if f in args.families]
    cases = {f: family_cases(f, on_gpu, env["sm_count"] or 0)[:1 if args.quick else None] for f in families}
    # every family for one (mode, dtype) before the next: a run cut short (a time limit) has them all for some
    for mode in args.modes:
        for d in args.dtypes:
            for family in families:
                reason = skip_reason(family, d, on_gpu)
                if reason:
                    check = {"family": family, "mode": mode, "dtype": d, "passed": None, "skipped": reason}
                else:
                    check = run_check(family, mode, d, cases[family], device)
                    print(f"{family:10s} {mode:7s} {d}: "
                          + ("passed" if check["passed"] else "FAILED: " + check["error"]), flush=True)
                report["checks"].append(check)
                _write(args.json, report)
    report["self_check"] = self_check_rows(args.modes, args.dtypes, device, on_gpu, args.cache_dir)
    _write(args.json, report)
    if on_gpu and not args.no_timing:
        report["timings"] = time_against_lstm(device)
    report["failed"] = failures(report)
    report["ok"] = not report["failed"]
    _write(args.json, report)
    print()
    print(check_table(report["checks"]))
    print()
    print(self_check_table(report["self_check"]))
    if report["timings"]:
        print()
        print(timing_table(report["timings"]))
    print()
    if report["failed"]:
        print(f"FAILED ({len(report['failed'])}):")
        for line in report["failed"]:
            print("  " + line)
        return 1
    counts = {k: sum(1 for c in report["checks"] if c["passed"] is v) for k, v in (("passed", True), ("skipped", None))}
    print(f"all checks passed ({counts['passed']} passed, {counts['skipped']} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
