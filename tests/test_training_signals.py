"""The graceful stop's signal rules and its handling of a stderr nobody reads any more
(urlstm_triton/training/signals.py); end to end under `accelerate launch`: test_reliability_faults.py."""
import os
import signal

import pytest

from urlstm_triton.training.signals import GracefulStop, silence_unread_pipes


def test_a_second_signal_aborts_but_sigterm_after_sigint_is_the_same_stop():
    """Ctrl-C reaches the launcher and the trainer; accelerate >= 1.16 then terminates the trainer itself: that
    SIGTERM must not abort the checkpoint the SIGINT asked for. A second SIGINT, or SIGTERM twice, still aborts."""
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGINT and stop.cause == "stopped by SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is not stop._handler  # the previous handlers are back


def test_a_pipe_without_a_reader_is_pointed_at_dev_null_and_a_read_one_is_left_alone():
    read_end, orphaned = os.pipe()
    os.close(read_end)
    with pytest.raises(BrokenPipeError):  # what every write to it would do (the control)
        os.write(orphaned, b"x")
    silence_unread_pipes((orphaned,))
    assert os.write(orphaned, b"x") == 1  # now /dev/null
    read_end, live = os.pipe()
    silence_unread_pipes((live,))
    os.write(live, b"y")
    assert os.read(read_end, 1) == b"y"  # still the pipe
    for fd in (orphaned, live, read_end):
        os.close(fd)
