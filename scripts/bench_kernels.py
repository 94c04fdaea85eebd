"""Benchmark the fused Triton UR-LSTM against the reference loop and cuDNN nn.LSTM, side by side in one run.

For each config (``urlstm_triton.benchmarks.CONFIGS``, or ``--config T,B,I,H``) and dtype: median time of
forward+backward and of forward only (no grad), and peak memory of one forward+backward (CUDA), for

- ``triton``            URLSTM(gate="UR", backend="triton") (save everything)
- ``triton-chunkK``     the same with ``chunk_size=K`` (``--chunk K``)
- ``...-graph``         each of those with ``cuda_graph=True`` (``--cuda-graph``; CUDA only)
- ``triton-tF_B``       the same with explicit step-kernel tiles (``--tile F/B``, each direction
                        ``BB.BH.BK.SPLIT.WARPS[.EPI[.STAGES]][.pdl]`` or ``gemm.BB.BH.WARPS``: tuning the
                        step kernels)
- ``--tile-sweep N``      per config and dtype, the planner's N best step tilings of distinct block shapes
                        (``kernels/step_plan.py``: ``ranked_tiles``), each with several reduction slices and pipeline
                        depths, as ``triton-t...`` rows: does the GPU rank them as the cost model does?
- ``triton-step``, ``triton-persistent``  the kernel family forced (``--kernel step|persistent``); the plain
                        ``triton`` rows take ``kernel="auto"`` (persistent or step by the rule of
                        ``kernels/persistent.py``: ``suits``)
- ``triton-model``      the step tiles of the cost model, untimed (``--model-tiles``); the plain rows take the
                        default ``tiles="tuned"`` (``urlstm_triton/tuning.py``)
- ``triton-tf32``       ``dot_precision="tf32"`` (``--tf32``): fp32 products on the tensor cores
- ``reference``         URLSTM(gate="UR", backend="reference"): the PyTorch loop
- ``nn.LSTM``           torch.nn.LSTM (cuDNN on a GPU): the speed a user gives up by leaving nn.LSTM

Before timing, it checks the Triton results (outputs, final states, every gradient) against a float64
oracle on the same device (sequence truncated to ``--check-steps``); a failed check makes the exit code 1.
Prints a table with ratios and writes everything as JSON (``--json PATH``).

    python scripts/bench_kernels.py --json bench.json                       # GPU, five configs, bf16 + fp32
    python scripts/bench_kernels.py --config 8192,16,1024,1024 --chunk 256  # a long sequence, chunked
    TRITON_INTERPRET=1 python scripts/bench_kernels.py --device cpu --config 4,2,3,8 --dtypes fp32
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from urlstm_triton import URLSTM
from urlstm_triton.benchmarks import CONFIGS, LONG_CONFIGS, named_configs, sync, time_fn
from urlstm_triton.files import atomic_write
from urlstm_triton.parity import one_line
from urlstm_triton.reference import naive_recurrence
from urlstm_triton.tuning import parse_tile_spec, tile_spec

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CHECK_TOL = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 1e-2}  # issue 3's targets (fp16 between the two)
TF32_TOL = 3e-3  # fp32 through tf32 products (10 mantissa bits): the bound of tests/test_kernels.py


def tolerance(dtype_name: str, impl: str) -> float:
    return TF32_TOL if dtype_name == "fp32" and "tf32" in impl.split("-") else CHECK_TOL[dtype_name]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated names from {list(CONFIGS) + list(LONG_CONFIGS)} ('' for none)")
    p.add_argument("--config", action="append", default=[], metavar="T,B,I,H", help="an extra config (repeatable)")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma-separated from bf16, fp16, fp32")
    p.add_argument("--impls", default="triton,reference,nn.LSTM",
                   help="comma-separated from triton, reference, nn.LSTM "
                        "(chunked/graph variants via --chunk/--cuda-graph)")
    p.add_argument("--chunk", type=int, action="append", default=[], metavar="K",
                   help="also time triton with chunk_size=K (repeatable)")
    p.add_argument("--cuda-graph", action="store_true", help="also time triton with cuda_graph=True")
    p.add_argument("--tile", action="append", default=[], metavar="FWD/BWD",
                   help="also time triton with these step-kernel tiles, each direction "
                        "BB.BH.BK.SPLIT.WARPS[.EPI[.STAGES]][.pdl] (block_b, block_h, block_k, split_k, num_warps, "
                        "epi_h, num_stages; .pdl: programmatic dependent launch, sm_90+), or gemm.BB.BH.WARPS (the "
                        "library-GEMM step); repeatable")
    p.add_argument("--tile-sweep", type=int, default=0, metavar="N",
                   help="also time, per config and dtype, the planner's N best step tilings of distinct block shapes "
                        "(replayed from CUDA graphs with --cuda-graph)")
    p.add_argument("--tf32", action="store_true",
                   help="also time triton with dot_precision='tf32' (fp32 products on the tensor cores, as cuDNN does "
                        "by default)")
    p.add_argument("--model-tiles", action="store_true",
                   help="also time triton with the cost model's step tiles (tiles='model'; plain rows are tuned)")
    p.add_argument("--kernel", action="append", default=[], choices=("step", "persistent"),
                   help="also time triton with this kernel family forced (repeatable); plain triton rows are 'auto'")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of timed repetitions per measurement")
    p.add_argument("--max-reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-fwd-only", action="store_true", help="skip the forward-only timings")
    p.add_argument("--check-steps", type=int, default=32, help="sequence length of the correctness check")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--check-only", action="store_true",
                   help="run the correctness checks (compiling every kernel the timed rows use) and time nothing")
    p.add_argument("--json", help="write results to this JSON file")
    p.add_argument("--summarize", nargs="+", metavar="JSON",
                   help="print the checks and the table of earlier runs' JSON files, and exit")
    return p.parse_args(argv)


def peak_mib(fn: Callable, device) -> Optional[float]:
    """Peak CUDA memory of one call above what was allocated before it (activations, workspace and
    gradients; parameters and inputs excluded). None on a CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def parse_tiles(spec: str):
    """A ``TileConfig`` from ``FWD/BWD`` (or ``FWD_BWD``), each ``BB.BH.BK.SPLIT.WARPS[.EPI[.STAGES]][.pdl]`` or
    ``gemm.BB.BH.WARPS`` (``tuning.parse_tile_spec``)."""
    from urlstm_triton.kernels import TileConfig

    parts = spec.replace("_", "/").split("/")
    try:
        if len(parts) != 2:
            raise ValueError("two directions")
        fwd, bwd = (parse_tile_spec(p) for p in parts)
        return TileConfig(fwd=fwd, bwd=bwd)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"--tile must be FWD/BWD, each BB.BH.BK.SPLIT.WARPS[.EPI[.STAGES]][.pdl] or gemm.BB.BH.WARPS "
                         f"(powers of two, blocks >= 16), got {spec!r}: {e}") from None


