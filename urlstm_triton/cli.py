"""Console scripts (``[project.scripts]`` in pyproject.toml): the jobs and the tools in ``scripts/``.

Each command first checks that the extras it needs are installed (:func:`urlstm_triton.extras.require`: one line
saying what to install, exit status 2, if not), then imports and runs its module. ``train/*.py`` call the job
functions here, so ``python train/lm.py`` and ``accelerate launch train/lm.py`` behave as ``urlstm-lm`` does.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from .extras import require

# ---- the jobs (train/*.py call these too)


def lm(argv: Optional[Sequence[str]] = None) -> None:
    """``urlstm-lm``: the language-model job (``train/lm.py``)."""
    require("train")
    from .lm.job import cli

    cli(argv)


def synthetic(argv: Optional[Sequence[str]] = None) -> None:
    """``urlstm-synthetic``: the copy and adding tasks (``train/synthetic.py``)."""
    require("train")
    from .tasks.synthetic_job import main
    from .training import run_main

    run_main(main, argv)


def vision(argv: Optional[Sequence[str]] = None) -> None:
    """``urlstm-vision``: sequential and permuted MNIST, sequential CIFAR-10 (``train/vision.py``)."""
    require("train")
    from .tasks.vision_job import main
    from .training import run_main

    run_main(main, argv)


# ---- the tools in scripts/ (installed as urlstm_triton.scripts)


def _tool(name: str, extras: Sequence[str], argv: Optional[Sequence[str]]):
    require(*extras)
    return importlib.import_module(f"urlstm_triton.scripts.{name}").main(argv)


def compare(argv: Optional[Sequence[str]] = None):
    """``urlstm-compare``: ``scripts/compare.py``, validation-task runs side by side."""
    return _tool("compare", ("train", "plots"), argv)


def plot_runs(argv: Optional[Sequence[str]] = None):
    """``urlstm-plot``: ``scripts/plot_runs.py``, training curves of several runs in one PNG."""
    return _tool("plot_runs", ("train", "plots"), argv)


def generate(argv: Optional[Sequence[str]] = None):
    """``urlstm-generate``: ``scripts/generate.py``, text sampled from a trained language model."""
    return _tool("generate", ("train",), argv)


def sweep(argv: Optional[Sequence[str]] = None):
    """``urlstm-sweep``: ``scripts/sweep.py``, a grid of validation-task runs (variants x seeds x sizes)."""
    return _tool("sweep", ("train", "plots"), argv)


def gate_analysis(argv: Optional[Sequence[str]] = None):
    """``urlstm-gate-analysis``: ``scripts/gate_analysis.py``, histograms of the forget gates of trained runs."""
    return _tool("gate_analysis", ("train", "plots"), argv)


def bench_lm(argv: Optional[Sequence[str]] = None):
    """``urlstm-bench-lm``: ``scripts/bench_lm_throughput.py``, LM training throughput against cuDNN."""
    return _tool("bench_lm_throughput", ("train",), argv)


_JOBS = {"lm": lm, "synthetic": synthetic, "vision": vision}

if __name__ == "__main__":  # python -m urlstm_triton.cli JOB ARGS: how the sweep starts its runs, clone or wheel
    if len(sys.argv) < 2 or sys.argv[1] not in _JOBS:
        sys.exit(f"usage: python -m urlstm_triton.cli {{{','.join(_JOBS)}}} [options]")
    _JOBS[sys.argv[1]](sys.argv[2:])
