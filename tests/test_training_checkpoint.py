"""Checkpoint manager, schedule, guard and fault parsing, without a training run."""
import errno
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from urlstm_triton.errors import StorageError
from urlstm_triton.files import write_json_atomic
from urlstm_triton.training import (CheckpointManager, ConfigError, CorruptCheckpoint, Faults, IncompatibleCheckpoint,
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
    with pytest.raises(ConfigError, match="URLSTM_FAULTS: bad entry 'boom@x'; expected kind@step"):
        Faults("boom@x")
    assert Faults("enospc@4").save_hook(4) is not None and Faults("enospc@4").save_hook(3) is None


def _fake_checkpoint(directory: Path, step: int) -> Path:
    """A complete-looking checkpoint whose file is corrupt (as resume found the newer ones in issue 14)."""
    d = directory / f"step-{step:08d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"garbage")
    (d / "manifest.json").write_text(json.dumps({"format": 2, "step": step, "config_hash": "x", "world_size": 1,
                                                 "files": {"model.safetensors": {"sha256": "0" * 64, "bytes": 7}}}))
    return d


def test_retention_only_deletes_checkpoints_older_than_the_one_just_written(tmp_path):
    s = Setup(tmp_path, keep=2)
    newer = [_fake_checkpoint(s.m.dir, step) for step in (20, 25, 30)]  # unusable, but "newer"
    s.save(5)
    s.save(10)
    names = [p.name for p in s.m.list_step_dirs()]
    assert names == ["step-00000005", "step-00000010", "step-00000020", "step-00000025", "step-00000030"]
    s.save(15)  # keep=2: 10 and 15 stay, 5 goes; 20/25/30 are not counted and not touched
    assert [p.name for p in s.m.list_step_dirs()] == ["step-00000010", "step-00000015"] + [p.name for p in newer]
    s.save(20)  # saving a step that exists replaces it (the corrupt one) ...
    assert s.m.verify(s.m.dir / "step-00000020")["step"] == 20
    assert [p.name for p in s.m.list_step_dirs()][:2] == ["step-00000015", "step-00000020"]  # ... 10 goes
    assert not list(s.m.dir.glob(".old-*")) and not list(s.m.dir.glob(".tmp-*"))


def test_resaving_a_step_swaps_it_in_whole(tmp_path):
    s = Setup(tmp_path)
    s.save(3)
    with torch.no_grad():
        s.model.weight.fill_(7.0)
    s.m.save(3, {"pos": "again"})
    path, manifest = s.m.latest_valid()
    assert path.name == "step-00000003" and s.m.load(path, manifest) == {"pos": "again"}
    assert torch.equal(s.model.weight, torch.full((2, 3), 7.0))
    # what a crash between the two renames leaves: the old one aside, the new one not yet in place
    (s.m.dir / ".old-step-00000004").mkdir()
    s.save(5)
    assert not (s.m.dir / ".old-step-00000004").exists()  # cleaned at the next save


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(files=list(m["files"])), "'files' is missing or not a dict"),
    (lambda m: m["files"]["model.safetensors"].pop("bytes"), "file entry 'model.safetensors' needs 'sha256' and "
                                                            "'bytes'"),
    (lambda m: m["files"].update({"../../escape": {"sha256": "0", "bytes": 1}}), "file entry '../../escape' is not "
                                                                                 "a path inside the checkpoint"),
    (lambda m: m.pop("world_size"), "'world_size' is missing or not an int"),
    (lambda m: m.update(step="1"), "'step' is missing or not an int"),
    (lambda m: m.update(step=9), "it says step 9"),
    (lambda m: m.clear() or m.update(a=[1]), "'format' is missing"),
])
def test_a_malformed_manifest_is_reported_and_skipped(tmp_path, edit, needle, caplog):
    s = Setup(tmp_path)
    s.save(1)
    d2 = s.save(2)
    manifest = json.loads((d2 / "manifest.json").read_text())
    edit(manifest)
    (d2 / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        path, _ = s.m.latest_valid()
    assert path.name == "step-00000001"
    assert f"checkpoint {d2}: malformed manifest.json ({needle}" in caplog.text
    (d2 / "manifest.json").write_text("[1, 2]")  # valid JSON, not an object
    with pytest.raises(CorruptCheckpoint, match=r"malformed manifest.json \(a list, not an object\)"):
        s.m.verify(d2)


def test_missing_path_and_file_where_a_checkpoint_goes(tmp_path):
    s = Setup(tmp_path)
    with pytest.raises(CorruptCheckpoint, match=rf"checkpoint {tmp_path}/nowhere does not exist"):
        s.m.verify(tmp_path / "nowhere")
    s.save(1)
    (s.m.dir / "step-00000002").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"step-00000002 is not a checkpoint directory \(a file where one goes\)"):
        s.m.check_layout()  # the trainer checks before training
    with pytest.raises(ConfigError, match=r"step-00000002 is not a checkpoint directory"):
        s.save(2)  # and the save itself, if one appears during the run
    assert not list(s.m.dir.glob(".tmp-*")) and s.m.latest_valid()[0].name == "step-00000001"
    with pytest.raises(CorruptCheckpoint, match="is not a directory"):
        s.m.verify(s.m.dir / "step-00000002")


def test_a_failed_write_leaves_no_partial_files_and_keeps_the_last_checkpoint(tmp_path):
    s = Setup(tmp_path)
    good = s.save(1)
    full_disk = Faults("enospc@2").save_hook(2)
    with pytest.raises(StorageError, match=r"cannot write checkpoint .*step-00000002: No space left on device"):
        s.m.save(2, {"pos": 2}, full_disk)
    assert [p.name for p in s.m.dir.iterdir()] == [good.name]
    assert s.m.latest_valid()[0] == good


def test_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic({"loss": float("nan"), "ok": [1.5, float("inf")]}, path)
    assert json.loads(path.read_text()) == {"loss": None, "ok": [1.5, None]}  # strict JSON, no NaN token

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the bytes do not reach the disk
    with pytest.raises(OSError):
        write_json_atomic({"a": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no .summary.json.*.tmp left
    assert json.loads(path.read_text())["loss"] is None  # the old file, whole
