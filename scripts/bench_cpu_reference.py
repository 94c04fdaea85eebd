"""Time the CPU reference path (``URLSTM(backend="reference")``) against ``torch.nn.LSTM``, one layer.

Medians of forward+backward (``out.backward(g)``, random ``g``) and forward alone (``torch.no_grad()``),
each after warm-up, interleaved run by run so that a change of machine load hits every row alike.
``--also FILE`` adds a row for ``reference_recurrence`` loaded from another copy of ``reference.py``
(before/after comparisons in one session). Example::

    python scripts/bench_cpu_reference.py --configs 128,32,128,256 64,16,64,512 35,16,64,128
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch

import urlstm_triton
import urlstm_triton.functional as functional
from urlstm_triton import URLSTM


def load_reference_copy(path: str):
    """``reference_recurrence`` from another copy of ``reference.py`` (imported inside the package)."""
    spec = importlib.util.spec_from_file_location("urlstm_triton._reference_copy", path,
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "urlstm_triton"
    spec.loader.exec_module(module)
    return module.reference_recurrence


CLOCK = time.perf_counter


def _time(fn) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1e3


def bench_config(T, B, I, H, gate, reps, warmup, extra):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H)
    ur = URLSTM(I, H, gate=gate, backend="reference")
    x = torch.randn(T, B, I)
    g = torch.randn(T, B, H)
    rows = {"nn.LSTM": lstm, f"reference ({gate})": ur}
    original = functional.reference_recurrence

    def runner(model, impl=None):
        def fwd_bwd():
            functional.reference_recurrence = impl or original
            try:
                out, _ = model(x)
                out.backward(g)
            finally:
                functional.reference_recurrence = original

        def fwd():
            functional.reference_recurrence = impl or original
            try:
                with torch.no_grad():
                    model(x)
            finally:
                functional.reference_recurrence = original
        return fwd_bwd, fwd

    runners = {name: runner(m) for name, m in rows.items()}
    for label, impl in extra.items():
        runners[f"{label} ({gate})"] = runner(ur, impl)
    times = {name: ([], []) for name in runners}
    for _ in range(warmup):
        for fb, f in runners.values():
            fb(), f()
    for _ in range(reps):
        for name, (fb, f) in runners.items():
            times[name][0].append(_time(fb))
            times[name][1].append(_time(f))
    base = [statistics.median(t) for t in times["nn.LSTM"]]
    for name, (tb, tf) in times.items():
        mb, mf = statistics.median(tb), statistics.median(tf)
        print(f"| {T}, {B}, {I}, {H} | {name} | {mb:.1f} | {mb / base[0]:.2f} | {mf:.1f} | {mf / base[1]:.2f} |",
              flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["128,32,128,256", "64,16,64,512", "35,16,64,128"],
                   help="T,B,I,H per config")
    p.add_argument("--gate", default="UR")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the CPU time of this thread (time.thread_time), not wall time: with --threads 1 "
                        "it ignores the time other jobs on a shared machine take the core away")
    p.add_argument("--also", nargs="*", default=[], metavar="FILE",
                   help="other copies of reference.py to time beside this one")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        if torch.get_num_threads() != 1:
            p.error("--cpu-time counts this thread only: use it with --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    extra = {os.path.basename(os.path.dirname(os.path.abspath(f))) + "/" + os.path.basename(f):
             load_reference_copy(f) for f in args.also}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CPU time' if args.cpu_time else 'wall time'}, urlstm_triton from "
          f"{os.path.dirname(urlstm_triton.__file__)}, load {os.getloadavg()[0]:.2f}")
    print("| T, B, I, H | path | fwd+bwd ms | x nn.LSTM | fwd ms | x nn.LSTM |")
    print("|---|---|---|---|---|---|")
    for cfg in args.configs:
        T, B, I, H = (int(v) for v in cfg.split(","))
        bench_config(T, B, I, H, args.gate, args.reps, args.warmup, extra)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
