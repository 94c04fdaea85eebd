"""Checkpoint manager, schedule, guard and fault parsing, without a training run."""
import hashlib
import json
import math

import pytest
import torch
from accelerate import Accelerator

from urlstm_triton.training import (CheckpointManager, CorruptCheckpoint, Faults, IncompatibleCheckpoint,
                                    NonFiniteError, NonFiniteGuard, lr_factor)


@pytest.fixture(scope="module")
def acc():
    return Accelerator(cpu=True)


def manager(tmp_path, acc, keep=3, hashed=None):
    hashed = hashed or {"model.hidden": 8}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]
    return CheckpointManager(tmp_path / "ck", acc, keep, digest, hashed)


def save(m, step):
    return m.save(step, {"model": {"w": torch.full((4,), float(step))}, "trainer": {"step": step}},
                  {"rng": None, "task": {"pos": step}})


def test_save_writes_manifest_with_checksums_and_keeps_the_newest(tmp_path, acc):
    m = manager(tmp_path, acc, keep=2)
    for s in (1, 2, 3):
        save(m, s)
    names = [p.name for p in m.list_step_dirs()]
    assert names == ["step-00000002", "step-00000003"]
    manifest = m.verify(m.list_step_dirs()[-1])
    assert manifest["step"] == 3 and set(manifest["files"]) == {"model.pt", "trainer.pt", "rank000.pt"}
    shared, per_rank = m.load(m.list_step_dirs()[-1], manifest)
    assert torch.equal(shared["model"]["w"], torch.full((4,), 3.0)) and per_rank["task"]["pos"] == 3


def test_truncated_and_corrupt_checkpoints_fall_back(tmp_path, acc, caplog):
    m = manager(tmp_path, acc, keep=5)
    for s in (1, 2, 3):
        save(m, s)
    d1, d2, d3 = m.list_step_dirs()
    with open(d3 / "model.pt", "r+b") as fh:  # truncate
        fh.truncate(10)
    data = bytearray((d2 / "trainer.pt").read_bytes())  # flip one byte, same size
    data[-5] ^= 0xFF
    (d2 / "trainer.pt").write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        path, manifest = m.latest_valid()
    assert path == d1 and manifest["step"] == 1
    assert f"{d3}: file model.pt is truncated" in caplog.text
    assert f"{d2}: file trainer.pt is corrupt" in caplog.text
    (d1 / "manifest.json").unlink()  # as if the write had died before its manifest
    assert m.latest_valid() is None
    with pytest.raises(CorruptCheckpoint, match="no manifest.json"):
        m.verify(d1)


def test_unfinished_temporary_directory_is_ignored_and_cleaned(tmp_path, acc):
    m = manager(tmp_path, acc)
    save(m, 1)
    tmp = m.dir / ".tmp-step-00000002"
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"half")
    assert m.latest_valid()[1]["step"] == 1
    save(m, 3)
    assert not tmp.exists()


def test_incompatible_config_is_refused_naming_the_field(tmp_path, acc):
    save(manager(tmp_path, acc, hashed={"model.hidden": 8}), 1)
    other = manager(tmp_path, acc, hashed={"model.hidden": 16})
    path, manifest = other.latest_valid()
    with pytest.raises(IncompatibleCheckpoint, match="model.hidden: checkpoint 8, now 16"):
        other.load(path, manifest)


def test_world_size_mismatch_is_refused(tmp_path, acc):
    m = manager(tmp_path, acc)
    path = save(m, 1)
    manifest = m.verify(path)
    manifest["world_size"] = 2
    with pytest.raises(IncompatibleCheckpoint, match="written by 2 processes"):
        m.check_compatible(path, manifest)


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
