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
any moment leaves the previous set of checkpoints or the new one, never half of one. A step directory is one
Accelerate itself can load (``accelerator.load_state(path)``, with the same objects registered). ``latest_valid``
checks the manifest and every checksum, reports a truncated or corrupt checkpoint by name and falls back to the
previous one. A checkpoint whose config hash differs from the run's is refused with the list of differing fields
(``IncompatibleCheckpoint``). All processes must share the run directory (one file system).
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

from .config import diff_hashed
from .errors import CorruptCheckpoint, IncompatibleCheckpoint
from .files import fsync_dir, fsync_file, save_torch, sha256_file

FORMAT_VERSION = 2  # 2: accelerator.save_state layout; 1 (our own model.pt/trainer.pt) is no longer read
MODEL_FILE = "model.safetensors"  # accelerate's name for the first prepared model's weights
_STEP_DIR = re.compile(r"^step-(\d{8})$")
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
    def save(self, step: int, per_rank: Any, fault_hook=None) -> Path:
        """Write one checkpoint: Accelerate's state plus ``per_rank``, this process's object, as ``rankNNN.pt``.
        Collective: every process must call it. ``fault_hook(stage)`` lets the fault-injection tests kill the
        process half-way through (after Accelerate wrote its files, before the manifest)."""
        acc = self.acc
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp-{step_dir_name(step)}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        save_torch(per_rank, tmp / rank_file(acc.process_index))
        if acc.is_main_process and fault_hook is not None:
            fault_hook("after_state")
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {}
            for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
                fsync_file(p)
                files[str(p.relative_to(tmp))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            manifest = {
                "format": FORMAT_VERSION,
                "step": step,
                "config_hash": self.config_hash,
                "config": self.hashed_fields,
                "world_size": acc.num_processes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "files": files,
            }
            with open(tmp / "manifest.json", "w") as fh:
                json.dump(manifest, fh, indent=2, default=str)
                fh.flush()
                os.fsync(fh.fileno())
            for d in {p.parent for p in tmp.rglob("*")} | {tmp}:
                fsync_dir(d)
            if final.exists():  # re-saving the same step (e.g. end of a resumed, finished run)
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.dir)
            self._apply_retention()
        acc.wait_for_everyone()
        return final

    def _apply_retention(self) -> None:
        complete = [p for p in self.list_step_dirs() if (p / "manifest.json").exists()]
        for old in complete[: max(0, len(complete) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- choosing
    def list_step_dirs(self) -> List[Path]:
        """Checkpoint directories (complete or not), oldest first."""
        if not self.dir.is_dir():
            return []
        dirs = [p for p in self.dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    @staticmethod
    def verify(path: Path) -> Dict[str, Any]:
        """The manifest of a complete, intact checkpoint, or ``CorruptCheckpoint`` saying what is wrong."""
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.exists():
            raise CorruptCheckpoint(f"checkpoint {path} has no manifest.json (incomplete write)")
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
            int(manifest["step"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptCheckpoint(f"checkpoint {path}: unreadable manifest.json ({e})") from None
        for name, info in files.items():
            fpath = path / name
            if not fpath.exists():
                raise CorruptCheckpoint(f"checkpoint {path}: file {name} is missing")
            size = fpath.stat().st_size
            if size != info["bytes"]:
                raise CorruptCheckpoint(
                    f"checkpoint {path}: file {name} is truncated or resized ({size} bytes, manifest says "
                    f"{info['bytes']})")
            if sha256_file(fpath) != info["sha256"]:
                raise CorruptCheckpoint(f"checkpoint {path}: file {name} is corrupt (sha256 does not match)")
        return manifest

    def latest_valid(self) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """The newest checkpoint that verifies, warning about each newer one that does not. Collective: the main
        process decides and broadcasts, so every process loads the same one."""
        from accelerate.utils import broadcast_object_list

        choice: List[Any] = [None]
        if self.acc.is_main_process:
            for path in reversed(self.list_step_dirs()):
                try:
                    manifest = self.verify(path)
                except CorruptCheckpoint as e:
                    log.warning("%s; falling back to the previous checkpoint", e)
                    continue
                choice = [(str(path), manifest)]
                break
        if self.acc.num_processes > 1:
            broadcast_object_list(choice)
        if choice[0] is None:
            return None
        return Path(choice[0][0]), choice[0][1]

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
