"""Compile every kernel family for a GPU architecture, without a GPU, and report what decides its speed.

For the benchmark configs (``urlstm_triton.benchmarks.CONFIGS``) and each dtype, this runs the launch helpers
of the step kernels (``kernels/recurrence_fwd.py``, ``recurrence_bwd.py``) and of the persistent kernels
(``kernels/persistent.py``) on tensors of the ``meta`` device with the tiles the dispatcher chooses without a
GPU (``pick_config``, ``plan_persistent``, for the target's multiprocessors and shared memory) and every other
candidate of the tile tuner (``step_plan.tuning_candidates``: on a GPU it may run any), records the kernel
launches instead of running them, binds their arguments with Triton's own JIT binder and compiles them for
the target (``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, the path Triton takes on a
GPU). ptxas, which ships in the triton wheel, reports registers, spills, stack; the PTX shows the MMA
instructions. One row per (kernel, config, dtype):

    kernel  family and direction: step-fwd, step-bwd, persistent-fwd, persistent-bwd; cand-fwd, cand-bwd (the
            tuner's other candidates); pdl-fwd, pdl-bwd (the step kernels with programmatic dependent launch,
            ``Tiles.pdl``, which the tuner tries for its winner on sm_90+: the same tiles as step-*, and the
            JSON's ``griddepcontrol`` says the PTX waits for the previous step and releases the next,
            ``waits_first`` that it waits before its first global load, store or atomic)
    registers, spill_bytes (stores + loads), stack, shared_bytes   from ptxas and the compiled kernel
    programs, sms   programs per launch and the target's multiprocessors
    mma             the MMA instruction shape(s) and how many the kernel holds
    tiles           the tiling the dispatcher chose
    est_ms_fwd_bwd  a roofline ESTIMATE of the whole forward+backward of the config with this family
                    (kernels/cost_model.py; assumptions there and in BENCHMARKS.md), beside cuDNN's measured time

These are compile data and model estimates, never measurements. Internal Triton APIs are used (the JIT binder,
``_pack_args``); they are the same on triton 3.6 and 3.9. Started with ``TRITON_INTERPRET`` set, it runs itself
again without it (the kernels must be compiled, not interpreted). To report for triton 3.6 beside an installed 3.9:

    pip install --no-deps --target /tmp/triton36 triton==3.6.0
    PYTHONPATH=/tmp/triton36 python scripts/kernel_report.py --json report-3.6.json

    python scripts/kernel_report.py                       # sm_90, bf16, the five configs, every family
    python scripts/kernel_report.py --arch 80 --dtypes bf16,fp32 --configs lm-seed,adding --json r.json
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from urlstm_triton import kernels as K
from urlstm_triton.benchmarks import CONFIGS, CUDNN_MS, LONG_CONFIGS
from urlstm_triton.kernels import cost_model as CM
from urlstm_triton.kernels import persistent as P
from urlstm_triton.kernels import step_plan as SP

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = {"refine": K.MODE_REFINE, "tied": K.MODE_TIED, "classic": K.MODE_CLASSIC}


@dataclass(frozen=True)
class Arch:
    name: str
    capability: int
    limits: P.DeviceLimits
    machine: CM.Machine


ARCHS = {  # the GPUs each architecture's report assumes (SMs and shared memory decide grids and plans)
    80: Arch("A100 (sm_80)", 80, P.DeviceLimits(sm_count=108, smem_per_block=166912),
             CM.Machine(name="A100 SXM (assumed figures)", sms=108, clock_hz=1.41e9, mma_flops_per_clk=2048,
                        tf32_flops_per_clk=1024, l2_bytes_per_s=5e12, l2_bytes=40 * 2**20, hbm_bytes_per_s=1.9e12,
                        gemm_flops_per_s=250e12, gemm_fp32_flops_per_s=17e12, smem_per_sm=164 * 1024)),
    90: Arch("H200 (sm_90)", 90, P.DeviceLimits(sm_count=132, smem_per_block=232448), CM.H200),
    100: Arch("B200 (sm_100)", 100, P.DeviceLimits(sm_count=148, smem_per_block=232448),
              CM.Machine(name="B200 (assumed figures)", sms=148, clock_hz=1.9e9, mma_flops_per_clk=8192,
                         tf32_flops_per_clk=4096, l2_bytes_per_s=12e12, l2_bytes=126 * 2**20,
                         hbm_bytes_per_s=7.5e12, gemm_flops_per_s=1400e12, gemm_fp32_flops_per_s=70e12)),
}


# ------------------------------------------------------------------------------------------ compiling


@contextlib.contextmanager
def recorded_launches():
    """Record ``kernel[grid](*args, **kwargs)`` calls instead of running them: a list of
    ``(jit_function, args, kwargs, grid)``."""
    calls = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        calls.append((self, args, kwargs, grid))

    JITFunction.run = record
    try:
        yield calls
    finally:
        JITFunction.run = original


def _ptxas_fields(log: str) -> Dict:
    regs = re.search(r"Used (\d+) registers", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (regs and spill):
        raise RuntimeError(f"could not read ptxas's report:\n{log[-1500:]}")
    return {"registers": int(regs.group(1)), "stack": int(stack.group(1)) if stack else 0,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)),
            "spill_stores": int(spill.group(1)), "spill_loads": int(spill.group(2))}


def mma_summary(ptx: str) -> str:
    """The MMA instructions of a PTX listing, e.g. ``wgmma m64n128k16 x8`` (shape, static count)."""
    shapes = re.findall(r"\b(wgmma\.mma_async|mma)\.sync\.aligned\.(m\d+n\d+k\d+)", ptx)
    if not shapes:
        return "none (FMA)"
    counts: Dict[str, int] = {}
    for kind, shape in shapes:
        key = f"{'wgmma' if kind.startswith('wgmma') else 'mma.sync'} {shape}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


def waits_before_memory(ptx: str) -> bool:
    """Whether the kernel's ``griddepcontrol.wait`` comes before its first global-memory instruction (load,
    store, atomic, asynchronous copy): what makes a step launched with PDL safe to start early."""
    body = ptx[ptx.find(".entry"):]
    wait = body.find("griddepcontrol.wait")
    first = re.search(r"\b(ld\.global|st\.global|atom\.|red\.|cp\.async)", body)
    return wait >= 0 and (first is None or wait < first.start())


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def compile_launch(fn: JITFunction, args, kwargs, capability: int, keep_ptx: bool = False) -> Dict:
    """Compile one recorded launch for ``sm_<capability>`` the way ``JITFunction.run`` would on that GPU, and
    read registers, spills and stack from ptxas's log, shared memory from the kernel, MMAs from its PTX
    (returned too with ``keep_ptx``)."""
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kw = dict(kwargs)
    bound, specialization, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
    triton.knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    # a cache of its own: a cached kernel would skip ptxas, and its log with it
    with tempfile.TemporaryDirectory() as cache, _env("TRITON_CACHE_DIR", cache), contextlib.redirect_stdout(log):
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    fields = _ptxas_fields(log.getvalue())
    ptx = kernel.asm["ptx"]
    fields.update(shared_bytes=int(kernel.metadata.shared), mma=mma_summary(ptx),
                  num_warps=int(kernel.metadata.num_warps),
                  griddepcontrol="griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx,
                  waits_first=waits_before_memory(ptx))
    if keep_ptx:
        fields["ptx"] = kernel.asm["ptx"]
    return fields


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _programs(grid) -> int:
    return math.prod(grid)


# -------------------------------------------------------------------------------------- the families


@contextlib.contextmanager
def _pdl_for(capability: int):
    """The launch helpers ask the device whether ``Tiles.pdl`` can be honoured; the meta device would say no:
    answer for the target instead (programmatic dependent launch from sm_90)."""
    original = K.common.pdl_supported
    K.common.pdl_supported = lambda device: capability >= 90
    try:
        yield
    finally:
        K.common.pdl_supported = original


def step_launches(B: int, H: int, mode: int, dtype, config, capability: int = 90) -> Dict[str, tuple]:
    """The step kernels' launches for one forward and one backward sequence of two steps (the backward's
    second launch, the one with a later step, is the sequence's typical one), as on an ``sm_<capability>``."""
    G = K.num_gates(mode)
    T = 2
    xproj, w = _meta(T, B, G * H, dtype=dtype), _meta(G * H, H, dtype=dtype)
    hs, cs = _meta(T + 1, B, H, dtype=dtype), _meta(T + 1, B, H, dtype=torch.float32)
    gates = _meta(T, B, G * H, dtype=dtype)
    with _pdl_for(capability), recorded_launches() as fwd:
        K.forward_sequence(xproj, w, hs, cs, gates, mode, config)
    with _pdl_for(capability), recorded_launches() as bwd:
        K.backward_sequence(_meta(T, B, H, dtype=dtype), w, gates, cs, _meta(T, B, G * H, dtype=dtype),
                            _meta(B, H, dtype=torch.float32), mode, config, dh_last=_meta(B, H, dtype=torch.float32))
    return {"step-fwd": fwd[0], "step-bwd": bwd[-1]}


