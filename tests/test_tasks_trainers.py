"""The validation-task trainers end to end (tiny runs on the CPU): summaries, checkpoints, exact resume, the
fixed permutation saved with the run, bad input refused before training, and the copy task actually learned."""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from urlstm_triton.tasks import synthetic_job, vision_job
from urlstm_triton.training import ConfigError, read_metrics

# one thread: these models are tiny, and on a shared 2-core machine a second thread mostly waits
QUIET = ["--run.progress", "false", "--run.tensorboard", "false", "--run.threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _synthetic(tmp_path, name, *args):
    return synthetic_job.main(["--run.dir", str(tmp_path / name)] + QUIET + list(args))


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval" not in r]


@pytest.mark.slow
def test_ur_lstm_learns_the_copy_task_at_lag_20(tmp_path):
    # the copy-tiny preset: lag 20, hidden 128, batch 32, Adam 1e-2, clip 1; ~0.97 at step 1000 from seed 0
    s = _synthetic(tmp_path, "copy", "--preset", "copy-tiny", "--variant", "UR", "--eval_every", "0",
                   "--save_every", "1000")
    assert s["step"] == 1000 and s["task"] == "copy" and s["variant"] == "UR"
    assert s["final"]["accuracy"] > 0.9, s["final"]


def test_synthetic_run_writes_summary_and_checkpoint_and_resumes_exactly(tmp_path):
    common = ["--preset", "adding-tiny", "--length", "12", "--hidden", "8", "--batch_size", "4", "--eval_size", "8",
              "--variant", "U-", "--save_every", "2", "--eval_every", "2", "--log_every", "1"]
    full = _synthetic(tmp_path, "full", *common, "--steps", "6")
    _synthetic(tmp_path, "cut", *common, "--steps", "4")
    resumed = _synthetic(tmp_path, "cut", *common, "--steps", "6", "--resume")
    assert resumed["step"] == 6 and resumed["status"] == "completed"
    assert (tmp_path / "cut" / "checkpoints" / "step-00000006" / "manifest.json").exists()
    # the resumed run saw exactly the batches of the uninterrupted one
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    assert resumed["final"]["mse"] == pytest.approx(full["final"]["mse"], rel=1e-6)
    on_disk = json.loads((tmp_path / "cut" / "summary.json").read_text())
    for key in ("config", "final", "best", "step", "wall_s", "train_sequences_per_s", "variant", "task"):
        assert key in on_disk
    assert on_disk["config"]["model"]["variant"] == "U-"
    assert set(on_disk["best"]) >= {"mse", "loss"} and on_disk["chance"]["mse"] == pytest.approx(1 / 6)


def test_synthetic_bad_options():
    with pytest.raises(ConfigError, match="unknown variant 'UX'"):
        synthetic_job.main(["--variant", "UX"])
    with pytest.raises(ConfigError, match="--task.name: invalid choice: 'cpy'"):
        synthetic_job.main(["--task.name", "cpy"])


def _mnist_csv(path, n=40, seed=0, bad_row=None):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        vals = list(rng.integers(0, 256, 784)) + [int(rng.integers(0, 10))]
        if i == bad_row:
            vals = vals[:-2]
        rows.append(",".join(map(str, vals)))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return path


def _vision(tmp_path, name, data, *args):
    return vision_job.main(["--run.dir", str(tmp_path / name), "--data.data", str(data), "--hidden", "6",
                            "--mlp_hidden", "8", "--batch_size", "4", "--eval_batch_size", "8"] + QUIET + list(args))


def test_vision_run_saves_the_permutation_and_resumes_exactly(tmp_path):
    data = _mnist_csv(tmp_path / "d.csv.gz")
    common = ["--task", "pmnist", "--permutation_seed", "3", "--save_every", "2", "--eval_every", "2",
              "--variant", "lstm", "--forget_bias", "1.0"]
    full = _vision(tmp_path, "full", data, *common, "--steps", "5", "--run.tensorboard", "true")
    # 40 images: 8 for testing, then 10% of the other 32 held out for validation
    assert (full["train_images"], full["valid_images"], full["test_images"]) == (29, 3, 8) and full["variant"] == "lstm"
    assert full["final"]["accuracy"] == full["best"]["accuracy"]["value"] or full["best"]["accuracy"]["step"] < 5
    n_events = len(list((tmp_path / "full" / "tb").rglob("events.out.tfevents*")))
    assert n_events
    perm = json.loads((tmp_path / "full" / "permutation.json").read_text())
    assert perm["seed"] == 3 and sorted(perm["permutation"]) == list(range(784))
    assert perm["permutation"] == vision_job.fixed_permutation(784, 3).tolist()
    _vision(tmp_path, "cut", data, *common, "--steps", "3")
    resumed = _vision(tmp_path, "cut", data, *common, "--steps", "5", "--resume")
    assert resumed["step"] == 5
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    # a run is bound to its permutation: resuming with another one is refused, starting over replaces it
    other = common[:2] + ["--permutation_seed", "4"] + common[4:]
    with pytest.raises(ConfigError, match="permutation"):
        _vision(tmp_path, "cut", data, *other, "--steps", "6", "--resume")
    _vision(tmp_path, "cut", data, *other, "--steps", "1", "--run.overwrite", "true")
    perm4 = json.loads((tmp_path / "cut" / "permutation.json").read_text())
    assert perm4["seed"] == 4 and perm4["permutation"] == vision_job.fixed_permutation(784, 4).tolist()
    # starting over also drops the old run's TensorBoard events, which would be drawn into the new curves
    _vision(tmp_path, "full", data, *common, "--steps", "1", "--run.tensorboard", "true", "--run.overwrite", "true")
    assert len(list((tmp_path / "full" / "tb").rglob("events.out.tfevents*"))) == n_events


def test_vision_epochs_set_the_step_count(tmp_path):
    data = _mnist_csv(tmp_path / "d.csv.gz")
    s = _vision(tmp_path, "ep", data, "--epochs", "0.5", "--save_every", "0", "--variant", "lstm")
    assert s["step"] == 4 and s["epochs"] == pytest.approx(16 / 29)  # 29 train images, batch 4: ceil(3.6) steps
    with pytest.raises(ConfigError, match="not both"):
        _vision(tmp_path, "ep2", data, "--epochs", "1", "--steps", "3")


def test_vision_real_mnist_5k_smoke(tmp_path, monkeypatch):
    from conftest import DATA

    if not (DATA / "mnist-5k" / "mnist_5k.csv.gz").exists():
        pytest.skip("no mnist-5k")
    # the preset's data/... path is found relative to the project root from any working directory
    monkeypatch.chdir(tmp_path)
    s = vision_job.main(["--preset", "smnist-tiny", "--steps", "2", "--max_test", "50", "--hidden", "4",
                         "--variant", "lstm", "--run.dir", str(tmp_path / "r")] + QUIET)
    assert (s["train_images"], s["valid_images"], s["test_images"]) == (3600, 400, 50) and s["task"] == "smnist"


@pytest.mark.parametrize("script, args, problem", [
    ("train/vision.py", ["--data.data", "BAD", "--steps", "1"], "line 3 has 783 columns, expected 785"),
    ("train/vision.py", ["--data.task", "mnist"], "--data.task: invalid choice: 'mnist'"),
    ("train/synthetic.py", ["--variant", "XX", "--steps", "1"], "unknown variant 'XX'"),
])
def test_scripts_refuse_bad_input_before_training(tmp_path, script, args, problem):
    bad = _mnist_csv(tmp_path / "bad.csv.gz", n=5, bad_row=2)
    args = [str(bad) if a == "BAD" else a for a in args]
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / script), "--run.dir", str(run_dir)] + args + QUIET,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr
    if "BAD" in args or script.endswith("vision.py") and "--data.data" in args:
        assert str(bad) in proc.stderr
    assert not (run_dir / "checkpoints").exists()


