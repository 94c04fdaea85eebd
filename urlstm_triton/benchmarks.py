"""The benchmark shapes, the measured anchors every speed comparison in this project uses, and the timer.

``CONFIGS``: (T, B, I, H) of the five shapes ``scripts/bench_kernels.py`` times and ``scripts/kernel_report.py``
compiles; ``CUDNN_MS``: what cuDNN's ``nn.LSTM`` took on them (one H200, torch 2.11, forward+backward median,
milliseconds; docs/design.md), the speed a user gives up by leaving ``nn.LSTM``; ``EAGER_LOOP_MS``: the
community port's per-step PyTorch loop (bf16) on the same H200.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Iterable, List, Tuple

import torch

CONFIGS = {
    "lm-seed": (128, 128, 1024, 3072),
    "lm-1k": (256, 64, 1024, 1024),
    "smnist": (784, 50, 1, 1024),
    "adding": (2000, 10, 2, 256),
    "big-batch": (512, 256, 1024, 1024),
}
LONG_CONFIGS = {  # the chunking targets (issue 7); not in the default set
    "long-8k": (8192, 16, 1024, 1024),
    "long-64k": (65536, 8, 1024, 1024),
}
CUDNN_MS = {
    "bf16": {"lm-seed": 13.8, "lm-1k": 10.9, "smnist": 30.0, "adding": 67.7, "big-batch": 25.8},
    "fp32": {"lm-seed": 26.8, "lm-1k": 14.5, "smnist": 37.0, "adding": 62.0, "big-batch": 48.5},
}
EAGER_LOOP_MS = {"bf16": {"lm-seed": 132.0, "lm-1k": 264.0, "smnist": 971.0, "adding": 2432.0, "big-batch": 477.0}}


def named_configs(names: str, extra: Iterable[str] = ()) -> List[Tuple[str, tuple]]:
    """``(name, (T, B, I, H))`` for comma-separated ``names`` from ``CONFIGS`` and ``LONG_CONFIGS``, then one per
    ``"T,B,I,H"`` string of ``extra``; ``SystemExit`` naming what is wrong (these come from command lines)."""
    table = {**CONFIGS, **LONG_CONFIGS}
    out = []
    for name in filter(None, names.split(",")):
        if name not in table:
            raise SystemExit(f"--configs: unknown config {name!r}; known: {list(table)}")
        out.append((name, table[name]))
    for spec in extra:
        try:
            dims = tuple(int(v) for v in spec.split(","))
        except ValueError:
            dims = ()
        if len(dims) != 4 or min(dims) < 1:
            raise SystemExit(f"--config must be four positive integers T,B,I,H, got {spec!r}")
        out.append(("T{}-B{}-I{}-H{}".format(*dims), dims))
    if not out:
        raise SystemExit("no config to run: give --configs and/or --config")
    return out


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable, device, warmup: int = 2, min_time: float = 0.0, max_reps: int = 5) -> Dict:
    """Median milliseconds of ``fn`` (CUDA events on a GPU, ``perf_counter`` on a CPU) after ``warmup`` runs;
    repeats until ``min_time`` seconds or ``max_reps`` runs (at least 3, or ``max_reps`` if fewer)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times, start = [], time.perf_counter()
    least = min(3, max_reps)
    while len(times) < least or (len(times) < max_reps and time.perf_counter() - start < min_time):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "reps": len(times)}


__all__ = ["CONFIGS", "LONG_CONFIGS", "CUDNN_MS", "EAGER_LOOP_MS", "named_configs", "sync", "time_fn"]
