"""The LM trainer end to end on a generated corpus: a tiny run, exact resume, two processes, the LSTM flag."""
import json

import pytest
import torch

from lm_helpers import (assert_same_state, checkpoints, ddp_launcher, load_ckpt, run_cli, run_inproc, tiny_args,
                        train_curve)
from urlstm_triton.training import TrainingInterrupted


def test_tiny_run_writes_checkpoints_summary_and_logs(tmp_path, corpus):
    run = tmp_path / "run"
    summary = run_inproc(tiny_args(run, tmp_path / "cache", corpus, "--run.tensorboard", "true"))
    assert summary["status"] == "completed" and summary["step"] == 8
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["step"] == 8 and on_disk["config_hash"] == summary["config_hash"]
    for split in ("valid", "test"):
        m = on_disk["eval"][split]
        assert {"loss", "ppl", "word_ppl", "bits_per_byte", "tokens"} <= set(m)
        assert m["ppl"] < 300 * 1.5  # about uniform over the vocabulary after 8 steps, and finite
    assert [p.name for p in checkpoints(run)] == [f"step-0000000{s}" for s in (2, 4, 6, 8)]
    assert (run / "tokenizer.model").exists() and (run / "config.json").exists()
    assert "step 8" in (run / "train.log").read_text()
    assert [r[0] for r in train_curve(run)] == list(range(1, 9))
    assert list((run / "tb").rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_resume_continues_at_the_next_step_with_identical_data_and_state(tmp_path, corpus, monkeypatch, caplog):
    cache = tmp_path / "cache"
    ref = tmp_path / "ref"
    run_inproc(tiny_args(ref, cache, corpus))
    run = tmp_path / "run"
    monkeypatch.setenv("URLSTM_FAULTS", "sigint@5")  # a real SIGINT to this process after step 5
    with pytest.raises(TrainingInterrupted) as e:
        run_inproc(tiny_args(run, cache, corpus))
    assert e.value.signum == 2 and e.value.checkpoint.endswith("step-00000005")
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.delenv("URLSTM_FAULTS")
    with caplog.at_level("INFO", logger="urlstm_triton.training"):
        run_inproc(tiny_args(run, cache, corpus, "--resume"))
    assert "continuing at step 6" in caplog.text
    assert train_curve(run) == train_curve(ref)
    assert_same_state(load_ckpt(checkpoints(run)[-1]), load_ckpt(checkpoints(ref)[-1]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"] == json.loads((ref / "summary.json").read_text())["eval"]


def test_two_process_cpu_run_gives_each_rank_its_own_contiguous_rows_and_resumes_exactly(tmp_path, corpus):
    def launch(run, *extra, env=None):
        argv = tiny_args(tmp_path / run, tmp_path / "cache", corpus, "--run.cpu", "true", "--train.steps", "6", *extra)
        return run_cli(argv, env, launcher=ddp_launcher(), timeout=180)

    res = launch("ref")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 processes)" in res.stderr
    last = checkpoints(tmp_path / "ref")[-1]
    r0 = torch.load(last / "rank000.pt", weights_only=False)["objective"]
    r1 = torch.load(last / "rank001.pt", weights_only=False)["objective"]
    assert tuple(r0["rows"]) == (0, 2) and tuple(r1["rows"]) == (2, 4)
    assert not torch.equal(r0["carry"][0][0], r1["carry"][0][0])  # each rank carried the state of its own text
    assert json.loads((last / "manifest.json").read_text())["world_size"] == 2
    from urlstm_triton.lm.sampling import load_run_model

    model, _, _ = load_run_model(tmp_path / "ref")  # a DDP run's weights load into the plain model (generate.py)
    assert torch.equal(model.rnn.weight_hh_l0, load_ckpt(last)["model"]["rnn.weight_hh_l0"])
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["units_seen"] == 4 * 8 * 6  # global batch x bptt x steps
    # SIGKILL both processes after step 3, resume: the same end state on every rank as the uninterrupted run
    killed = launch("run", env={"URLSTM_FAULTS": "kill@3:all"})
    assert killed.returncode != 0
    res = launch("run", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "continuing at step 3" in res.stderr
    assert train_curve(tmp_path / "run") == train_curve(tmp_path / "ref")
    a, b = checkpoints(tmp_path / "run")[-1], last
    assert_same_state(load_ckpt(a), load_ckpt(b))
    r1_resumed = torch.load(a / "rank001.pt", weights_only=False)
    r1_ref = torch.load(b / "rank001.pt", weights_only=False)
    assert torch.equal(r1_resumed["objective"]["carry"][0][1], r1_ref["objective"]["carry"][0][1])
    rng1 = [torch.load(d / "random_states_1.pkl", weights_only=False) for d in (a, b)]
    assert torch.equal(rng1[0]["torch_manual_seed"], rng1[1]["torch_manual_seed"])  # rank 1's own RNG, restored


def test_lstm_is_torch_nn_lstm_and_classic_the_urlstm_mode(tmp_path, corpus):
    run = tmp_path / "run"
    run_inproc(tiny_args(run, tmp_path / "cache", corpus, "--model.variant", "lstm", "--train.steps", "2"))
    sd = load_ckpt(checkpoints(run)[-1])["model"]
    assert "rnn.weight_ih_l0" in sd and "rnn.bias_ih_l0" in sd and "rnn.bias_hh_l0" in sd  # torch.nn.LSTM's names
    assert sd["rnn.weight_ih_l0"].shape == (4 * 24, 16)
    run = tmp_path / "classic"
    run_inproc(tiny_args(run, tmp_path / "cache", corpus, "--model.variant", "classic", "--train.steps", "2"))
    sd = load_ckpt(checkpoints(run)[-1])["model"]
    assert "rnn.bias_l0" in sd and sd["rnn.weight_ih_l0"].shape == (4 * 24, 16)  # URLSTM's fused bias


def test_gradient_accumulation_splits_the_rows_into_micro_batches(tmp_path, corpus):
    run = tmp_path / "run"
    summary = run_inproc(tiny_args(run, tmp_path / "cache", corpus, "--train.grad_accum", "2", "--train.steps", "2"))
    assert summary["units_seen"] == 2 * 4 * 8
    carry = torch.load(checkpoints(run)[-1] / "rank000.pt", weights_only=False)["objective"]["carry"]
    assert len(carry) == 2 and carry[0][0].shape == (1, 2, 24)  # (layers, rows per micro-batch, hidden)