SWEEP_K_STAGES = ((32, 3), (64, 3), (64, 4), (128, 3))  # what the cost model cannot rank: load pipelining depth


def sweep_impls(dims, dtype_name: str, n: int, graph: bool = False) -> List[str]:
    """``triton-tFWD_BWD`` rows around the planner's ``n`` best forward and backward tilings of distinct
    ``(block_b, block_h)`` (the i-th forward with the i-th backward; fwd-only timings separate the two), each
    with the reduction slices and pipeline depths of ``SWEEP_K_STAGES``; ``graph``: replayed from CUDA graphs
    only (no host launch cost in the ranking)."""
    if n < 1:
        return []
    from dataclasses import replace

    from urlstm_triton.kernels import MODE_REFINE, num_gates
    from urlstm_triton.kernels.step_plan import ranked_tiles

    _, B, _, H = dims
    elem = DTYPES[dtype_name].itemsize
    picks = []
    for backward in (False, True):
        distinct = {}
        for t in ranked_tiles(B, H, num_gates(MODE_REFINE), elem, elem, backward):
            distinct.setdefault((t.block_b, t.block_h), t)
            if len(distinct) == n:
                break
        picks.append(list(distinct.values()))
    rows = []
    for f, b in zip(*picks):
        for k, stages in SWEEP_K_STAGES:
            fk, bk = (replace(t, block_k=k, num_stages=stages) for t in (f, b))
            rows.append(f"triton-t{tile_spec(fk)}_{tile_spec(bk)}" + ("-graph" if graph else ""))
    return list(dict.fromkeys(rows))


