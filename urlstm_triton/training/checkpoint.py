"""Crash-safe checkpoints written by ``accelerator.save_state``: whole or not at all, verified before loading.

Layout of ``<run>/checkpoints/``::

    step-00000120/            a complete checkpoint (the rename into place is the commit point)
        model.safetensors optimizer.bin scheduler.bin [scaler.pt]   accelerator.save_state (FSDP/DeepSpeed: their
        random_states_0.pkl random_states_1.pkl ...                 own sharded files), RNG states per process,
        custom_checkpoint_0.pkl ...                                 the objects registered for checkpointing
        rank000.pt rank001.pt ...                                   per process: the objective's data position, carry
        manifest.json                                               step, config hash + fields, sha256 of each file
    .tmp-step-00000130/       a checkpoint being written (ignored; removed on the next save)

``save`` lets Accelerate write its state into the temporary directory, adds each process's own file, fsyncs every
file, writes the manifest last, renames the directory into place and fsyncs its parent: a SIGKILL or power cut at
any moment leaves the previous set of checkpoints or the new one, never half of one. A failed write (disk full)
removes the temporary directory and raises ``StorageError`` on every process; the earlier checkpoints are
untouched. Re-saving a step that exists (a resumed run passing a step it had saved) moves the old directory aside
(``.old-step-N``) until the new one is in place. Retention only deletes checkpoints older than the one just
written, never a newer one (a newer one is one that resume could not use: it stays for inspection until the run
passes it). A step directory is one Accelerate itself can load (``accelerator.load_state(path)``, with the same
objects registered). ``scan``/``latest_valid`` check the manifest and every checksum, report a truncated or corrupt
checkpoint by name and fall back to the previous one. A checkpoint whose config hash differs from the run's is
refused with the list of differing fields (``IncompatibleCheckpoint``). All processes must share the run directory
(one file system).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError, CorruptCheckpoint, IncompatibleCheckpoint, StorageError
from ..files import fsync_dir, fsync_file, remove_path, save_torch, sha256_file
from .config import diff_hashed

FORMAT_VERSION = 2  # 2: accelerator.save_state layout; 1 (our own model.pt/trainer.pt) is no longer read
MODEL_FILE = "model.safetensors"  # accelerate's name for the first prepared model's weights
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_LEFTOVERS = (".tmp-step-*", ".old-step-*")  # a write or a swap that was cut short; removed at the next save
_MANIFEST_KEYS = {"format": int, "step": int, "config_hash": str, "world_size": int, "files": dict}
log = logging.getLogger("urlstm_triton.training")


class _TiedWeightsNote(logging.Filter):
    """Accelerate warns at every save that it left a shared tensor out of model.safetensors: for the LM that is the
    decoder weight tied to the embedding, written once and restored as tied on load (the exact-resume tests
    check it bitwise), so the warning only adds noise to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rank_file(process_index: int) -> str:
    return f"rank{process_index:03d}.pt"


def load_torch(path) -> Any:
    # weights_only=False: the files hold plain Python objects; they are only loaded after their sha256 matched
    # the manifest this project wrote.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_model_weights(model: torch.nn.Module, checkpoint) -> None:
    """The weights of a checkpoint into an unwrapped ``model`` (for sampling; tied weights are restored as tied;
    a DDP run's file holds the unwrapped names too)."""
    from safetensors.torch import load_model

    load_model(model, str(Path(checkpoint) / MODEL_FILE))


