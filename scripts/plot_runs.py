"""Plot training curves of several runs side by side into one PNG.

    python scripts/plot_runs.py runs/lm-quickstart runs/lm-lstm --out curves.png
    python scripts/plot_runs.py a/summary.json b/tb --keys train/loss valid/ppl --smooth 0.9

Each argument is a run directory (metrics.jsonl preferred, else TensorBoard events, else summary.json), a
TensorBoard directory, or a summary.json; ``name=path`` sets the legend name.
"""
import argparse
import sys
from pathlib import Path

from urlstm_triton.training.plots import load_curves, plot_runs

DEFAULT_KEYS = ["train/loss", "valid/loss", "valid/ppl", "valid/accuracy", "test/ppl", "test/accuracy"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run dirs, TensorBoard dirs or summary.json files (optionally name=path)")
    p.add_argument("--out", default="runs/curves.png", help="output PNG")
    p.add_argument("--keys", nargs="+", default=DEFAULT_KEYS, help="curves to draw (those present are drawn)")
    p.add_argument("--smooth", type=float, default=0.0, help="EMA factor for train curves, in [0, 1)")
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    if not 0.0 <= a.smooth < 1.0:
        p.error("--smooth must be in [0, 1)")
    runs = {}
    for spec in a.runs:
        name, eq, path = spec.partition("=")
        if not eq:
            path = spec
            name = Path(spec).name if Path(spec).name != "summary.json" else Path(spec).parent.name
        try:
            runs[name] = load_curves(path)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        drawn = plot_runs(runs, a.out, a.keys, a.smooth, a.title)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(f"{a.out}: {', '.join(drawn)} for {', '.join(runs)}")


if __name__ == "__main__":
    main()
