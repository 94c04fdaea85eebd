"""Crash-safe checkpoints: written whole or not at all, verified before they are loaded.

Layout of ``<run>/checkpoints/``::

    step-00000120/            a complete checkpoint (the rename into place is the commit point)
        model.pt optimizer.pt scheduler.pt trainer.pt [scaler.pt]   written by the main process
        rank000.pt rank001.pt ...                                  per process: RNG states, data position, carry
        manifest.json                                              step, config hash + fields, sha256 of each file
    .tmp-step-00000130/       a checkpoint being written (ignored; removed on the next save)

Every file is fsync'ed, the manifest is written last, then the temporary directory is renamed into place and its
parent fsync'ed: a SIGKILL or power cut at any moment leaves either the previous set of checkpoints or the new one,
never half of one. ``latest_valid`` checks the manifest and every checksum, reports a truncated or corrupt
checkpoint by name and falls back to the previous one. A checkpoint whose config hash differs from the run's is
refused with the list of differing fields (``IncompatibleCheckpoint``). Several processes must share the run
directory (one file system), as they do on one machine.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .config import ConfigError, diff_hashed

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")
log = logging.getLogger("urlstm_triton.training")


class IncompatibleCheckpoint(ConfigError):
    """The checkpoint was written by a run with a different model/data/optimiser config or process count."""


class CorruptCheckpoint(RuntimeError):
    """A checkpoint directory failed verification (missing file, wrong size, wrong checksum, bad manifest)."""


# ---------------------------------------------------------------------------------------------- RNG
def capture_rng() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- file helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(obj: Any, path: Path) -> None:
    """``torch.save`` then fsync, so the bytes are on disk before the manifest claims them."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_file(path: Path) -> Any:
    # weights_only=False: the files hold numpy RNG states and plain Python objects; they are only loaded after
    # their sha256 matched the manifest this project wrote.
    return torch.load(path, map_location="cpu", weights_only=False)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ---------------------------------------------------------------------------------------------- manager
class CheckpointManager:
    """Save, verify, choose and load checkpoints of one run.

    Args:
        directory: ``<run>/checkpoints``.
        accelerator: the run's ``accelerate.Accelerator`` (process index, barriers, broadcasting).
        keep: retention limit (newest ``keep`` complete checkpoints survive a save).
        config_hash, hashed_fields: from ``config.config_hash``/``config.hashed_fields`` of the current run.
    """

    def __init__(self, directory, accelerator, keep: int, config_hash: str, hashed_fields: Dict[str, Any]):
        self.dir = Path(directory)
        self.acc = accelerator
        self.keep = keep
        self.config_hash = config_hash
        self.hashed_fields = hashed_fields
        self.last_saved: Optional[Path] = None

    # ----------------------------------------------------------------------------------------- saving
    def save(self, step: int, shared: Dict[str, Any], per_rank: Any, fault_hook=None) -> Path:
        """Write one checkpoint. ``shared``: name -> object saved by the main process as ``name.pt``;
        ``per_rank``: this process's object, saved as ``rankNNN.pt``. Collective: every process must call it.
        ``fault_hook(stage)`` lets the fault-injection tests kill the process half-way through."""
        acc = self.acc
        final = self.dir / step_dir_name(step)
        tmp = self.dir / f".tmp-{step_dir_name(step)}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        save_file(per_rank, tmp / f"rank{acc.process_index:03d}.pt")
        if acc.is_main_process:
            for name, obj in shared.items():
                save_file(obj, tmp / f"{name}.pt")
                if fault_hook is not None:
                    fault_hook("after_first_file")
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = {}
            for p in sorted(tmp.iterdir()):
                files[p.name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
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
            _fsync_dir(tmp)
            if final.exists():  # re-saving the same step (e.g. end of a resumed, finished run)
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.dir)
            self._apply_retention()
        acc.wait_for_everyone()
        self.last_saved = final
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
            if _sha256(fpath) != info["sha256"]:
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

    def load(self, path: Path, manifest: Dict[str, Any]) -> Tuple[Dict[str, Any], Any]:
        """``(shared objects by name, this process's object)`` of a verified checkpoint."""
        self.check_compatible(path, manifest)
        shared = {}
        for name in manifest["files"]:
            if name.endswith(".pt") and not name.startswith("rank"):
                shared[name[:-3]] = load_file(path / name)
        per_rank = load_file(path / f"rank{self.acc.process_index:03d}.pt")
        return shared, per_rank