class CheckpointManager:
    """Save, verify, choose and load checkpoints of one run.

    Args:
        directory: ``<run>/checkpoints``.
        accelerator: the run's ``accelerate.Accelerator``, with the model, optimiser and schedule prepared and the
            trainer's own state objects registered (``register_for_checkpointing``).
        keep: retention limit (newest ``keep`` complete checkpoints survive a save).
        config_hash, hashed_fields: from ``config.config_hash``/``config.hashed_fields`` of the current run.
    """

    def __init__(self, directory, accelerator, keep: int, config_hash: str, hashed_fields: Dict[str, Any]):
        self.dir = Path(directory)
        self.acc = accelerator
        self.keep = keep
        self.config_hash = config_hash
        self.hashed_fields = hashed_fields

    # ----------------------------------------------------------------------------------------- saving
    def check_layout(self) -> None:
        """Refuse a run directory where checkpoints cannot go: ``checkpoints`` or a ``step-N`` inside it that is
        not a directory (checked before training, so the first save does not fail hours later)."""
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"{self.dir} is a file where the checkpoint directory goes: move or delete it")
        if self.dir.is_dir():
            for p in sorted(self.dir.iterdir()):
                if _STEP_DIR.match(p.name) and not p.is_dir():
                    raise ConfigError(f"{p} is not a checkpoint directory (a file where one goes): move or "
                                      "delete it")

    def _agree(self, ok: bool) -> bool:
        """Whether every process succeeded (collective; each process says whether its part worked)."""
        if self.acc.num_processes == 1:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=self.acc.device)
        return float(self.acc.reduce(flag, reduction="sum")) == 0.0

    def save(self, step: int, per_rank: Any, fault_hook=None) -> Path:
        """Write one checkpoint: Accelerate's state plus ``per_rank``, this process's object, as ``rankNNN.pt``.
        Collective: every process must call it. ``fault_hook(stage)`` lets the fault-injection tests kill the
        process or fail the write half-way through (after Accelerate wrote its files, before the manifest).
        A failed write raises ``StorageError`` on every process and leaves no partial files."""
        acc = self.acc
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp-{step_dir_name(step)}"
        stages = (
            (acc.is_main_process, lambda: self._prepare(tmp)),
            (True, lambda: self._write_state(tmp, per_rank, fault_hook)),
            (acc.is_main_process, lambda: self._commit(tmp, final, step)),
        )
        for runs_here, stage in stages:
            error = None
            if runs_here:
                try:
                    stage()
                except (OSError, ConfigError) as e:
                    error = e
            if not self._agree(error is None):
                if acc.is_main_process:
                    remove_path(tmp)  # frees the space a full disk needs for anything else (the summary)
                if isinstance(error, ConfigError):
                    raise error
                cause = (f"{error.strerror or error}" if error is not None
                         else "another process could not write its part")
                raise StorageError(f"cannot write checkpoint {final}: {cause}") from error
        return final

    def _prepare(self, tmp: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for pattern in _LEFTOVERS:
            for stale in self.dir.glob(pattern):
                remove_path(stale)
        tmp.mkdir()

    def _write_state(self, tmp: Path, per_rank: Any, fault_hook) -> None:
        self.acc.save_state(str(tmp))
        save_torch(per_rank, tmp / rank_file(self.acc.process_index))
        if fault_hook is not None:
            fault_hook("after_state")

    def _commit(self, tmp: Path, final: Path, step: int) -> None:
        files = {}
        for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
            fsync_file(p)
            files[str(p.relative_to(tmp))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest = {
            "format": FORMAT_VERSION,
            "step": step,
            "config_hash": self.config_hash,
            "config": self.hashed_fields,
            "world_size": self.acc.num_processes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": files,
        }
        with open(tmp / "manifest.json", "w") as fh:
            json.dump(manifest, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        for d in {p.parent for p in tmp.rglob("*")} | {tmp}:
            fsync_dir(d)
        if final.exists() or final.is_symlink():
            if not final.is_dir():
                raise ConfigError(f"{final} is not a checkpoint directory (a file where one goes): move or delete "
                                  "it")
            # re-saving a step (a resumed run passing a step it had saved): the old one stays until the new one
            # is in place, so a crash between the renames still leaves a checkpoint of this step
            old = self.dir / f".old-{final.name}"
            remove_path(old)
            os.rename(final, old)
            os.rename(tmp, final)
            fsync_dir(self.dir)
            remove_path(old)
        else:
            os.rename(tmp, final)
            fsync_dir(self.dir)
        self._apply_retention(step)

    def _apply_retention(self, newest: int) -> None:
        """Keep the checkpoint of step ``newest`` (just written and checksummed) and the ``keep - 1`` complete ones
        before it; delete older ones. A checkpoint after ``newest`` is never deleted here: it is one that resume
        found unusable (it stays to be looked at) and a later save of that step replaces it."""
        older = [p for p in self.list_step_dirs()
                 if _step_of(p) < newest and (p / "manifest.json").exists()]
        for old in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- choosing
    def list_step_dirs(self) -> List[Path]:
        """Checkpoint directories (complete or not), oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted((p for p in self.dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=_step_of)

    @staticmethod
    def verify(path: Path) -> Dict[str, Any]:
        """The manifest of a complete, intact checkpoint, or ``CorruptCheckpoint`` saying what is wrong."""
        path = Path(path)
        if not path.exists():
            raise CorruptCheckpoint(f"checkpoint {path} does not exist")
        if not path.is_dir():
            raise CorruptCheckpoint(f"checkpoint {path} is not a directory")
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise CorruptCheckpoint(f"checkpoint {path} has no manifest.json (incomplete write)")
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise CorruptCheckpoint(f"checkpoint {path}: unreadable manifest.json ({e})") from None
        _check_manifest(path, manifest)
        for name, info in manifest["files"].items():
            fpath = path / name
            if not fpath.is_file():
                raise CorruptCheckpoint(f"checkpoint {path}: file {name} is missing")
            size = fpath.stat().st_size
            if size != info["bytes"]:
                raise CorruptCheckpoint(
                    f"checkpoint {path}: file {name} is truncated or resized ({size} bytes, manifest says "
                    f"{info['bytes']})")
            if sha256_file(fpath) != info["sha256"]:
                raise CorruptCheckpoint(f"checkpoint {path}: file {name} is corrupt (sha256 does not match)")
        return manifest

    def scan(self) -> Tuple[Optional[Tuple[Path, Dict[str, Any]]], List[str]]:
        """``(newest checkpoint that verifies or None, what is wrong with each newer one)``, warning about each
        of those. Collective: the main process decides and broadcasts, so every process loads the same one."""
        from accelerate.utils import broadcast_object_list

        result: List[Any] = [None, []]
        if self.acc.is_main_process:
            for path in reversed(self.list_step_dirs()):
                try:
                    manifest = self.verify(path)
                except CorruptCheckpoint as e:
                    log.warning("%s; falling back to the previous checkpoint", e)
                    result[1].append(str(e))
                    continue
                result[0] = (str(path), manifest)
                break
        if self.acc.num_processes > 1:
            broadcast_object_list(result)
        choice, problems = result
        return (None if choice is None else (Path(choice[0]), choice[1])), problems

    def latest_valid(self) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """The newest checkpoint that verifies (see ``scan``), or None."""
        return self.scan()[0]

    def check_compatible(self, path: Path, manifest: Dict[str, Any]) -> None:
        if manifest.get("format") != FORMAT_VERSION:
            raise IncompatibleCheckpoint(
                f"checkpoint {path} has format {manifest.get('format')}, this code reads {FORMAT_VERSION}")
        if manifest["config_hash"] != self.config_hash:
            diffs = diff_hashed(manifest.get("config", {}), self.hashed_fields)
            raise IncompatibleCheckpoint(
                f"checkpoint {path} was written with a different config (hash {manifest['config_hash']}, this "
                f"run {self.config_hash}): " + "; ".join(diffs or ["fields unknown"])
                + ". Resume with the original settings, or start a new run (--run.dir or --run.overwrite)")
        if manifest["world_size"] != self.acc.num_processes:
            raise IncompatibleCheckpoint(
                f"checkpoint {path} was written by {manifest['world_size']} processes, this run has "
                f"{self.acc.num_processes}: the carried state and data rows are per process; launch with "
                f"--num_processes {manifest['world_size']}")

    def load(self, path: Path, manifest: Dict[str, Any]) -> Any:
        """Restore Accelerate's state (model, optimiser, schedule, scaler, RNG, registered objects) from a
        verified checkpoint and return this process's own object."""
        self.check_compatible(path, manifest)
        self.acc.load_state(str(path))
        return load_torch(Path(path) / rank_file(self.acc.process_index))


def newest_verified(directory) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """``(path, manifest)`` of the newest checkpoint under ``directory`` (``<run>/checkpoints``) that verifies, or
    None; for readers outside a run (sampling, gate analysis), which need no accelerator."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for path in sorted((p for p in directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=_step_of,
                       reverse=True):
        try:
            return path, CheckpointManager.verify(path)
        except CorruptCheckpoint:
            continue
    return None


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _check_manifest(path: Path, manifest: Any) -> None:
    """A manifest is valid JSON but may still be malformed (edited, written by other code): every field this
    module reads must be there with its type, and every file entry a relative path inside the checkpoint."""
    def bad(what: str) -> CorruptCheckpoint:
        return CorruptCheckpoint(f"checkpoint {path}: malformed manifest.json ({what})")

    if not isinstance(manifest, dict):
        raise bad(f"a {type(manifest).__name__}, not an object")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise bad(f"{key!r} is missing or not a{'n' if kind is int else ''} {kind.__name__}")
    if _STEP_DIR.match(path.name) and manifest["step"] != _step_of(path):
        raise bad(f"it says step {manifest['step']}")
    for name, info in manifest["files"].items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise bad(f"file entry {name!r} is not a path inside the checkpoint")
        if (not isinstance(info, dict) or not isinstance(info.get("sha256"), str)
                or not isinstance(info.get("bytes"), int) or isinstance(info.get("bytes"), bool)):
            raise bad(f"file entry {name!r} needs 'sha256' and 'bytes'")
