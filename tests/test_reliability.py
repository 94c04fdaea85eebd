"""Fault injection on the training machinery (issue 8): SIGKILL at random steps and half-way through a save,
truncated and corrupt checkpoints, NaN losses under each policy, SIGTERM/SIGINT, bad configs and data.

The guarantee checked by the kill tests: a run killed any number of times and resumed with ``--resume`` ends
with bitwise the same parameters, optimiser state, schedule, carried state, RNG and loss curve as a run that was
never interrupted (CPU, reference backend).
"""
import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from lm_helpers import (LM_SCRIPT, ROOT, assert_same_state, checkpoints, load_ckpt, run_cli, run_inproc,
                        steps_args, train_curve)
from urlstm_triton.training import ConfigError, DataError, IncompatibleCheckpoint, NonFiniteError

STEPS = 12


args = steps_args(STEPS)


def test_sigkill_at_random_steps_and_during_a_save_then_resume_equals_the_uninterrupted_run(tmp_path, corpus):
    ref = run_cli(args(tmp_path, corpus, "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    rng = random.Random(1234)
    k1 = rng.randint(1, 5)                          # SIGKILL right after step k1
    s2 = rng.choice([s for s in range(k1 + 1, 9) if s % 2 == 0])  # SIGKILL half-way through saving step s2
    k3 = rng.randint(s2, STEPS - 1)                 # SIGKILL again after step k3
    run = tmp_path / "run"
    chain = [("kill", k1), ("kill_in_save", s2), ("kill", k3)]
    for i, (kind, step) in enumerate(chain):
        extra = ["--resume"] if i else []
        res = run_cli(args(tmp_path, corpus, "run", *extra), {"URLSTM_FAULTS": f"{kind}@{step}"})
        assert res.returncode == -signal.SIGKILL, f"{kind}@{step}: rc {res.returncode}\n{res.stderr[-2000:]}"
        if kind == "kill_in_save":
            half = run / "checkpoints" / f".tmp-step-{step:08d}"
            assert half.is_dir() and not (half / "manifest.json").exists()  # left half-written, never renamed
            assert not (run / "checkpoints" / f"step-{step:08d}").exists()
    final = run_cli(args(tmp_path, corpus, "run", "--resume"))
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"continuing at step {k3 - k3 % 2 + 1}" in final.stderr
    assert train_curve(tmp_path / "run") == train_curve(tmp_path / "ref")
    assert_same_state(load_ckpt(checkpoints(run)[-1]), load_ckpt(checkpoints(tmp_path / "ref")[-1]))
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the next save cleaned up the half-written one


def test_truncated_and_corrupt_checkpoints_are_reported_and_skipped(tmp_path, corpus, caplog):
    ref = tmp_path / "ref"
    run_inproc(args(tmp_path, corpus, "ref", "--train.steps", "8"))
    expected = load_ckpt(checkpoints(ref)[-1])
    d6, d8 = checkpoints(ref)[-2:]
    with open(d8 / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    blob = bytearray((d6 / "optimizer.bin").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (d6 / "optimizer.bin").write_bytes(bytes(blob))
    with caplog.at_level("WARNING"):
        run_inproc(args(tmp_path, corpus, "ref", "--train.steps", "8", "--resume"))
    assert f"{d8}: file model.safetensors is truncated" in caplog.text
    assert f"{d6}: file optimizer.bin is corrupt" in caplog.text
    assert "continuing at step 5" in (ref / "train.log").read_text()
    assert_same_state(load_ckpt(checkpoints(ref)[-1]), expected)


def test_nan_loss_skip_policy_counts_and_continues(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("URLSTM_FAULTS", "nan_loss@3")
    summary = run_inproc(args(tmp_path, corpus, "run", "--train.nonfinite", "skip", "--train.steps", "5"))
    assert summary["status"] == "completed" and summary["skipped_steps"] == 1
    curve = {r[0]: r for r in train_curve(tmp_path / "run")}
    assert curve[3][4] is True and curve[3][1] != curve[3][1]  # skipped, loss NaN
    assert curve[3][3] == curve[2][3]  # no scheduler step on the skipped step
    assert not any(curve[s][4] for s in (1, 2, 4, 5))
    sd = load_ckpt(checkpoints(tmp_path / "run")[-1])["model"]
    assert all(torch.isfinite(v).all() for v in sd.values())
    assert "step 3: non-finite" in (tmp_path / "run" / "train.log").read_text()


def test_nan_loss_skip_policy_stops_after_the_limit(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("URLSTM_FAULTS", "nan_loss@3,nan_loss@4,nan_loss@5")
    with pytest.raises(NonFiniteError, match=r"at step 5: 3 steps skipped, more than train.max_nonfinite_skips=2"):
        run_inproc(args(tmp_path, corpus, "run", "--train.nonfinite", "skip", "--train.max_nonfinite_skips", "2"))


def test_nan_loss_stop_policy_names_the_step_and_the_last_good_checkpoint(tmp_path, corpus):
    res = run_cli(args(tmp_path, corpus, "run", "--train.nonfinite", "stop"), {"URLSTM_FAULTS": "nan_loss@5"})
    assert res.returncode == 3, res.stderr[-2000:]
    assert re.search(r"error: non-finite loss = nan( and gradient norm = nan)? at step 5 ", res.stderr)
    assert "last good checkpoint: " in res.stderr and "step-00000004 (resume with --resume)" in res.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped: non-finite" and summary["step"] == 4


def test_sigterm_from_outside_saves_a_checkpoint_then_exits(tmp_path, corpus):
    run = tmp_path / "run"
    argv = args(tmp_path, corpus, "run", "--train.steps", "100000", "--train.save_every", "0")
    proc = subprocess.Popen([sys.executable, str(LM_SCRIPT), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None, proc.communicate()[1][-2000:]  # died before training started
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] >= 3
    assert "stopped by SIGTERM; checkpoint saved at" in err
    assert [p.name for p in checkpoints(run)] == [f"step-{summary['step']:08d}"]  # save_every=0: only this one


# ---------------------------------------------------------------------------------------- bad config and data
def test_unknown_key_on_the_command_line_exits_2_naming_it(tmp_path, corpus):
    res = run_cli(args(tmp_path, corpus, "run", "--model.hiden", "3"))
    assert res.returncode == 2
    assert "error: unknown config key --model.hiden; did you mean --model.hidden?" in res.stderr
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_no_network_says_how_to_use_local_files(tmp_path):
    res = run_cli(["--preset", "wt103", "--run.dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path)],
                  {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2
    assert "could not load the Hugging Face dataset Salesforce/wikitext (wikitext-103-raw-v1)" in res.stderr
    assert "--data.source files --data.files train=" in res.stderr


def test_batch_too_large_for_the_corpus(tmp_path, corpus):
    with pytest.raises(ConfigError, match=r"too few for data.batch_size=4096 rows"):
        run_inproc(args(tmp_path, corpus, "run", "--data.batch_size", "4096"))


def test_empty_training_file(tmp_path, corpus):
    corpus["train"].write_text("")
    with pytest.raises(DataError, match=r"the train split of .*train.txt.* is empty"):
        run_inproc(args(tmp_path, corpus, "run"))


def test_checkpoint_from_an_incompatible_config_is_refused(tmp_path, corpus):
    run_inproc(args(tmp_path, corpus, "run", "--train.steps", "2"))
    with pytest.raises(IncompatibleCheckpoint, match=r"model.hidden: checkpoint 24, now 32"):
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4", "--model.hidden", "32", "--resume"))
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume"):
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4"))
    # resume_safe fields may change: more steps continue the same run
    summary = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4", "--resume"))
    assert summary["step"] == 4


def test_resume_from_an_explicit_checkpoint_and_a_corrupt_one(tmp_path, corpus):
    run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6"))
    four = tmp_path / "run" / "checkpoints" / "step-00000004"
    summary = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6", "--run.resume_from", str(four)))
    assert summary["step"] == 6 and "resumed from " + str(four) in (tmp_path / "run" / "train.log").read_text()
    (four / "custom_checkpoint_1.pkl").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"--run.resume_from: checkpoint .*step-00000004: file "
                                          r"custom_checkpoint_1.pkl is truncated"):
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6", "--run.resume_from", str(four)))


def test_an_unexpected_crash_is_recorded_and_the_checkpoints_stay_usable(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("URLSTM_FAULTS", "error@5")
    with pytest.raises(RuntimeError, match="injected fault: error@5"):
        run_inproc(args(tmp_path, corpus, "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed: RuntimeError" and summary["step"] == 5
    monkeypatch.delenv("URLSTM_FAULTS")
    assert run_inproc(args(tmp_path, corpus, "run", "--resume"))["status"] == "completed"