def triton_options(impl: str) -> Dict:
    """Backend options from a Triton row's name: ``triton[-step|-persistent][-chunkK][-graph][-tFWD_BWD]``."""
    opts = {}
    for part in impl.split("-")[1:]:
        if part.startswith("chunk"):
            opts["chunk_size"] = int(part[len("chunk"):])
        elif part == "graph":
            opts["cuda_graph"] = True
        elif part in ("step", "persistent"):
            opts["kernel"] = part
        elif part == "model":
            opts["tiles"] = "model"
        elif part == "tf32":
            opts["dot_precision"] = "tf32"
        elif part.startswith("t"):
            opts["config"] = parse_tiles(part[1:])
        else:
            raise ValueError(f"bad triton row name {impl!r}")
    if "config" in opts:  # tile sizes are the step kernels': do not let kernel="auto" pick the persistent ones
        opts.setdefault("kernel", "step")
    return opts


def make_model(impl: str, I: int, H: int, dtype, device) -> nn.Module:
    if impl == "nn.LSTM":
        return nn.LSTM(I, H).to(device=device, dtype=dtype)
    if impl == "reference":
        return URLSTM(I, H, gate="UR", backend="reference").to(device=device, dtype=dtype)
    return URLSTM(I, H, gate="UR", backend="triton", **triton_options(impl)).to(device=device, dtype=dtype)


