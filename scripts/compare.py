"""Compare validation-task runs: a Markdown table per task and PNG curves with the variants side by side.

    python scripts/compare.py runs/copy-* --out results/copy       # run dirs, summary.json files or parents

Runs of one variant and setup that differ only in the seed are one row (mean ± std, per seed, first step to
solve) and one line with the seeds' range shaded; runs.md lists every run. Also reads train/lm.py runs.
"""
import argparse
import sys

from urlstm_triton.tasks.compare import SummaryError, compare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run directories, summary.json files, or directories to search")
    ap.add_argument("--out", default="results",
                    help="where comparison.md, runs.md and <task>.png go (default: results)")
    ap.add_argument("--compact", action="store_true", help="comparison.md with the headline and solve columns only")
    args = ap.parse_args(argv)
    try:
        res = compare(args.paths, args.out, args.compact)
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["table"])
    print(f"{res['runs']} runs -> {res['markdown']}, " + ", ".join(map(str, res["plots"])), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
