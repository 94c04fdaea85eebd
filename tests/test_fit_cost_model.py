"""The cost model against the H200 tile sweep committed in results/gpu (scripts/fit_cost_model.py): with its
latency terms fitted, the model must explain the measurements clearly better than without them. A guard on
the model (an edit that breaks its latency terms fails here) and on the fit script, on real data."""
import dataclasses
import glob
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import fit_cost_model as F  # noqa: E402
from urlstm_triton.kernels import cost_model as CM  # noqa: E402


def test_the_fitted_latency_terms_explain_the_h200_sweep(tmp_path):
    paths = sorted(glob.glob(F.DEFAULT_GLOB))
    rows = F.load_rows(paths)
    assert len(rows) == 48  # 3 configs x 16 tilings
    without = dataclasses.replace(CM.H200, load_latency_s=0.0, load_latency_hbm_s=0.0, subtile_latency_s=0.0,
                                  partial_latency_s=0.0)
    fitted, err = F.fit(rows, CM.H200)
    assert err < 0.3 * F.log_error(rows, without)  # typical error from ~70% down to ~25%
    after = F.correlations(rows, fitted)
    assert after["lm-1k"]["fwd_bwd"] > 0.5 and after["big-batch"]["fwd_bwd"] > 0.0
    assert F.main(["--json", str(tmp_path / "fit.json")] + paths) == 0
    assert (tmp_path / "fit.json").exists()