def persistent_launches(B: int, H: int, mode: int, dtype, arch: Arch, cfg: P.PersistentConfig) -> Dict[str, tuple]:
    G = K.num_gates(mode)
    T = 2
    xproj, w = _meta(T, B, G * H, dtype=dtype), _meta(G * H, H, dtype=dtype)
    hs, cs = _meta(T + 1, B, H, dtype=dtype), _meta(T + 1, B, H, dtype=torch.float32)
    gates = _meta(T, B, G * H, dtype=dtype)
    original = P.device_limits
    P.device_limits = lambda device: arch.limits  # the target's SMs and shared memory, not the meta device's
    try:
        with recorded_launches() as fwd:
            P.forward_sequence(xproj, w, hs, cs, gates, mode, cfg)
        with recorded_launches() as bwd:
            P.backward_sequence(_meta(T, B, H, dtype=dtype), w, gates, cs, _meta(T, B, G * H, dtype=dtype),
                                _meta(B, H, dtype=torch.float32), mode, cfg,
                                dz_next=_meta(B, G * H, dtype=dtype))
    finally:
        P.device_limits = original
    return {"persistent-fwd": fwd[0], "persistent-bwd": bwd[0]}


def step_estimate_ms(dims, G: int, config, elem: int, precision: str, machine: CM.Machine,
                     compiled: Optional[Dict[str, Dict]] = None) -> float:
    """Roofline estimate (ms) of forward+backward of ``dims`` on the step kernels: T launches each way plus the
    GEMMs around the recurrence. ``compiled``: registers and shared memory per direction, for occupancy."""
    T, B, I, H = dims
    compiled = compiled or {}
    f = compiled.get("step-fwd", {})
    b = compiled.get("step-bwd", {})
    fwd = SP.forward_estimate(B, H, G, config.fwd, elem, elem, precision, machine, f.get("registers", SP.PLANNER_REGS),
                              f.get("shared_bytes"))
    bwd = SP.backward_estimate(B, H, G, config.bwd, elem, elem, precision, machine,
                               b.get("registers", SP.PLANNER_REGS), b.get("shared_bytes"))
    around = sum(CM.non_recurrent_seconds(machine, T, B, I, H, G, elem).values())
    return 1e3 * (T * (fwd.seconds + bwd.seconds) + around)


