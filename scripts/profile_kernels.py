"""Where one URLSTM forward+backward spends its GPU time, kernel by kernel, beside the cost model's estimate.

For each config (``urlstm_triton.benchmarks.CONFIGS`` or ``--config T,B,I,H``): a few forward+backward passes
of ``URLSTM(gate="UR", backend="triton")`` under ``torch.profiler`` (CUPTI kernel records), and one row per
GPU kernel: launches and milliseconds per pass, microseconds per launch. The step kernels' rows carry the
per-launch estimate of ``kernels/step_plan.py`` (``forward_estimate`` / ``backward_estimate`` for the tiles the
dispatcher runs with: tuned or the model's), so that the model can be corrected where the hardware disagrees.
The wall time of a pass (CUDA events) minus the summed kernel time is what launch gaps cost (``--cuda-graph``
shrinks them).

    python scripts/profile_kernels.py --configs lm-seed,big-batch --json profile.json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

import torch

from urlstm_triton import URLSTM
from urlstm_triton.benchmarks import CONFIGS, LONG_CONFIGS, named_configs, time_fn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def kernel_times(fn, reps: int) -> List[Dict]:
    """GPU kernels run by ``reps`` calls of ``fn``: launches and time per call, time per launch."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:  # torch < 2.4
            us = e.self_cuda_time_total
        if us > 0 and e.count:
            rows.append({"kernel": e.key, "launches": e.count / reps, "ms": us / reps / 1e3,
                         "us_per_launch": us / e.count})
    return sorted(rows, key=lambda r: -r["ms"])


def step_tiles(dims, dtype):
    """The step-kernel tiles the dispatcher ran with: the tuned ones (already measured by the profiled calls,
    so read from the tuner's cache), else the model's pick."""
    from urlstm_triton import tuning
    from urlstm_triton.kernels import MODE_REFINE, num_gates, pick_config

    _, B, _, H = dims
    model = pick_config(B, H, True, "ieee", torch.cuda.get_device_properties(0).multi_processor_count,
                        dtype.itemsize, num_gates(MODE_REFINE))
    return tuning.tuned_config(B, H, MODE_REFINE, dtype, dtype, "cuda", "ieee", fallback=model)


def step_estimates_us(dims, dtype, cfg) -> Dict[str, float]:
    """The cost model's microseconds per launch of the fused step kernels with tiles ``cfg`` (a direction that
    runs the library-GEMM step, ``Tiles.gemm``, has no estimate)."""
    from urlstm_triton.kernels import MODE_REFINE, num_gates
    from urlstm_triton.kernels.step_plan import backward_estimate, forward_estimate

    _, B, _, H = dims
    elem, gates = dtype.itemsize, num_gates(MODE_REFINE)
    out = {}
    if not cfg.fwd.gemm:
        out["_fwd_step_kernel"] = 1e6 * forward_estimate(B, H, gates, cfg.fwd, elem, elem).seconds
    if not cfg.bwd.gemm:
        out["_bwd_step_kernel"] = 1e6 * backward_estimate(B, H, gates, cfg.bwd, elem, elem).seconds
    return out


def profile_config(name: str, dims, dtype, reps: int, cuda_graph: bool) -> Dict:
    T, B, I, H = dims
    torch.manual_seed(0)
    model = URLSTM(I, H, gate="UR", backend="triton", cuda_graph=cuda_graph).to("cuda", dtype)
    x = torch.randn(T, B, I, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(T, B, H, device="cuda", dtype=dtype)

    def fwd_bwd():
        out, _ = model(x)
        out.backward(grad)

    wall = time_fn(fwd_bwd, "cuda", warmup=2, min_time=0.2, max_reps=10)["median_ms"]
    rows = kernel_times(fwd_bwd, reps)
    cfg = step_tiles(dims, dtype)
    est = step_estimates_us(dims, dtype, cfg)
    for r in rows:
        for kernel, us in est.items():
            if kernel in r["kernel"]:
                r["est_us_per_launch"] = us
    total = sum(r["ms"] for r in rows)
    return {"config": name, "dims": list(dims), "dtype": str(dtype).replace("torch.", ""), "cuda_graph": cuda_graph,
            "step_tiles": {"fwd": str(cfg.fwd), "bwd": str(cfg.bwd)},
            "wall_ms": wall, "kernel_ms": total, "gaps_ms": wall - total, "kernels": rows}


def render(p: Dict, top: int = 8) -> str:
    lines = [f"{p['config']} {p['dims']} {p['dtype']}{' graph' if p['cuda_graph'] else ''}: wall {p['wall_ms']:.2f} ms,"
             f" kernels {p['kernel_ms']:.2f} ms, gaps {p['gaps_ms']:.2f} ms; step tiles {p['step_tiles']}",
             f"  {'launches':>8}  {'ms':>7}  {'us/launch':>9}  {'est us':>7}  kernel"]
    for r in p["kernels"][:top]:
        est = f"{r['est_us_per_launch']:.1f}" if "est_us_per_launch" in r else "-"
        lines.append(f"  {r['launches']:8.0f}  {r['ms']:7.3f}  {r['us_per_launch']:9.1f}  {est:>7}  {r['kernel'][:70]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated from {list(CONFIGS) + list(LONG_CONFIGS)}")
    p.add_argument("--config", action="append", default=[], metavar="T,B,I,H", help="an extra config (repeatable)")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--reps", type=int, default=2, help="profiled passes per config")
    p.add_argument("--cuda-graph", action="store_true", help="also profile with cuda_graph=True")
    p.add_argument("--json", help="write the rows to this JSON file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_kernels.py needs a CUDA GPU (the profiler reads CUPTI's kernel records)")
    configs = named_configs(args.configs, args.config)
    out = []
    for name, dims in configs:
        for graph in (False, True) if args.cuda_graph else (False,):
            out.append(profile_config(name, dims, DTYPES[args.dtype], args.reps, graph))
            print(render(out[-1]), flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
