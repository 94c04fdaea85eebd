"""Run a grid of validation-task runs (variants x seeds x task sizes) on a few worker processes, then report it.

    python scripts/sweep.py results/synthetic/copy.json results/synthetic/adding.json --root runs/synthetic \
        --workers 2 --nice 19                                     # runs go to runs/synthetic/{copy,adding}/...
    python scripts/sweep.py results/synthetic/copy.json --root runs/synthetic --dry-run   # runs, states, commands
    python scripts/sweep.py results/synthetic/copy.json --root runs/synthetic --seeds 0 --variants UR lstm

A sweep file (JSON: job, preset, variants, seeds, sizes, args; see urlstm_triton/tasks/sweep.py) fixes a
grid; the runs of all files given share one pool of workers, first seed first (or, with --order files, file
by file: a priority order). Every run is resumable and finished runs are skipped, so the same command continues
a stopped sweep; `kill <pid>` (SIGTERM) or Ctrl-C stops the trainers cleanly. Afterwards scripts/compare.py's
report of the root (mean ± std over seeds per cell, first step to solve, curves with the spread shaded) goes to
--out (default <root>/report); --collect DIR also copies each finished run's summary.json and metrics.jsonl there,
laid out as under the root, for committing.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from urlstm_triton.tasks.compare import SummaryError, compare
from urlstm_triton.tasks.sweep import SweepError, default_workers, expand, load_sweep, run_state, run_sweep, select

# --collect copies summary.json and metrics.jsonl: small, and every reported number comes from them


def relative_summary(summary: dict, rel: Path) -> dict:
    """The summary with the run's own paths (run directory, last checkpoint, config's run.dir) written as
    ``runs/<path under the sweep root>``: the copy must not point into the machine that ran it."""
    where = f"runs/{rel.as_posix()}"
    out = dict(summary)
    if "run_dir" in out:
        out["run_dir"] = where
    if out.get("last_checkpoint"):
        out["last_checkpoint"] = f"{where}/checkpoints/{Path(out['last_checkpoint']).name}"
    if isinstance(out.get("config", {}).get("run"), dict) and "dir" in out["config"]["run"]:
        out["config"] = {**out["config"], "run": {**out["config"]["run"], "dir": where}}
    return out


def collect(runs, root: Path, dest: Path) -> int:
    """Copy the small record files of every finished run into ``dest``, keeping the layout (its paths rewritten
    by :func:`relative_summary`; metrics.jsonl as it is). A run still going or stopped part-way is left out: its
    numbers are not the grid's."""
    n = 0
    for r in runs:
        if run_state(r.dir) != "done":
            continue
        rel = r.dir.relative_to(root)
        target = Path(dest) / rel
        target.mkdir(parents=True, exist_ok=True)
        summary = json.loads((r.dir / "summary.json").read_text())
        (target / "summary.json").write_text(json.dumps(relative_summary(summary, rel), indent=2) + "\n")
        shutil.copy2(r.dir / "metrics.jsonl", target / "metrics.jsonl")
        n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+", help="sweep files (JSON); their runs share one pool of workers")
    ap.add_argument("--root", required=True,
                    help="where the run directories go: <root>/<sweep file name>/<size>/<variant>/seed<S>")
    ap.add_argument("--workers", type=int, default=default_workers(),
                    help="runs at a time (default: the cores this process may use)")
    ap.add_argument("--nice", type=int, default=0, help="niceness of the trainers (e.g. 19 on a shared machine)")
    ap.add_argument("--variants", nargs="+", help="only these variants of the sweep")
    ap.add_argument("--seeds", nargs="+", type=int, help="only these seeds of the sweep")
    ap.add_argument("--sizes", nargs="+", help="only these sizes of the sweep")
    ap.add_argument("--order", choices=("seed", "files"), default="seed",
                    help="seed: the first seed of every file's runs before any second seed (default); files: the "
                         "files in the order given, each seed-major (a priority order)")
    ap.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; run nothing")
    ap.add_argument("--no-report", action="store_true", help="do not write the report afterwards")
    ap.add_argument("--report-only", action="store_true", help="run nothing; only write the report (and --collect)")
    ap.add_argument("--out", help="report directory (default: <root>/report)")
    ap.add_argument("--collect", help="copy each run's summary.json and metrics.jsonl here (same layout)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    try:
        root = Path(args.root)
        runs = []
        for path in args.sweeps:
            runs += expand(load_sweep(path), root / Path(path).stem)
        if args.order == "seed":  # seed-major over all sweeps (stable: each sweep's order within a seed)
            runs.sort(key=lambda r: r.seed)
        runs = select(runs, args.variants, args.seeds, args.sizes)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for r in runs:
            print(f"{run_state(r.dir):8s} train/{r.job}.py {' '.join(r.argv)}")
        return 0
    failed = []
    if not args.report_only:
        try:
            res = run_sweep(runs, workers=args.workers, nice=args.nice,
                            echo=lambda s: print(s, file=sys.stderr, flush=True))
        except KeyboardInterrupt:
            return 130
        failed = res["failed"]
        print(f"{len(res['completed'])} completed, {len(res['skipped'])} skipped, {len(failed)} failed"
              + (": " + ", ".join(failed) if failed else ""), file=sys.stderr)
    if args.collect:
        print(f"collected {collect(runs, root, Path(args.collect))} runs into {args.collect}", file=sys.stderr)
    if not args.no_report:
        have = [r.dir for r in runs if (r.dir / "summary.json").is_file()]
        if have:
            try:
                rep = compare(have, Path(args.out) if args.out else root / "report")
            except SummaryError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(rep["table"])
            print(f"report of {rep['runs']} runs -> {rep['markdown']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
