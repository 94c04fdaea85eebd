"""Histograms of the forget gate f and the effective forget gate g of trained runs, beside their initialisation.

    python scripts/gate_analysis.py runs/copy/lag100/{lstm,__,U_,_R,UR}/seed0 --out results/gates/copy-lag100.png

Each argument is a run directory of train/synthetic.py or train/vision.py with at least one checkpoint (the
newest is read) and its config.json; the model is rebuilt from the config, initialised from the run's seed
for the "init" histograms. One row per run; the per-unit means of f and g over the task's evaluation inputs.
--json also writes the per-unit values and summary statistics (share of units above 0.9 / 0.99).
"""
import argparse
import json
import sys
from pathlib import Path

from urlstm_triton.tasks.gate_analysis import GateAnalysisError, analyse_run, plot_gates, unit_stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (one row each, in this order)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--json", help="also write per-unit values and statistics here")
    ap.add_argument("--title", default="")
    ap.add_argument("--sequences", type=int, default=256, help="evaluation sequences fed through (default 256)")
    args = ap.parse_args(argv)
    try:
        results = [analyse_run(r, args.sequences) for r in args.runs]
    except GateAnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot_gates(results, args.out, args.title)
    rows = []
    for res in results:
        row = {"variant": res["variant"], "task": res["task"], "step": res["step"], "run": res["run"]}
        for stage in ("init", "trained"):
            for gate in ("f", "g"):
                row[f"{stage}_{gate}"] = unit_stats(res[stage][gate])
                if args.json:
                    row[f"{stage}_{gate}_units"] = [round(v, 6) for v in res[stage][gate].tolist()]
        rows.append(row)
        s = row["trained_g"]
        print(f"{res['variant']:>5} step {res['step']}: trained g median {s['median']:.3f}, "
              f"{100 * s['above_0.9']:.0f}% of units > 0.9, {100 * s['above_0.99']:.0f}% > 0.99 "
              f"(init: {100 * row['init_g']['above_0.99']:.0f}% > 0.99)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
