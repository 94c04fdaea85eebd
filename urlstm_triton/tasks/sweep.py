"""Grids of validation-task runs: variants x seeds x task sizes, run by a few worker processes (``scripts/sweep.py``).

A sweep is a JSON file::

    {"job": "synthetic", "preset": "copy-tiny",
     "variants": ["lstm", "--", "UR"], "seeds": [0, 1, 2],
     "sizes": {"lag20": ["--lag", "20"], "lag100": ["--lag", "100", "--train.steps", "3000"]},
     "args": ["--run.threads", "1"]}

Every (size, variant, seed) is one run of ``train/<job>.py --preset <preset> <size args> <args> --variant V
--train.seed S --run.dir <root>/<size>/<variant>/seed<S> --resume``. A run whose ``summary.json`` says it
completed all its steps (or was stopped by the non-finite guard, a result too) is skipped; any other run
(never started, interrupted, crashed) is started again with ``--resume``, which continues from its newest
checkpoint. So a sweep that was stopped is resumed by running the same command again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import SweepError
from ..training.recurrent import check_variant

JOBS = ("synthetic", "vision", "lm")


@dataclass
class Sweep:
    job: str
    preset: str
    variants: List[str]
    seeds: List[int]
    sizes: Dict[str, List[str]]
    args: List[str] = field(default_factory=list)


@dataclass
class SweepRun:
    job: str
    size: str
    variant: str
    seed: int
    dir: Path
    argv: List[str]  # the trainer's arguments (after the script path)

    @property
    def name(self) -> str:
        return str(self.dir)


def variant_dir(code: str) -> str:
    """A directory name for a variant code: ``-`` becomes ``_`` (``--`` -> ``__``) so no name starts with a dash."""
    return code.replace("-", "_")


def variant_args(code: str) -> List[str]:
    """The trainer flag that selects a variant: ``--model.variant`` means the same in every job (``lstm`` is
    torch.nn.LSTM, ``classic`` the URLSTM's classic mode)."""
    # one token: a separate value "--" (the tied baseline) would read as an option
    return [f"--model.variant={code}"]


def _str_list(value, where: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepError(f"{where} must be a list of strings, got {value!r}")
    return list(value)


def parse_sweep(data, source: str = "sweep") -> Sweep:
    """Check a sweep's fields (a dict, e.g. loaded from JSON) and canonicalise the variant names."""
    if not isinstance(data, dict):
        raise SweepError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - {"job", "preset", "variants", "seeds", "sizes", "args", "note"}
    if unknown:
        raise SweepError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("job", "preset", "variants", "seeds"):
        if key not in data:
            raise SweepError(f"{source}: missing {key!r}")
    if data["job"] not in JOBS:
        raise SweepError(f"{source}: job must be one of {', '.join(JOBS)}, got {data['job']!r}")
    if not isinstance(data["preset"], str):
        raise SweepError(f"{source}: preset must be a string, got {data['preset']!r}")
    variants = _str_list(data["variants"], f"{source}: variants")
    try:
        variants = [check_variant(v) for v in variants]
    except ValueError as e:
        raise SweepError(f"{source}: {e}") from None
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in seeds):
        raise SweepError(f"{source}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if not variants:
        raise SweepError(f"{source}: variants is empty")
    for what, items in (("variants", variants), ("seeds", seeds)):
        if len(set(items)) != len(items):
            raise SweepError(f"{source}: {what} has duplicates: {items!r}")
    sizes = data.get("sizes", {"default": []})
    if not isinstance(sizes, dict) or not sizes:
        raise SweepError(f"{source}: sizes must be a non-empty object of name -> list of arguments")
    for name in sizes:
        if not name or "/" in name or name.startswith("."):
            raise SweepError(f"{source}: size name {name!r} is not usable as a directory name")
    sizes = {k: _str_list(v, f"{source}: sizes.{k}") for k, v in sizes.items()}
    args = _str_list(data.get("args", []), f"{source}: args")
    reserved = ("--variant", "--model.variant", "--model.gate", "--model.rnn", "--train.seed", "--seed",
                "--run.dir", "--preset")
    for tok in args + [t for v in sizes.values() for t in v]:
        if tok.split("=")[0] in reserved:
            raise SweepError(f"{source}: {tok.split('=')[0]} is set by the sweep itself, not in args or sizes")
    return Sweep(data["job"], data["preset"], variants, list(seeds), sizes, args)


def load_sweep(path) -> Sweep:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise SweepError(f"{path}: cannot be read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from None
    return parse_sweep(data, str(path))


def expand(sweep: Sweep, root) -> List[SweepRun]:
    """Every run of the grid, seed-major: the first seed of every cell comes before any second seed, so a sweep
    stopped early still covers the whole grid once."""
    root = Path(root)
    runs = []
    for seed in sweep.seeds:
        for size in sweep.sizes:
            for v in sweep.variants:
                d = root / size / variant_dir(v) / f"seed{seed}"
                argv = (["--preset", sweep.preset] + sweep.sizes[size] + sweep.args + variant_args(v) +
                        ["--train.seed", str(seed), "--run.dir", str(d), "--resume"])
                runs.append(SweepRun(sweep.job, size, v, seed, d, argv))
    return runs


def select(runs: List[SweepRun], variants: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None,
           sizes: Optional[Sequence[str]] = None) -> List[SweepRun]:
    """The runs with one of the given variants, seeds and sizes (each filter optional); a value that matches no
    run is an error (a typo would otherwise run nothing)."""
    variants = [check_variant(v) for v in variants] if variants else None
    for name, wanted, attr in (("variant", variants, "variant"), ("seed", seeds, "seed"), ("size", sizes, "size")):
        if wanted:
            have = {getattr(r, attr) for r in runs}
            missing = [w for w in wanted if w not in have]
            if missing:
                raise SweepError(f"{name} {missing[0]!r} is in no sweep given (they have "
                                 f"{', '.join(map(str, sorted(have, key=str)))})")
            runs = [r for r in runs if getattr(r, attr) in wanted]
    return runs


def run_state(run_dir) -> str:
    """``"done"`` (completed, or stopped by the non-finite guard), ``"partial"`` (a summary or checkpoint of an
    unfinished run: resumed), or ``"new"``."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return "partial"
        status = str(summary.get("status", ""))
        if status.startswith("stopped") or (status == "completed" and summary.get("step") == summary.get("steps")):
            return "done"
        return "partial"
    return "partial" if run_dir.is_dir() and any(run_dir.iterdir()) else "new"


def command(run: SweepRun, python: str = sys.executable) -> List[str]:
    # the job through the package, not train/<job>.py: an installed wheel has no train/ folder
    return [python, "-m", "urlstm_triton.cli", run.job] + run.argv


class _Pool:
    """Runs commands, at most ``workers`` at a time, each at ``nice`` priority; stops them all on request."""

    def __init__(self, workers: int, nice: int):
        self.workers, self.nice = workers, nice
        self.procs: Dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopping = False

    def call(self, cmd: List[str], log_path: Path) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.stopping:
                return -1
            with open(log_path, "ab") as log:
                log.write(f"\n$ {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
            self.procs[proc.pid] = proc
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.procs.pop(proc.pid, None)

    def stop(self) -> None:
        """SIGTERM every running trainer: each writes a checkpoint and its summary, then exits."""
        with self.lock:
            self.stopping = True
            for proc in self.procs.values():
                proc.send_signal(signal.SIGTERM)


def run_sweep(runs: List[SweepRun], workers: int = 1, nice: int = 0,
              python: str = sys.executable, echo: Callable[[str], None] = print) -> Dict[str, List[str]]:
    """Run every run of ``runs`` that is not done, ``workers`` at a time. Each run's output goes to
    ``<run dir>/sweep.log``. Returns the run names by outcome: skipped (already done), completed, failed."""
    todo = [r for r in runs if run_state(r.dir) != "done"]
    out: Dict[str, List[str]] = {"skipped": [r.name for r in runs if r not in todo], "completed": [], "failed": []}
    echo(f"{len(runs)} runs, {len(out['skipped'])} already done, {len(todo)} to run on {workers} worker(s)")
    pool = _Pool(workers, nice)

    def one(run: SweepRun) -> None:
        if pool.stopping:
            return
        t0 = time.time()
        echo(f"start {run.name} ({run_state(run.dir)})")
        rc = pool.call(command(run, python), run.dir / "sweep.log")
        ok = rc == 0 and run_state(run.dir) == "done"
        out["completed" if ok else "failed"].append(run.name)
        echo(f"{'done ' if ok else 'FAILED'} {run.name} in {time.time() - t0:.0f} s"
             + ("" if ok else f" (exit {rc}; see {run.dir / 'sweep.log'})"))

    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # `kill <sweep pid>` stops the trainers cleanly (checkpoint, summary) like Ctrl-C does
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            futures = [ex.submit(one, r) for r in todo]
            try:
                for f in futures:
                    while not f.done():
                        time.sleep(0.2)
                    f.result()
            except KeyboardInterrupt:
                pool.stop()
                echo("stopping: trainers checkpoint and exit; run the same command again to resume")
                raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return out


def default_workers() -> int:
    """One worker per core this process may use (the trainers run one torch thread each with --run.threads 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