def test_vision_scifar_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cifar.npz", x_train=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
             y_train=rng.integers(0, 10, 12), x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 4))
    s = _vision(tmp_path, "c", tmp_path / "cifar.npz", "--task", "scifar", "--variant", "lstm", "--steps", "2")
    assert s["task"] == "scifar" and s["seq_len"] == 1024
    assert (s["train_images"], s["valid_images"], s["test_images"]) == (11, 1, 4)
    assert s["paper_ur_lstm_accuracy"] == 0.71 and (tmp_path / "c" / "checkpoints" / "step-00000002").is_dir()


def test_a_run_stopped_by_the_nonfinite_guard_still_says_what_it_was(tmp_path, monkeypatch):
    """The summary of a stopped run carries the task fields, so scripts/compare.py can list it."""
    from urlstm_triton.tasks.compare import load_run
    from urlstm_triton.training import NonFiniteError

    monkeypatch.setenv("URLSTM_FAULTS", "nan_loss@2")
    with pytest.raises(NonFiniteError):
        _synthetic(tmp_path, "nan", "--name", "adding", "--length", "6", "--hidden", "4", "--batch_size", "2",
                   "--eval_size", "2", "--steps", "4", "--save_every", "1", "--variant", "U-")
    run = load_run(tmp_path / "nan" / "summary.json")
    assert run["status"] == "stopped: non-finite" and run["task"] == "adding" and run["variant"] == "U-"
    assert run["step"] == 1 and run["final"] == {}


def test_a_full_disk_is_the_error_reported_even_when_the_summary_cannot_be_completed(tmp_path, monkeypatch, caplog):
    from urlstm_triton.errors import StorageError
    from urlstm_triton.tasks import run_summary

    def no_space(path, summary):
        raise StorageError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(run_summary, "write_summary", no_space)
    monkeypatch.setenv("URLSTM_FAULTS", "enospc@2")
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*step-00000002: No space left on device"):
        _synthetic(tmp_path, "full", "--name", "adding", "--length", "6", "--hidden", "4", "--batch_size", "2",
                   "--eval_size", "2", "--steps", "4", "--save_every", "1", "--variant", "U-")
    assert "summary.json: No space left on device (the summary of this failed run is not completed)" in caplog.text
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())  # the trainer's own, still written
    assert summary["status"] == "failed: StorageError" and summary["step"] == 2
