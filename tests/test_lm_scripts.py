"""scripts/generate.py, scripts/plot_runs.py and scripts/bench_lm_throughput.py on a tiny trained run."""
import importlib.util
import json

import pytest

from lm_helpers import ROOT, make_corpus, run_inproc, tiny_args


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmrun")
    corpus = make_corpus(tmp / "text")
    run = tmp / "run"
    run_inproc(tiny_args(run, tmp / "cache", corpus, "--train.steps", "4", "--train.eval_every", "2",
                         "--run.tensorboard", "true", "--run.log_every", "1"))
    return run


def test_generate_samples_text_from_the_newest_checkpoint(trained_run, capsys):
    load_script("generate").main(["--run", str(trained_run), "--prompt", "abc", "--tokens", "12", "--seed", "1"])
    out = capsys.readouterr()
    assert out.out.startswith("abc") and len(out.out) > 4
    assert "step-00000004" in out.err
    with pytest.raises(SystemExit) as e:
        load_script("generate").main(["--run", str(trained_run / "nope")])
    assert e.value.code == 2


def test_plot_runs_from_metrics_tensorboard_and_summary(trained_run, tmp_path, capsys):
    out = tmp_path / "c.png"
    load_script("plot_runs").main([f"a={trained_run}", f"b={trained_run / 'tb'}",
                                   f"c={trained_run / 'summary.json'}", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "train/loss, valid/loss, valid/ppl, test/ppl for a, b, c" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    from urlstm_triton.training.plots import load_curves

    curves = load_curves(trained_run)
    assert [s for s, _ in curves["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in curves["valid/loss"]] == [2, 4]
    tb = load_curves(trained_run / "tb")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4]
    assert tb["train/loss"][0][1] == pytest.approx(curves["train/loss"][0][1], rel=1e-6)


def test_throughput_bench_runs_both_models_side_by_side(tmp_path, capsys):
    out = tmp_path / "b.json"
    results = load_script("bench_lm_throughput").main(
        ["--small", "--steps", "1", "--warmup", "0", "--hidden", "16", "--embed", "8", "--bptt", "4", "--vocab",
         "50", "--backend", "reference", "--json", str(out)])
    assert [(r["rnn"], r["backend"]) for r in results] == [("urlstm", "reference"), ("lstm", "aten")]
    assert all(r["tokens_per_s"] > 0 for r in results)
    assert json.loads(out.read_text())["shape"]["hidden"] == 16
    assert "of nn.LSTM" in capsys.readouterr().out