def persistent_estimate_ms(dims, G: int, plan, elem: int, precision: str, machine: CM.Machine) -> float:
    T, B, I, H = dims
    per_step = sum(P.step_estimate(B, H, G, plan, elem, elem, precision, machine, backward=bw).seconds
                   for bw in (False, True))
    around = sum(CM.non_recurrent_seconds(machine, T, B, I, H, G, elem).values())
    return 1e3 * (T * per_step + 2 * machine.launch_gap_s + around)


# ------------------------------------------------------------------------------------------- the report


def _row(kernel, config, dtype, arch: Arch, launch, tiles: str, est: Optional[float], note: str = "") -> Dict:
    fn, args, kwargs, grid = launch
    row = {"kernel": kernel, "config": config, "dtype": dtype, "triton": triton.__version__,
           "arch": f"sm_{arch.capability}", "programs": _programs(grid), "sms": arch.limits.sm_count,
           "tiles": tiles, "est_ms_fwd_bwd": None if est is None else round(est, 2),
           "cudnn_ms": CUDNN_MS.get(dtype, {}).get(config), "note": note}
    try:
        row.update(compile_launch(fn, args, kwargs, arch.capability))
    except Exception as e:  # a failed compile is a result too (e.g. shared memory beyond the target's)
        row.update(registers=None, spill_bytes=None, stack=None, shared_bytes=None, mma=None,
                   error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return row


def _tiles_str(t) -> str:
    if t.gemm:
        return f"library GEMM + {t.block_b}x{t.block_h} gate math w{t.num_warps}"
    return f"{t.block_b}x{t.block_h}x{t.block_k} s{t.split_k} e{t.epi_h} w{t.num_warps}" + (" pdl" if t.pdl else "")


def step_rows(prefix: str, config, dims, name: str, dname: str, dtype, arch: Arch, mode: int,
              precision: str) -> List[Dict]:
    """The rows of both step-kernel directions with ``config``, each carrying the whole config's estimate."""
    T, B, I, H = dims
    elem = torch.empty((), dtype=dtype).element_size()
    launches = step_launches(B, H, mode, dtype, config, arch.capability)
    rows = [_row(f"{prefix}-{k[5:]}", name, dname, arch, launch, _tiles_str(getattr(config, k[5:])), None)
            for k, launch in launches.items()]
    compiled = {f"step-{r['kernel'].split('-')[1]}": r for r in rows if r.get("registers") is not None}
    est = step_estimate_ms(dims, K.num_gates(mode), config, elem, precision, arch.machine, compiled)
    for r in rows:
        r["est_ms_fwd_bwd"] = round(est, 2)
    return rows


def report(configs: Dict[str, tuple], dtypes: List[str], arch: Arch, families: List[str], mode: str) -> List[Dict]:
    rows = []
    m = MODES[mode]
    G = K.num_gates(m)
    for name, dims in configs.items():
        T, B, I, H = dims
        for dname in dtypes:
            dtype = DTYPES[dname]
            elem = torch.empty((), dtype=dtype).element_size()
            precision = "ieee" if dtype == torch.float32 else "tf32"
            model = K.pick_config(B, H, True, precision, arch.limits.sm_count, elem, G, elem)
            if "step" in families:
                rows += step_rows("step", model, dims, name, dname, dtype, arch, m, precision)
            if "pdl" in families and arch.capability >= 90:  # the same tiles, launched with PDL
                pdl = K.TileConfig(fwd=replace(model.fwd, pdl=True), bwd=replace(model.bwd, pdl=True),
                                   dot_precision=model.dot_precision)
                rows += step_rows("pdl", pdl, dims, name, dname, dtype, arch, m, precision)
            if "candidates" in families:  # the tuner's other candidates (urlstm_triton.tuning): it may run any
                for backward, direction in ((False, "fwd"), (True, "bwd")):
                    for tiles in SP.tuning_candidates(B, H, G, elem, elem, backward, precision, arch.machine)[1:]:
                        config = K.TileConfig(fwd=model.fwd if backward else tiles,
                                              bwd=tiles if backward else model.bwd, dot_precision=model.dot_precision)
                        launch = step_launches(B, H, m, dtype, config, arch.capability)[f"step-{direction}"]
                        row = _row(f"cand-{direction}", name, dname, arch, launch, _tiles_str(tiles), None)
                        # the whole config with this candidate in its direction, the model's pick in the other
                        est = step_estimate_ms(dims, G, config, elem, precision, arch.machine,
                                               {f"step-{direction}": row} if row.get("registers") else None)
                        rows.append({**row, "est_ms_fwd_bwd": round(est, 2)})
            if "persistent" in families:
                plan = P.plan_persistent(B, H, G, dtype, arch.limits)
                reason = P.coresidency_reason(plan, arch.limits, T)
                tiles = (f"{plan.block_b}x{plan.block_h}x{plan.block_k} "
                         f"{'U on chip' if plan.u_on_chip else 'U streamed'} w{plan.num_warps}")
                launches = persistent_launches(B, H, m, dtype, arch, P.PersistentConfig(
                    check="off", block_b=plan.block_b, block_h=plan.block_h, u_on_chip=plan.u_on_chip)) \
                    if not reason else None
                est = None if reason else persistent_estimate_ms(dims, G, plan, elem, precision, arch.machine)
                if reason:
                    rows.append({"kernel": "persistent", "config": name, "dtype": dname, "triton": triton.__version__,
                                 "arch": f"sm_{arch.capability}", "programs": plan.num_programs,
                                 "sms": arch.limits.sm_count, "tiles": tiles, "est_ms_fwd_bwd": None,
                                 "cudnn_ms": CUDNN_MS.get(dname, {}).get(name),
                                 "note": f"not used: {reason}"})
                else:
                    rows += [_row(k, name, dname, arch, launch, tiles, est) for k, launch in launches.items()]
    return rows


COLUMNS = ("kernel", "config", "dtype", "triton", "arch", "registers", "spill_bytes", "stack", "shared_bytes",
           "programs", "sms", "mma", "tiles", "est_ms_fwd_bwd", "cudnn_ms")


def markdown(rows: List[Dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r.get(c)
            cells.append("-" if v is None else str(v))
        line = "| " + " | ".join(cells) + " |"
        if r.get("error") or r.get("note"):
            line += f" {r.get('error') or r.get('note')}"
        lines.append(line)
    return "\n".join(lines)


def problems(rows: List[Dict]) -> List[str]:
    """What misses the issue's compile targets: spills, failed compiles, step launches below a full wave."""
    out = []
    for r in rows:
        what = f"{r['kernel']} {r['config']} {r['dtype']}"
        if r.get("error"):
            out.append(f"{what}: compile failed: {r['error']}")
        elif r.get("spill_bytes"):
            out.append(f"{what}: {r['spill_bytes']} bytes of spills")
        elif r["kernel"].startswith("pdl-") and not r.get("griddepcontrol"):
            out.append(f"{what}: launched with PDL but its PTX lacks griddepcontrol.wait/launch_dependents")
        elif r["kernel"].startswith("pdl-") and not r.get("waits_first"):
            out.append(f"{what}: launched with PDL but it touches global memory before griddepcontrol.wait")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--arch", type=int, default=90, choices=sorted(ARCHS), help="GPU architecture (sm_XX)")
    p.add_argument("--dtypes", default="bf16", help=f"comma-separated from {list(DTYPES)}")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated names from {list(CONFIGS) + list(LONG_CONFIGS)}, or T,B,I,H tuples "
                        "separated by ';'")
    p.add_argument("--families", default="step,persistent,candidates,pdl",
                   help="comma-separated from step (the model's tiles), persistent, candidates (the tile tuner's "
                        "other candidates: urlstm_triton.tuning may pick any of them on a GPU), pdl (the model's "
                        "tiles launched with programmatic dependent launch; sm_90 and later)")
    p.add_argument("--mode", default="refine", choices=sorted(MODES), help="gate mode (refine: the UR-LSTM)")
    p.add_argument("--json", help="also write the rows (and the environment) to this JSON file")
    args = p.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        p.error(f"--dtypes: unknown {bad}; choose from {list(DTYPES)}")
    families = [f for f in args.families.split(",") if f]
    if not families or any(f not in ("step", "persistent", "candidates", "pdl") for f in families):
        p.error(f"--families must name step, persistent, candidates and/or pdl, got {args.families!r}")
    configs = {}
    table = {**CONFIGS, **LONG_CONFIGS}
    for part in filter(None, re.split(r"[;]|,(?=[a-z])", args.configs)):
        if part in table:
            configs[part] = table[part]
            continue
        try:
            dims = tuple(int(v) for v in part.split(","))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            p.error(f"--configs: {part!r} is neither a known config ({list(table)}) nor T,B,I,H")
        configs["T{}-B{}-I{}-H{}".format(*dims)] = dims
    if not configs:
        p.error("--configs: nothing to compile")
    return args, dtypes, families, configs


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # the kernels were decorated for Triton's interpreter when this module was imported: start again without
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "urlstm_triton.scripts.kernel_report", *argv], env=env)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning
    args, dtypes, families, configs = parse_args(argv)
    arch = ARCHS[args.arch]
    rows = report(configs, dtypes, arch, families, args.mode)
    text = markdown(rows)
    print(f"kernel report: triton {triton.__version__}, {arch.name}, mode {args.mode} (compile data; "
          f"est_ms_fwd_bwd is a roofline ESTIMATE, cudnn_ms a measurement)\n")
    print(text)
    issues = problems(rows)
    for line in issues:
        print("PROBLEM:", line)
    if args.json:
        env = {"triton": triton.__version__, "torch": torch.__version__, "arch": args.arch, "mode": args.mode,
               "machine": asdict(arch.machine), "python": sys.version.split()[0]}
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows, "problems": issues, "table": text}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
