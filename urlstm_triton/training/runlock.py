"""One job per run directory: an OS-level lock and an owner lease, held by the main process for the run's life.

Two files in the run directory, both from the ``filelock`` package:

- ``.lock``: an OS lock (``flock``), which the kernel drops the moment its process dies, however it dies. A second
  job on the same machine (on a local disk, or on a shared file system whose locks work) is refused at once.
- ``owner``: a lease marker naming the owner's pid, host and process start, renewed (touched) every
  ``LEASE_S / 3`` seconds by a thread while the run lives. It stops a second job where the OS lock cannot: on
  another machine of a shared file system whose ``flock`` is local to each client (NFS without a lock daemon).

The rule a new job follows, decided by the main process before it touches anything in the directory:

1. the OS lock is held: refused, naming the owner's pid and host;
2. an owner marker from this machine whose process is gone (pid dead, or reused by another process): taken over
   with a message;
3. an owner marker that is renewed while we watch (another machine's live job): refused;
4. an owner marker not renewed for ``LEASE_S`` seconds (a job on another machine that died): taken over with a
   message, after watching it for that long (each machine measures the silence on its own clock, so clocks that
   disagree do not matter).

A job whose lease was taken from it (its machine was frozen or cut off for longer than ``LEASE_S``) sees
``lost`` become a reason: the trainer then stops without writing anything more.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, RunDirectoryInUse

log = logging.getLogger("urlstm_triton.training")

LEASE_S = 30.0  # an owner silent this long is dead; every job must agree on it (the marker records it)
LOCK_FILE = ".lock"
OWNER_FILE = "owner"


def _describe(record) -> str:
    host = record.hostname.split("?pidns-")[0]  # filelock marks a container's own pid namespace this way
    return f"pid {record.pid} on host {host}"


class RunLock:
    """``acquire()`` the run directory ``run_dir`` (created if missing) or raise ``RunDirectoryInUse`` naming its
    owner; ``release()`` when the run ends. ``lease_s`` is for tests; jobs use ``LEASE_S``."""

    def __init__(self, run_dir, lease_s: Optional[float] = None):
        self.dir = Path(run_dir)
        self.lease_s = float(lease_s or LEASE_S)
        self._flock = None
        self._lease = None
        self._lost: Optional[str] = None

    # ------------------------------------------------------------------------------------------ acquiring
    def acquire(self) -> None:
        from filelock import FileLock, SoftFileLease, Timeout

        self._make_dir()
        self._flock = FileLock(str(self.dir / LOCK_FILE), timeout=0)
        lease = SoftFileLease(str(self.dir / OWNER_FILE), lease_duration=self.lease_s, timeout=0,
                              on_compromise=self._on_compromise)
        try:
            self._flock.acquire()
        except Timeout:
            owner = lease.owner
            raise RunDirectoryInUse(
                f"run directory {self.dir} is in use by {_describe(owner) if owner else 'another process'} (it "
                f"holds {self.dir / LOCK_FILE}): wait for that job to end or stop it, or use another --run.dir"
            ) from None
        except OSError as e:
            raise ConfigError(f"run.dir {self.dir}: cannot create {LOCK_FILE} there: {e.strerror}") from None
        try:
            self._take_lease(lease)
        except BaseException:
            self._flock.release()
            raise
        self._lease = lease

    def _make_dir(self) -> None:
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"run.dir {self.dir} exists and is not a directory")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"run.dir {self.dir}: cannot create the run directory: {e.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise ConfigError(f"run.dir {self.dir}: the run directory is not writable")

    def _take_lease(self, lease) -> None:
        from filelock import LeaseSettingsMismatch, Timeout

        before = lease.owner
        try:
            lease.acquire()  # free, or this machine's owner whose process is gone
        except Timeout:
            self._take_silent_lease(lease, before)  # the takeover message is below
        except LeaseSettingsMismatch as e:
            raise RunDirectoryInUse(f"run directory {self.dir}: {e}") from None
        except OSError as e:
            raise ConfigError(f"run.dir {self.dir}: cannot write {OWNER_FILE} there: {e.strerror}") from None
        if before is not None and lease.owner is not None and before.token != lease.owner.token:
            log.warning("run directory %s: took over from %s, which is no longer running", self.dir,
                        _describe(before))  # or, from another machine, silent for a whole lease

    def _take_silent_lease(self, lease, owner) -> None:
        """The owner marker belongs to a process this machine cannot see: another machine's (or, where the OS lock
        is not shared, this machine's). It is alive if it renews its lease; it is taken over once it has been
        silent for a whole lease."""
        from filelock import Timeout

        marker = self.dir / OWNER_FILE
        who = _describe(owner) if owner else "another job"
        busy = RunDirectoryInUse(
            f"run directory {self.dir} is in use by {who} (its lease in {marker} is being renewed): wait for "
            "that job to end or stop it, or use another --run.dir")
        first = _stamp(marker)
        deadline = time.monotonic() + self.lease_s / 2  # at least one renewal of a live owner falls in here
        while time.monotonic() < deadline:
            time.sleep(min(0.2, self.lease_s / 20))
            now = _stamp(marker)
            if now is None:  # released meanwhile: the directory is free
                break
            if now != first:
                raise busy
        else:
            log.warning("run directory %s: %s has not renewed its lease in %s; taking the directory over if it "
                        "stays silent for %g s", self.dir, who, marker, self.lease_s)
        try:
            lease.acquire(timeout=self.lease_s * 1.5)
        except Timeout:
            raise busy from None

    # ------------------------------------------------------------------------------------------ holding
    def _on_compromise(self, compromise) -> None:
        # the heartbeat thread calls this: only a flag, which the training loop reads after each step
        self._lost = f"the lease in {compromise.lock_file} was lost ({compromise.reason})"

    @property
    def lost(self) -> Optional[str]:
        """Why this job no longer owns the run directory, or None while it does."""
        return self._lost

    def release(self) -> None:
        for lock in (self._lease, self._flock):
            if lock is not None and lock.is_locked:
                try:
                    lock.release()
                except Exception as e:  # noqa: BLE001 - a stale marker is taken over by the next job anyway
                    log.warning("run directory %s: could not release %s: %s", self.dir, lock.lock_file, e)
        self._lease = self._flock = None


def _stamp(path: Path):
    """What changes when a lease is renewed or replaced: the marker's inode and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
