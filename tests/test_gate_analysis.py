"""scripts/gate_analysis.py: f and g traced along the layer's own trajectory, rebuilt runs, the plot."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from formulas import sig
from test_tasks_trainers import QUIET, _mnist_csv
from urlstm_triton import URLSTM
from urlstm_triton.tasks import synthetic_job, vision_job
from urlstm_triton.tasks.gate_analysis import GateAnalysisError, analyse_run, gate_trace, unit_stats


def _z(rnn, x, h_prev, layer=("weight_ih_l0", "weight_hh_l0")):
    w_ih, w_hh = (getattr(rnn, n) for n in layer)
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0 if isinstance(rnn, nn.LSTM) else rnn.bias_l0
    return x @ w_ih.T + h_prev @ w_hh.T + b


@pytest.mark.parametrize("code", ["lstm", "--", "UR", "OM"])
def test_trace_follows_the_layers_own_trajectory(code):
    torch.manual_seed(0)
    H = 6
    rnn = nn.LSTM(3, H, batch_first=True) if code == "lstm" else URLSTM(3, H, gate=code, batch_first=True,
                                                                      master_chunk=2 if code == "OM" else 1)
    x = torch.randn(2, 5, 3)
    f, g = gate_trace(rnn, x)
    with torch.no_grad():
        out, _ = rnn(x)
    h_prev = torch.cat([torch.zeros(2, 1, H), out[:, :-1]], 1)  # the layer's h_{t-1}
    z = _z(rnn, x, h_prev).transpose(0, 1)  # (T, B, rows)
    if code == "OM":  # f a sigmoid; g from ON-LSTM's eq. 12 with the chunked master gates
        torch.testing.assert_close(f, sig(z[..., :H]), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(g, f)
        return
    zf = z[..., H:2 * H] if code == "lstm" else z[..., :H]
    torch.testing.assert_close(f, sig(zf), rtol=1e-5, atol=1e-6)
    if code == "UR":
        r = sig(z[..., H:2 * H])
        torch.testing.assert_close(g, r * (1 - (1 - f) ** 2) + (1 - r) * f ** 2, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(g, f)


def test_unit_stats():
    s = unit_stats(torch.tensor([0.5, 0.95, 0.995, 0.999], dtype=torch.float64))
    assert s["above_0.9"] == 0.75 and s["above_0.99"] == 0.5 and s["max_timescale"] == pytest.approx(1000.0)


def test_runs_are_rebuilt_at_init_and_from_their_checkpoint(tmp_path):
    synthetic_job.main(["--run.dir", str(tmp_path / "copy"), "--name", "copy", "--lag", "3", "--hidden", "8",
                        "--batch_size", "4", "--eval_size", "8", "--steps", "3", "--save_every", "3",
                        "--lr", "0.05", "--variant", "UR", "--seed", "4"] + QUIET)
    res = analyse_run(tmp_path / "copy")
    assert (res["variant"], res["task"], res["step"]) == ("UR", "copy", 3)
    assert res["init"]["g"].shape == (8,) and not torch.allclose(res["init"]["f"], res["trained"]["f"])
    # "init" is the run's own initialisation: the seed-4 model before training
    from accelerate.utils import set_seed

    set_seed(4)
    cfg = synthetic_job.parse_config(synthetic_job.SyntheticJobConfig, ["--name", "copy", "--lag", "3", "--hidden",
                                                                        "8", "--batch_size", "4", "--seed", "4"])
    task = synthetic_job.build_task(cfg)
    model = synthetic_job.build_model(cfg, task)
    bias = model.rnn.bias_l0[:8]  # UGI draws: the same as the traced model's if the init is reproduced
    from urlstm_triton.tasks.gate_analysis import _build, _load_config

    rebuilt, _ = _build(*_load_config(tmp_path / "copy"), 4)
    assert torch.equal(rebuilt.rnn.bias_l0[:8], bias)

    data = _mnist_csv(tmp_path / "d.csv.gz")
    vision_job.main(["--run.dir", str(tmp_path / "img"), "--data.data", str(data), "--hidden", "6",
                     "--mlp_hidden", "8", "--batch_size", "4", "--eval_batch_size", "8", "--steps", "2",
                     "--variant", "lstm"] + QUIET)
    img = analyse_run(tmp_path / "img")
    assert img["task"] == "vision" and img["trained"]["f"].shape == (6,)

    out = tmp_path / "g.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gate_analysis.py"), str(tmp_path / "copy"),
                           str(tmp_path / "img"), "--out", str(out), "--json", str(tmp_path / "g.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG" and "UR step 3: trained g median" in proc.stdout
    rows = json.loads((tmp_path / "g.json").read_text())
    assert [r["variant"] for r in rows] == ["UR", "lstm"] and len(rows[0]["trained_g_units"]) == 8


def test_what_cannot_be_analysed_is_refused_by_name(tmp_path):
    with pytest.raises(GateAnalysisError, match="no config.json"):
        analyse_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"job": "lm", "config": {}}))
    with pytest.raises(GateAnalysisError, match="reads synthetic and vision runs"):
        analyse_run(tmp_path)
    synthetic_job.main(["--run.dir", str(tmp_path / "r"), "--name", "adding", "--length", "4", "--hidden", "4",
                        "--batch_size", "2", "--eval_size", "2", "--steps", "1", "--variant", "U-"] + QUIET)
    for d in (tmp_path / "r" / "checkpoints").iterdir():
        (d / "manifest.json").unlink()  # no complete checkpoint left
    with pytest.raises(GateAnalysisError, match="no complete checkpoint"):
        analyse_run(tmp_path / "r")
