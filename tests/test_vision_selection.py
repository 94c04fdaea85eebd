"""Vision jobs select on a seeded validation split and evaluate the test split once, with the selected weights."""
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from test_tasks_trainers import QUIET, _mnist_csv
from urlstm_triton.tasks import vision_job
from urlstm_triton.tasks.vision import ImageSet, PixelSequences
from urlstm_triton.training import ConfigError, parse_config
from urlstm_triton.training.records import read_metrics


class _Constant(nn.Module):
    """Predicts the class its bias favours, whatever the image."""

    def __init__(self, label):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(10))
        with torch.no_grad():
            self.bias[label] = 1.0

    def forward(self, x):
        return self.bias.expand(x.shape[0], 10)


def _pixels(labels):
    return PixelSequences(ImageSet(torch.zeros(len(labels), 784, 1, dtype=torch.uint8).numpy(),
                                   torch.tensor(labels).numpy()))


def test_test_split_is_evaluated_with_the_weights_selected_on_validation():
    session = SimpleNamespace(accelerator=SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu")))
    valid, test = _pixels([3, 3, 3, 1]), _pixels([3, 1, 1, 1])
    task = vision_job.VisionObjective(_pixels([0]), valid, test, 1, 2, 0, session)
    model = _Constant(3)  # valid accuracy 0.75 at step 1
    task.train_batches(1, 1)
    assert task.evaluate(model, "valid")["accuracy"] == 0.75
    with torch.no_grad():
        model.bias.copy_(_Constant(1).bias)  # valid accuracy 0.25 at step 2: worse, not selected
    task.train_batches(2, 1)
    assert task.evaluate(model, "valid")["accuracy"] == 0.25
    assert task.best["step"] == 1 and task.best["metrics"]["accuracy"] == 0.75
    # the last weights would score 0.75 on test; the selected ones (class 3) score 0.25
    assert task.evaluate(model, "test")["accuracy"] == 0.25
    assert torch.equal(model.bias, _Constant(1).bias)  # the caller's model is left as it was
    # the selection travels in the task's checkpoint state
    other = vision_job.VisionObjective(_pixels([0]), valid, test, 1, 2, 0, session)
    other.load_state_dict(task.state_dict())
    assert other.evaluate(model, "test")["accuracy"] == 0.25


def test_vision_run_selects_on_valid_and_resumes_with_its_selection(tmp_path):
    data = _mnist_csv(tmp_path / "d.csv.gz")
    common = ["--data.data", str(data), "--hidden", "6", "--mlp_hidden", "8", "--batch_size", "4",
              "--eval_batch_size", "8", "--variant", "UR", "--eval_every", "1", "--save_every", "2", "--lr", "0.05",
              "--valid_fraction", "0.25", "--valid_seed", "5"] + QUIET
    full = vision_job.main(["--run.dir", str(tmp_path / "full"), "--steps", "6"] + common)
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    valid = [r for r in rows if r.get("eval") == "valid"]
    tests = [r for r in rows if r.get("eval") == "test"]
    assert [r["step"] for r in valid] == [1, 2, 3, 4, 5, 6] and len(tests) == 1  # test seen once, at the end
    best = max(valid, key=lambda r: (r["accuracy"], -r["loss"]))
    assert full["selected"]["step"] == best["step"] and full["selected"]["valid"]["accuracy"] == best["accuracy"]
    assert full["test"] == {k: v for k, v in tests[0].items() if k not in ("step", "eval")}
    assert full["eval_split"] == "valid" and full["final"]["accuracy"] == valid[-1]["accuracy"]
    assert (full["train_images"], full["valid_images"], full["test_images"]) == (24, 8, 8)
    # cut at step 3 and resumed: the same selection and the same test metrics
    vision_job.main(["--run.dir", str(tmp_path / "cut"), "--steps", "3"] + common)
    resumed = vision_job.main(["--run.dir", str(tmp_path / "cut"), "--steps", "6", "--resume"] + common)
    assert resumed["selected"] == full["selected"] and resumed["test"] == pytest.approx(full["test"])
    # another valid_seed holds out other images (the split is seeded, not the first N)
    saved = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert saved["selected"]["step"] == full["selected"]["step"]
    tr, va, _ = vision_job.load_data(parse_config(
        vision_job.VisionJobConfig, ["--data.data", str(data), "--valid_seed", "6"]))
    tr5, va5, _ = vision_job.load_data(parse_config(
        vision_job.VisionJobConfig, ["--data.data", str(data), "--valid_seed", "5"]))
    assert len(va) == len(va5) and not (va.images == va5.images).all()


@pytest.mark.parametrize("bad", ["0", "1", "1.5"])
def test_valid_fraction_must_be_a_share(bad):
    with pytest.raises(ConfigError, match="data.valid_fraction must be in"):
        parse_config(vision_job.VisionJobConfig, ["--valid_fraction", bad])
