"""The run-directory lock (urlstm_triton/training/runlock.py): one owner; a dead owner on this machine taken over
at once, a silent one on another machine after a whole lease, a live one refused; a lost lease noticed."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from filelock import FileLock

from urlstm_triton.errors import ConfigError, RunDirectoryInUse
from urlstm_triton.training.runlock import LOCK_FILE, OWNER_FILE, RunLock

LEASE = 1.2  # seconds; jobs use runlock.LEASE_S (30)


def foreign_marker(run_dir, host="other-machine", pid=4242):
    """An owner marker as a job on another machine writes it (filelock's lease format), put in place by a rename
    as a takeover does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "marker.tmp"
    tmp.write_text(f"filelock/2\npid={pid}\nhost={host}\nmode=lease\ntoken={'ab' * 16}\nduration={LEASE!r}\n"
                   "start=12345\n")
    os.replace(tmp, run_dir / OWNER_FILE)


def test_a_second_lock_is_refused_naming_the_owner_and_a_released_one_is_free(tmp_path):
    run = tmp_path / "run"
    first = RunLock(run, lease_s=LEASE)
    first.acquire()
    assert f"pid={os.getpid()}" in (run / OWNER_FILE).read_text()
    with pytest.raises(RunDirectoryInUse, match=rf"run directory {run} is in use by pid {os.getpid()} on host "
                                                rf"\S+ \(it holds {run}/{LOCK_FILE}\)"):
        RunLock(run, lease_s=LEASE).acquire()
    assert first.lost is None
    first.release()
    assert not (run / OWNER_FILE).exists()
    again = RunLock(run, lease_s=LEASE)
    again.acquire()
    again.release()


def test_the_lock_of_a_killed_process_is_taken_over_at_once_with_a_message(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from urlstm_triton.training.runlock import RunLock; "
         f"RunLock(sys.argv[1], lease_s={LEASE}).acquire(); print('held', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryInUse, match=f"in use by pid {holder.pid}"):
            RunLock(run, lease_s=LEASE).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert f"pid={holder.pid}" in (run / OWNER_FILE).read_text()  # what a SIGKILL leaves behind
    lock = RunLock(run, lease_s=LEASE)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        lock.acquire()
    assert time.monotonic() - t0 < LEASE  # no waiting: this machine can see the owner is gone
    assert f"took over from pid {holder.pid} on host" in caplog.text and "which is no longer running" in caplog.text
    assert f"pid={os.getpid()}" in (run / OWNER_FILE).read_text()
    lock.release()


def test_a_live_owner_on_another_machine_is_refused(tmp_path):
    """What the OS lock cannot see (another NFS client): the owner renews its lease, so it is alive."""
    run = tmp_path / "run"
    foreign_marker(run)
    stop = threading.Event()

    def renew():  # what the owner's heartbeat does to the marker
        while not stop.wait(LEASE / 6):
            os.utime(run / OWNER_FILE)

    beat = threading.Thread(target=renew)
    beat.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(RunDirectoryInUse, match=r"in use by pid 4242 on host other-machine \(its lease in "
                                                    rf"{run}/{OWNER_FILE} is being renewed\)"):
            RunLock(run, lease_s=LEASE).acquire()
        assert time.monotonic() - t0 < LEASE  # refused as soon as a renewal is seen
    finally:
        stop.set()
        beat.join()
    assert "pid=4242" in (run / OWNER_FILE).read_text()  # left as it was
    free = FileLock(str(run / LOCK_FILE), timeout=0)
    free.acquire()  # the refused job let go of the OS lock again
    free.release()


def test_a_silent_owner_on_another_machine_is_taken_over_after_a_lease(tmp_path, caplog):
    run = tmp_path / "run"
    foreign_marker(run)
    lock = RunLock(run, lease_s=LEASE)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="urlstm_triton.training"):
        lock.acquire()
    waited = time.monotonic() - t0
    assert waited >= LEASE / 2  # watched for a renewal first
    assert "pid 4242 on host other-machine has not renewed its lease" in caplog.text
    assert "took over from pid 4242 on host other-machine" in caplog.text
    assert f"pid={os.getpid()}" in (run / OWNER_FILE).read_text()
    lock.release()


def test_a_lease_taken_away_is_noticed_by_the_owner(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run, lease_s=LEASE)
    lock.acquire()
    foreign_marker(run)  # another job replaced the marker (it judged this one dead)
    deadline = time.monotonic() + 3 * LEASE
    while lock.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.lost and "was lost" in lock.lost
    lock.release()


def test_a_run_dir_that_is_a_file_or_not_writable_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=rf"run.dir {tmp_path}/file exists and is not a directory"):
        RunLock(tmp_path / "file").acquire()
    with pytest.raises(ConfigError, match=r"run.dir .*/file/run: cannot create the run directory: Not a directory"):
        RunLock(tmp_path / "file" / "run").acquire()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only directory is (root ignores modes)
    with pytest.raises(ConfigError, match=rf"run.dir {tmp_path}/ro: the run directory is not writable"):
        RunLock(tmp_path / "ro").acquire()
