"""Checkpoint manager, schedule, guard and fault parsing, without a training run."""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from urlstm_triton.training import (CheckpointManager, CorruptCheckpoint, Faults, IncompatibleCheckpoint,
                                    NonFiniteError, NonFiniteGuard, lr_factor)


class Counter:
    """A stand-in for the trainer's registered state (guard counters, progress)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class Setup:
    """An accelerator with a prepared model and optimiser and a registered object, and a manager over it."""

    def __init__(self, tmp_path, keep=3, hashed=None):
        self.acc = Accelerator(cpu=True)
        model = torch.nn.Linear(3, 2)
        self.model, self.opt = self.acc.prepare(model, torch.optim.Adam(model.parameters()))
        self.counter = Counter()
        self.acc.register_for_checkpointing(self.counter)
        hashed = hashed or {"model.hidden": 8}
        digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]
        self.m = CheckpointManager(tmp_path / "ck", self.acc, keep, digest, hashed)

    def save(self, step):
        with torch.no_grad():
            self.model.weight.fill_(float(step))
        self.counter.value = step
        return self.m.save(step, {"pos": step})


def test_save_writes_accelerate_state_with_a_manifest_and_keeps_the_newest(tmp_path):
    s = Setup(tmp_path, keep=2)
    for step in (1, 2, 3):
        s.save(step)
    saved_rng = torch.get_rng_state()
    m = s.m
    assert [p.name for p in m.list_step_dirs()] == ["step-00000002", "step-00000003"]
    manifest = m.verify(m.list_step_dirs()[-1])
    assert manifest["step"] == 3 and manifest["format"] == 2
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
            "rank000.pt"} <= set(manifest["files"])
    torch.manual_seed(123)  # changed after the save: loading brings the saved RNG state back
    with torch.no_grad():
        s.model.weight.zero_()
    s.counter.value = -1
    per_rank = m.load(m.list_step_dirs()[-1], manifest)
    assert per_rank == {"pos": 3} and s.counter.value == 3
    assert torch.equal(s.model.weight, torch.full((2, 3), 3.0)) and torch.equal(torch.get_rng_state(), saved_rng)


def test_a_checkpoint_is_one_accelerate_itself_can_load(tmp_path):
    path = Setup(tmp_path).save(5)
    fresh = Setup(tmp_path / "other")  # a new accelerator, model, optimiser and registered object
    fresh.acc.load_state(str(path))
    assert torch.equal(fresh.model.weight, torch.full((2, 3), 5.0)) and fresh.counter.value == 5


def test_files_in_subdirectories_are_in_the_manifest(tmp_path, monkeypatch):
    """FSDP and DeepSpeed save_state write sharded files into subdirectories: they are checksummed too."""
    s = Setup(tmp_path)
    plain = s.acc.save_state

    def sharded_save_state(output_dir):
        plain(output_dir)
        shard = Path(output_dir) / "pytorch_model_fsdp_0"
        shard.mkdir()
        (shard / "__0_0.distcp").write_bytes(b"shard bytes")

    monkeypatch.setattr(s.acc, "save_state", sharded_save_state)
    path = s.save(1)
    assert "pytorch_model_fsdp_0/__0_0.distcp" in s.m.verify(path)["files"]
    (path / "pytorch_model_fsdp_0" / "__0_0.distcp").write_bytes(b"shard bytez")
    with pytest.raises(CorruptCheckpoint, match="pytorch_model_fsdp_0/__0_0.distcp is corrupt"):
        s.m.verify(path)


def test_truncated_and_corrupt_checkpoints_fall_back(tmp_path, caplog):
    s = Setup(tmp_path, keep=5)
    for step in (1, 2, 3):
        s.save(step)
    m = s.m
    d1, d2, d3 = m.list_step_dirs()
    with open(d3 / "model.safetensors", "r+b") as fh:  # truncate
        fh.truncate(10)
    data = bytearray((d2 / "custom_checkpoint_0.pkl").read_bytes())  # flip one byte, same size
    data[-5] ^= 0xFF
    (d2 / "custom_checkpoint_0.pkl").write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        path, manifest = m.latest_valid()
    assert path == d1 and manifest["step"] == 1
    assert f"{d3}: file model.safetensors is truncated" in caplog.text
    assert f"{d2}: file custom_checkpoint_0.pkl is corrupt" in caplog.text
    (d1 / "manifest.json").unlink()  # as if the write had died before its manifest
    assert m.latest_valid() is None
    with pytest.raises(CorruptCheckpoint, match="no manifest.json"):
        m.verify(d1)


def test_unfinished_temporary_directory_is_ignored_and_cleaned(tmp_path):
    s = Setup(tmp_path)
    s.save(1)
    tmp = s.m.dir / ".tmp-step-00000002"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    assert s.m.latest_valid()[1]["step"] == 1
    s.save(3)
    assert not tmp.exists()


def test_incompatible_config_is_refused_naming_the_field(tmp_path):
    Setup(tmp_path, hashed={"model.hidden": 8}).save(1)
    other = Setup(tmp_path, hashed={"model.hidden": 16}).m
    path, manifest = other.latest_valid()
    with pytest.raises(IncompatibleCheckpoint, match="model.hidden: checkpoint 8, now 16"):
        other.load(path, manifest)


def test_world_size_mismatch_is_refused(tmp_path):
    s = Setup(tmp_path)
    path = s.save(1)
    manifest = s.m.verify(path)
    manifest["world_size"] = 2
    with pytest.raises(IncompatibleCheckpoint, match="written by 2 processes"):
        s.m.check_compatible(path, manifest)
    manifest["format"] = 1  # our own files before save_state (model.pt, trainer.pt): not read
    with pytest.raises(IncompatibleCheckpoint, match="has format 1, this code reads 2"):
        s.m.check_compatible(path, manifest)


def test_warmup_cosine_factor():
    assert lr_factor(0, 4, 20) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(15, 0, 20, schedule="constant") == 1.0


def test_guard_policies():
    g = NonFiniteGuard("skip", max_skips=2)
    assert g.check(1, 1.0, 1.0, None)
    assert not g.check(2, float("nan"), 1.0, None)
    assert not g.check(3, 1.0, float("inf"), None)
    with pytest.raises(NonFiniteError, match="at step 4: 3 steps skipped"):
        g.check(4, float("nan"), 1.0, "ck/step-2")
    stop = NonFiniteGuard("stop", 10)
    with pytest.raises(NonFiniteError, match=r"loss = nan at step 7 .*last good checkpoint: ck/step-6"):
        stop.check(7, float("nan"), 0.0, "ck/step-6")
    fp16 = NonFiniteGuard("stop", 10, check_grad_norm=False)  # the loss scaler owns inf gradients
    assert fp16.check(1, 1.0, float("inf"), None)


def test_fault_spec_parsing():
    f = Faults("nan_loss@3,kill@5:all,sigterm@7", process_index=1)
    assert not f.nan_loss(3) and f.at["kill"] == {5} and f.at["sigterm"] == set()
    assert Faults("nan_loss@3", process_index=0).nan_loss(3)
    with pytest.raises(ValueError, match="bad entry 'boom@x'"):
        Faults("boom@x")
