"""Issue 14's failures, end to end on the LM trainer: a second job in a live run directory, a killed launcher,
unusable checkpoints under --resume, retention, a full disk, one-line errors for bad files and settings, the
metrics log of a resumed or re-evaluated run, and config gaps on resume. (Config errors in detail:
test_training_config.py; checkpoint and metrics files: test_training_checkpoint.py, test_training_records.py;
the lock itself: test_runlock.py.)"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lm_helpers import (LM_SCRIPT, ROOT, assert_same_state, checkpoints, ddp_launcher, load_ckpt, run_cli, run_inproc,
                        steps_args, train_curve)

from urlstm_triton.errors import RunDirectoryInUse, StorageError
from urlstm_triton.training import ConfigError, read_metrics
from urlstm_triton.training.runlock import OWNER_FILE

STEPS = 8


args = steps_args(STEPS)


def start(argv, launcher=None, env_extra=None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("URLSTM_FAULTS", None)
    env.update(env_extra or {})
    return subprocess.Popen((launcher or [sys.executable]) + [str(LM_SCRIPT)] + list(argv), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_steps(proc, run: Path, n: int, timeout: float = 120) -> None:
    metrics = run / "metrics.jsonl"
    deadline = time.time() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()[1][-3000:]  # died before training
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)


def owner_pid(run: Path) -> int:
    return int(next(line for line in (run / OWNER_FILE).read_text().splitlines() if line.startswith("pid="))[4:])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")  # an orphan's zombie counts: it has exited


def one_error_line(res, needle: str) -> None:
    """Exit status 2 and one line naming the problem, no traceback."""
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, last


# ---------------------------------------------------------------------------------------- one job per directory
def test_a_second_job_in_a_live_run_directory_stops_at_once_naming_the_owner(tmp_path, corpus):
    run = tmp_path / "run"
    live = start(args(tmp_path, corpus, "run", "--train.steps", "100000", "--train.save_every", "3",
                      "--train.keep_checkpoints", "100000", "--run.tensorboard", "true"))
    try:
        wait_for_steps(live, run, 4)
        before = {p.name for p in checkpoints(run)} | {p.name for p in (run / "tb").rglob("*")}
        config = (run / "config.json").read_text()
        for extra in (["--run.overwrite", "true", "--train.lr", "0.0123"], ["--resume"], []):
            res = run_cli(args(tmp_path, corpus, "run", *extra))
            one_error_line(res, f"run directory {run} is in use by pid {live.pid} on host ")
        assert before <= {p.name for p in checkpoints(run)} | {p.name for p in (run / "tb").rglob("*")}
        assert (run / "config.json").read_text() == config  # nothing of the refused jobs (lr 0.0123)
        assert "0.0123" not in (run / "train.log").read_text() and owner_pid(run) == live.pid
    finally:
        live.send_signal(signal.SIGTERM)
        out, err = live.communicate(timeout=120)
    assert live.returncode == 128 + signal.SIGTERM, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["config"]["train"]["lr"] == 0.003
    assert [r[0] for r in train_curve(run)] == list(range(1, summary["step"] + 1))  # one run's curve, whole
    assert not (run / OWNER_FILE).exists()  # released at the end


def _accelerate_relays_stderr() -> bool:
    """accelerate >= 1.16's single-process launcher reads its child's stderr through a pipe and writes it on (so a
    dead launcher leaves the trainer's stderr without a reader), and on SIGTERM terminates its child."""
    import accelerate
    from packaging.version import Version

    return Version(accelerate.__version__) >= Version("1.16")


def stop_a_launched_run(tmp_path, corpus, stop) -> tuple:
    """Start the LM trainer under a one-process `accelerate launch`, let it train 3 steps, call ``stop(launcher,
    trainer)`` and wait until both are gone: ``(launcher pid, stderr, run directory, summary)``."""
    run = tmp_path / "run"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = start(args(tmp_path, corpus, "run", "--train.steps", "100000", "--train.save_every", "0"), launcher)
    wait_for_steps(proc, run, 3)
    trainer = owner_pid(run)
    assert trainer != proc.pid  # the launcher's child owns the run
    stop(proc.pid, trainer)
    _, err = proc.communicate(timeout=120)  # returns when the trainer, which holds the pipes too, has exited
    deadline = time.time() + 30
    while not gone(trainer):
        assert time.time() < deadline, "the trainer runs on after its launcher was stopped"
        time.sleep(0.2)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted", err[-3000:]
    assert [p.name for p in checkpoints(run)] == [f"step-{summary['step']:08d}"]  # one checkpoint, the last step
    assert not (run / OWNER_FILE).exists()
    return proc.pid, err, run, summary


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_when_the_launcher_dies_the_trainer_saves_and_exits(tmp_path, corpus, sig):
    """A killed `accelerate launch` passes no signal on to its training process (SIGKILL; SIGTERM before accelerate
    1.16, which forwards SIGTERM): the trainer watches its launcher instead. Either way one checkpoint is saved
    and the run says why, in summary.json and in train.log (stderr has no reader left once a launcher that
    relays it is dead)."""
    launcher, err, run, summary = stop_a_launched_run(tmp_path, corpus, lambda pid, trainer: os.kill(pid, sig))
    relays = _accelerate_relays_stderr()
    cause = ("stopped by SIGTERM" if relays and sig == signal.SIGTERM
             else f"stopped because the launcher (pid {launcher}) died")
    assert summary["reason"].startswith(f"{cause}; checkpoint saved"), summary["reason"]
    assert cause in (run / "train.log").read_text()
    if not relays or sig == signal.SIGTERM:  # stderr still has a reader: the message is there too
        assert cause in err, err[-3000:]


def test_ctrl_c_under_the_launcher_saves_and_exits(tmp_path, corpus):
    """Ctrl-C: SIGINT to the launcher's whole process group (the launcher and its training process). accelerate
    >= 1.16 then terminates the trainer as well, which must not turn the stop into an abort without a checkpoint."""
    # the launcher leads its own session (start_new_session), as a shell's job does
    _, err, _, summary = stop_a_launched_run(tmp_path, corpus, lambda pid, trainer: os.killpg(pid, signal.SIGINT))
    assert summary["reason"].startswith("stopped by SIGINT; checkpoint saved"), summary["reason"]
    assert "stopped by SIGINT" in err and "aborting without a checkpoint" not in err, err[-3000:]


def test_two_processes_one_owner_and_sigterm_to_their_launcher_stops_both_gracefully(tmp_path, corpus):
    run = tmp_path / "run"
    argv = args(tmp_path, corpus, "run", "--run.cpu", "true", "--train.steps", "100000", "--train.save_every", "0")
    live = start(argv, ddp_launcher())
    try:
        wait_for_steps(live, run, 3, timeout=180)
        owner = owner_pid(run)
        env = dict(line.split("=", 1) for line in Path(f"/proc/{owner}/environ").read_text().split("\0") if "=" in line)
        assert env["RANK"] == "0"  # the main process holds the directory; rank 1 takes no lock
        second = run_cli(argv, launcher=ddp_launcher(), timeout=180)
        assert second.returncode != 0
        # both ranks of the second job stop at once with the line (the launcher then adds its own report)
        assert second.stderr.count(f"error: run directory {run} is in use by pid {owner} on host ") == 2
    finally:
        live.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
        out, err = live.communicate(timeout=180)
    assert err.count("stopped by SIGTERM; checkpoint saved at") == 2, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    (last,) = checkpoints(run)
    assert last.name == f"step-{summary['step']:08d}" and (last / "rank001.pt").exists()
    assert not (run / OWNER_FILE).exists()


def test_a_restart_after_sigkill_takes_over_the_dead_jobs_directory(tmp_path, corpus):
    killed = run_cli(args(tmp_path, corpus, "run"), {"URLSTM_FAULTS": "kill@3"})
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / OWNER_FILE).exists()  # what a SIGKILL leaves behind
    res = run_cli(args(tmp_path, corpus, "run", "--resume"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "took over from pid " in res.stderr and "which is no longer running" in res.stderr
    assert "continuing at step 3" in res.stderr


def test_a_job_that_lost_its_directory_stops_without_writing(tmp_path, corpus, monkeypatch):
    from urlstm_triton.training.session import RunSession

    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    monkeypatch.setattr(RunSession, "ownership_lost", property(
        lambda self: "the lease was lost (owner-changed)" if len(metrics.read_text().splitlines()) >= 3 else ""))
    with pytest.raises(RunDirectoryInUse, match=r"was taken over by another job \(the lease was lost "
                                                r"\(owner-changed\)\): this job stops at step 4 without writing"):
        run_inproc(args(tmp_path, corpus, "run"))
    assert not (run / "summary.json").exists() and [p.name for p in checkpoints(run)] == ["step-00000002"]
    assert len(metrics.read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------- resume and retention
def test_resume_with_only_unusable_checkpoints_stops_listing_them(tmp_path, corpus, caplog):
    run = tmp_path / "run"
    first = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6"))
    curve = train_curve(run)
    for d in checkpoints(run):
        with open(d / "model.safetensors", "r+b") as fh:
            fh.truncate(50)
    (checkpoints(run)[0] / "manifest.json").write_text('{"files": []}')
    with pytest.raises(ConfigError) as e:
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6", "--resume"))
    msg = str(e.value)
    assert msg.startswith(f"--resume: none of the 3 checkpoint(s) in {run / 'checkpoints'} is usable: ")
    for step in (6, 4):
        assert f"step-0000000{step}: file model.safetensors is truncated or resized (50 bytes" in msg
    assert "step-00000002: malformed manifest.json ('format' is missing" in msg
    assert "--run.overwrite true (deletes them)" in msg and len(checkpoints(run)) == 3  # nothing deleted
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        again = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6", "--resume", "--run.overwrite", "true"))
    assert "none of the 3 checkpoint(s)" in caplog.text and "starting again from scratch" in caplog.text
    assert train_curve(run) == curve and again["eval"] == first["eval"]  # a fresh run, the same as the first
    assert [p.name for p in checkpoints(run)] == ["step-00000002", "step-00000004", "step-00000006"]


def test_retention_keeps_the_checkpoint_a_resume_fell_back_to(tmp_path, corpus):
    """keep=2 and the two newest corrupt: the resumed run must not delete what it just wrote (issue 14 item 2)."""
    run = tmp_path / "run"
    run_inproc(args(tmp_path, corpus, "run", "--train.keep_checkpoints", "3", "--train.steps", "6"))
    d2, d4, d6 = checkpoints(run)
    for d in (d4, d6):
        (d / "optimizer.bin").write_bytes(b"flipped")
    summary = run_inproc(args(tmp_path, corpus, "run", "--train.keep_checkpoints", "2", "--train.steps", "8",
                              "--resume"))
    assert summary["step"] == 8
    assert [p.name for p in checkpoints(run)] == ["step-00000006", "step-00000008"]
    assert all(CheckpointManagerVerify(p) for p in checkpoints(run))


def CheckpointManagerVerify(path):  # noqa: N802 - reads as the call it wraps
    from urlstm_triton.training import CheckpointManager

    return CheckpointManager.verify(path)["step"] > 0


def test_resume_gaps_steps_below_the_checkpoint_a_missing_path_a_file_for_a_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4"))
    with pytest.raises(ConfigError, match=r"--train.steps 2 is below the step of checkpoint .*step-00000004 \(4\): "
                                          r"give --train.steps 4 or more"):
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "2", "--resume"))
    with pytest.raises(ConfigError, match=rf"--run.resume_from: checkpoint {tmp_path}/nowhere does not exist"):
        run_inproc(args(tmp_path, corpus, "run", "--run.resume_from", str(tmp_path / "nowhere")))
    (run / "checkpoints" / "step-00000006").write_text("")
    with pytest.raises(ConfigError, match=r"step-00000006 is not a checkpoint directory \(a file where one goes\)"):
        run_inproc(args(tmp_path, corpus, "run", "--train.steps", "6", "--resume"))
    assert max(r[0] for r in train_curve(run)) == 4  # refused before training


def test_a_finished_run_resumed_evaluates_once_per_split_and_step(tmp_path, corpus):
    run = tmp_path / "run"
    first = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4"))
    again = run_inproc(args(tmp_path, corpus, "run", "--train.steps", "4", "--resume"))
    assert again["eval"] == first["eval"] and again["step"] == 4
    evals = [(r["step"], r["eval"]) for r in read_metrics(run / "metrics.jsonl") if "eval" in r]
    assert evals == [(4, "valid"), (4, "test")]


# ---------------------------------------------------------------------------------------- a full disk
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tmp_path, corpus):
    ref = run_cli(args(tmp_path, corpus, "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "run"
    res = run_cli(args(tmp_path, corpus, "run"), {"URLSTM_FAULTS": "enospc@4"})
    one_error_line(res, f"cannot write checkpoint {run}/checkpoints/step-00000004: No space left on device")
    assert f"the last good checkpoint is kept: {run}/checkpoints/step-00000002" in res.stderr
    assert [p.name for p in checkpoints(run)] == ["step-00000002"]
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers  # no .tmp-step-*, no .summary.json.tmp*
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed: StorageError" and summary["step"] == 4
    assert "No space left on device" in summary["reason"]
    res = run_cli(args(tmp_path, corpus, "run", "--resume"))  # space freed: continue from step 2, exactly
    assert res.returncode == 0, res.stderr[-3000:]
    assert "continuing at step 3" in res.stderr and train_curve(run) == train_curve(tmp_path / "ref")
    assert_same_state(load_ckpt(checkpoints(run)[-1]), load_ckpt(checkpoints(tmp_path / "ref")[-1]))


def test_when_the_summary_cannot_be_written_either_the_first_error_is_the_one_reported(tmp_path, corpus,
                                                                                       monkeypatch, caplog):
    from urlstm_triton.training import trainer

    def no_space(path, summary):
        raise StorageError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(trainer, "write_summary", no_space)
    monkeypatch.setenv("URLSTM_FAULTS", "enospc@2")
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*step-00000002"):
        run_inproc(args(tmp_path, corpus, "run"))
    assert "summary.json: No space left on device (the summary of this failed run is lost)" in caplog.text


def test_a_metrics_log_that_cannot_be_written_stops_the_run_at_the_next_step(tmp_path, corpus, monkeypatch):
    from urlstm_triton.training.records import MetricsLog

    plain = MetricsLog.write

    def full_after_three(self, row):
        if row["step"] == 3 and "eval" not in row:
            self.error = StorageError(f"cannot write {self.path}: No space left on device")
        plain(self, row)

    monkeypatch.setattr(MetricsLog, "write", full_after_three)
    with pytest.raises(StorageError, match=r"metrics.jsonl: No space left on device"):
        run_inproc(args(tmp_path, corpus, "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed: StorageError" and summary["step"] == 3  # seen in step 4's collective


# ---------------------------------------------------------------------------------------- one-line errors
def _parquet(path, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column}), path)
    return path


@pytest.mark.parametrize("case", ["yaml", "not_parquet", "int_parquet", "run_dir_file", "faults", "ddp_batch"])
def test_bad_files_and_settings_are_one_line_with_exit_status_2(tmp_path, corpus, case):
    run = tmp_path / "run"
    extra, env = [], {}
    if case == "yaml":
        (tmp_path / "c.yaml").write_text("train:\n  lr: [1\n")
        extra, needle = ["--config", str(tmp_path / "c.yaml")], "c.yaml is not valid YAML at line 3, column 1"
    elif case == "not_parquet":
        (tmp_path / "train.parquet").write_text("plain text\n")
        extra = ["--data.files", f"train={tmp_path / 'train.parquet'}"]
        needle = f"{tmp_path / 'train.parquet'}: not a readable parquet file"
    elif case == "int_parquet":
        _parquet(tmp_path / "train.parquet", list(range(300)))
        extra = ["--data.files", f"train={tmp_path / 'train.parquet'}"]
        needle = f"{tmp_path / 'train.parquet'}: column 'text' holds int64, not text"
    elif case == "run_dir_file":
        run.write_text("")
        needle = f"run.dir {run} exists and is not a directory"
    elif case == "faults":
        env, needle = {"URLSTM_FAULTS": "kill@x"}, "URLSTM_FAULTS: bad entry 'kill@x'"
    else:  # as under `accelerate launch --num_processes 3`: stops before any data work
        env, needle = {"WORLD_SIZE": "3"}, "data.batch_size=4 must be divisible by processes x train.grad_accum = 3"
    res = run_cli(args(tmp_path, corpus, "run", *extra), env)
    one_error_line(res, needle)
    if run.is_dir():
        assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name == OWNER_FILE]
    if case in ("yaml", "faults", "ddp_batch"):
        assert not run.exists()  # refused before anything was written