def triton_runs_here(device, dtype) -> str:
    """'' if the Triton rows can run on ``device`` in ``dtype``, else why not."""
    from urlstm_triton.triton_backend import unavailable_reason

    reason = unavailable_reason(device)
    if reason:
        return reason
    if device.type == "cpu" and dtype == torch.bfloat16:
        return "the interpreter's bf16 tl.dot is wrong (docs/design.md): bf16 Triton rows run on a GPU only"
    return ""


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(dtype_name: str, dims, device, steps: int, impl: str) -> Dict:
    """Relative errors of the Triton layer (outputs, final states, every gradient) vs float64 autograd on
    the same bf16/fp32-rounded weights and inputs."""
    T, B, I, H = dims
    T = min(T, steps)
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = make_model(impl, I, H, dtype, device)
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    h0 = (torch.randn(1, B, H, device=device) * 0.5).to(dtype)
    c0 = (torch.randn(1, B, H, device=device) * 0.5).to(dtype)
    leaves = [x, h0, c0] + [p.detach() for p in model.layer_weights()[0]]
    ours_in = [t.clone().requires_grad_() for t in leaves[:3]]
    out, (hn, cn) = model(ours_in[0], (ours_in[1], ours_in[2]))
    probes = [torch.randn_like(t, dtype=torch.float64) for t in (out, hn, cn)]
    loss = sum((t.double() * p).sum() for t, p in zip((out, hn, cn), probes))
    ours = [out, hn, cn] + list(torch.autograd.grad(loss, ours_in + list(model.parameters())))
    ref_in = [t.double().requires_grad_() for t in leaves]
    x64, h64, c64, w_ih, w_hh, b = ref_in
    o, h, c = naive_recurrence(x64, w_ih, w_hh, b, h64[0], c64[0], model.spec)
    loss = (o * probes[0]).sum() + (h * probes[1][0]).sum() + (c * probes[2][0]).sum()
    ref = [o, h[None], c[None]] + list(torch.autograd.grad(loss, [x64, h64, c64, w_ih, w_hh, b]))
    names = ["out", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias"]
    errs = {n: rel_err(a, r) for n, a, r in zip(names, ours, ref)}
    worst = max(errs.values())
    return {"impl": impl, "dtype": dtype_name, "dims": [T, B, I, H], "errors": errs, "max_error": worst,
            "tolerance": tolerance(dtype_name, impl), "ok": bool(worst < tolerance(dtype_name, impl))}


def bench_one(impl: str, dims, dtype, device, args) -> Dict:
    T, B, I, H = dims
    torch.manual_seed(0)
    model = make_model(impl, I, H, dtype, device)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(T, B, H, device=device, dtype=dtype)

    def fwd_bwd():
        out, _ = model(x)
        out.backward(grad)

    def fwd():
        with torch.no_grad():
            model(x)

    # The eager reference compiles nothing and is by far the slowest row: one warm-up run is enough.
    warmup = min(args.warmup, 1) if impl == "reference" else args.warmup
    res = {"fwd_bwd": time_fn(fwd_bwd, device, warmup, args.min_time, args.max_reps),
           "peak_mib_fwd_bwd": peak_mib(fwd_bwd, device)}
    if not args.no_fwd_only:
        res["fwd"] = time_fn(fwd, device, warmup, args.min_time, args.max_reps)
        res["peak_mib_fwd"] = peak_mib(fwd, device)
    model = x = grad = None  # free the memory before empty_cache (fwd_bwd and fwd share these cells)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def render_table(results: List[Dict]) -> str:
    """One row per config, dtype and implementation; ratios against nn.LSTM and the reference loop."""
    rows = [("config", "dtype", "impl", "fwd+bwd ms", "fwd ms", "peak MiB", "x nn.LSTM", "ref/this", "note")]
    by_key = {(r["config"], r["dtype"], r["impl"]): r for r in results if "fwd_bwd" in r}
    for r in results:
        key = (r["config"], r["dtype"])
        if "fwd_bwd" not in r:
            rows.append((r["config"], r["dtype"], r["impl"], "-", "-", "-", "-", "-",
                         "skipped: " + r.get("skipped", "?")))
            continue
        t = r["fwd_bwd"]["median_ms"]
        lstm = by_key.get(key + ("nn.LSTM",))
        ref = by_key.get(key + ("reference",))
        rows.append((r["config"], r["dtype"], r["impl"], fmt(t), fmt(r.get("fwd", {}).get("median_ms")),
                     fmt(r.get("peak_mib_fwd_bwd"), "{:.0f}"),
                     fmt(t / lstm["fwd_bwd"]["median_ms"] if lstm else None, "{:.3g}"),
                     fmt(ref["fwd_bwd"]["median_ms"] / t if ref else None, "{:.3g}"), ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: str, report: Dict) -> None:
    atomic_write(path, json.dumps(report, indent=1), make_parents=True)


def environment(device) -> Dict:
    import triton

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "device": str(device), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
           "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def summarize(paths: List[str]) -> int:
    """Print the checks and the table of each JSON report (a missing file is reported, not an error)."""
    failed = False
    for path in paths:
        if not os.path.exists(path):
            print(f"\n{path}: missing")
            continue
        with open(path) as f:
            rep = json.load(f)
        checks = rep.get("checks", [])
        bad = [c for c in checks if not c["ok"]]
        failed |= bool(bad)
        print(f"\n{path}: {len(checks)} checks, {len(bad)} failed; {len(rep.get('results', []))} rows")
        for c in checks:
            print(f"  check {c['config']} {c['dtype']} {c['impl']}: max rel error {c['max_error']:.1e}"
                  + ("" if c["ok"] else "  FAILED " + (c.get("error") or str({k: f"{v:.1e}"
                                                                             for k, v in c["errors"].items()}))))
        print(render_table(rep.get("results", [])))
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu)")
    configs = named_configs(args.configs, args.config)
    dtype_names = [d for d in args.dtypes.split(",") if d]
    for d in dtype_names:
        if d not in DTYPES:
            raise SystemExit(f"--dtypes: unknown dtype {d!r}; known: {list(DTYPES)}")
    impls = [i for i in args.impls.split(",") if i]
    for i in impls:
        if i not in ("triton", "reference", "nn.LSTM"):
            raise SystemExit(f"--impls: unknown implementation {i!r}")
    if args.check_only and args.skip_check:
        raise SystemExit("--check-only and --skip-check contradict each other")
    if args.tile_sweep < 0:
        raise SystemExit("--tile-sweep must be >= 0")
    if any(k < 1 for k in args.chunk):
        raise SystemExit("--chunk must be a positive integer")
    base = ["triton"] if "triton" in impls else []
    base += ["triton-model"] if args.model_tiles else []
    base += ["triton-tf32"] if args.tf32 else []
    base += [f"triton-chunk{k}" for k in args.chunk]
    base += [f"triton-{k}" for k in dict.fromkeys(args.kernel)]
    triton_impls = list(base)
    for tile in args.tile:
        parse_tiles(tile)  # exits with the reason on a bad spec
        triton_impls.append("triton-t" + tile.replace("/", "_"))
    if args.cuda_graph:
        if device.type != "cuda":
            raise SystemExit("--cuda-graph needs --device cuda")
        triton_impls += [b + "-graph" for b in base]
    all_impls = triton_impls + [i for i in impls if i != "triton"]

    report = {"environment": environment(device), "checks": [], "results": []}
    print("environment:", json.dumps(report["environment"]))
    failed = False
    if not args.skip_check:
        for d in dtype_names:
            reason = triton_runs_here(device, DTYPES[d])
            if reason:
                print(f"check {d}: skipped ({reason})")
                continue
            for name, dims in configs:
                for impl in triton_impls + sweep_impls(dims, d, args.tile_sweep, args.cuda_graph):
                    try:
                        c = check(d, dims, device, args.check_steps, impl)
                    except Exception as e:  # a kernel that cannot run here is a failed check, not the end of the run
                        c = {"impl": impl, "dtype": d, "dims": list(dims), "errors": {}, "max_error": float("nan"),
                             "tolerance": tolerance(d, impl), "ok": False, "error": one_line(e)}
                    c["config"] = name
                    report["checks"].append(c)
                    if args.json:
                        write_json(args.json, report)
                    failed |= not c["ok"]
                    print(f"check {name} {d} {impl} T={c['dims'][0]}: max rel error {c['max_error']:.2e} "
                          f"(tolerance {c['tolerance']:g}) {'ok' if c['ok'] else 'FAILED'} {c.get('error', '')}")

    if args.check_only:
        print(f"\n{len(report['checks'])} checks, {sum(not c['ok'] for c in report['checks'])} failed")
        return 1 if failed else 0
    for name, dims in configs:
        for d in dtype_names:
            dtype = DTYPES[d]
            for impl in all_impls + sweep_impls(dims, d, args.tile_sweep, args.cuda_graph):
                entry = {"config": name, "dims": list(dims), "dtype": d, "impl": impl}
                reason = triton_runs_here(device, dtype) if impl.startswith("triton") else ""
                if reason:
                    entry["skipped"] = reason
                else:
                    try:
                        entry.update(bench_one(impl, dims, dtype, device, args))
                    except torch.cuda.OutOfMemoryError as e:  # e.g. save-everything at T=65536
                        entry["skipped"] = f"out of memory: {str(e).splitlines()[0]}"
                        torch.cuda.empty_cache()
                    except Exception as e:  # recorded in its row; the other rows still run
                        entry["skipped"] = f"error: {one_line(e)}"
                        failed = True
                report["results"].append(entry)
                if args.json:  # after every row, so that a run cut short keeps what it measured
                    write_json(args.json, report)
                if "fwd_bwd" in entry:
                    print(f"{name} {d} {impl}: fwd+bwd {entry['fwd_bwd']['median_ms']:.2f} ms"
                          + (f", fwd {entry['fwd']['median_ms']:.2f} ms" if "fwd" in entry else "")
                          + (f", peak {entry['peak_mib_fwd_bwd']:.0f} MiB" if entry["peak_mib_fwd_bwd"] else ""),
                          flush=True)
    table = render_table(report["results"])
    report["table"] = table
    if args.json:
        write_json(args.json, report)
    print()
    print(table)
    if failed:
        print("\nCORRECTNESS CHECK FAILED (see the check lines above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
