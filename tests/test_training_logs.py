"""Logs that read well (issue 15 item 5): progress bars only on a terminal; a log file or a pipe gets the periodic
log lines, never carriage-return frames."""
import io

from lm_helpers import make_corpus, run_cli, tiny_args
from urlstm_triton.training import session


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_bars_only_when_asked_for_and_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", _Stream(tty=True))
    assert session.progress_bars(True) and not session.progress_bars(False)
    monkeypatch.setattr("sys.stderr", _Stream(tty=False))
    assert not session.progress_bars(True)


def test_bars_through_a_launcher_that_relays_stderr_to_a_terminal(monkeypatch, tmp_path):
    """accelerate >= 1.16 pipes its child's stderr to its own: bars when that is a terminal, not when it is a file;
    and only through a pipe (a stderr that is a file is a log, whatever the launcher's is)."""
    import os

    read_end, write_end = os.pipe()
    pipe = os.fdopen(write_end, "w")
    monkeypatch.setattr("sys.stderr", pipe)
    where = {}

    def readlink(path):
        if path not in where:
            raise FileNotFoundError(path)
        return where[path]

    monkeypatch.setattr(session.os, "readlink", readlink)
    monkeypatch.setattr(session, "launcher_pid", lambda: 4242)
    where["/proc/4242/fd/2"] = "/dev/pts/3"
    assert session.progress_bars(True) and not session.progress_bars(False)
    where["/proc/4242/fd/2"] = "/home/me/run.err"  # accelerate launch ... 2> run.err
    assert not session.progress_bars(True)
    where.clear()  # the launcher's fds cannot be read
    assert not session.progress_bars(True)
    where["/proc/4242/fd/2"] = "/dev/pts/3"
    with open(tmp_path / "rank0.err", "w") as log_file:
        monkeypatch.setattr("sys.stderr", log_file)  # a per-rank log file under a launcher on a terminal
        assert not session.progress_bars(True)
    monkeypatch.setattr("sys.stderr", pipe)
    monkeypatch.setattr(session, "launcher_pid", lambda: None)  # no launcher: only our own stderr counts
    assert not session.progress_bars(True)
    monkeypatch.setattr("sys.stderr", _Stream(tty=False))  # no file descriptor at all
    monkeypatch.setattr(session, "launcher_pid", lambda: 4242)
    assert not session.progress_bars(True)
    pipe.close()
    os.close(read_end)


def test_a_pipe_gets_log_lines_and_no_carriage_returns(tmp_path):
    corpus = make_corpus(tmp_path / "text")
    # --run.progress true asks for bars; stderr is a pipe here (as a log file or `| tee` would be)
    res = run_cli(tiny_args(tmp_path / "run", tmp_path / "cache", corpus, "--train.steps", "4", "--run.log_every", "2",
                            "--run.progress", "true"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\r" not in res.stderr and "\r" not in res.stdout  # no tqdm frames: not the trainer's, not datasets'
    assert "step 2/4 loss" in res.stderr and "step 4/4 loss" in res.stderr
    assert "step 4/4 loss" in (tmp_path / "run" / "train.log").read_text()
    assert "Removed shared tensor" not in res.stderr  # accelerate's note on the tied decoder weight, at every save
