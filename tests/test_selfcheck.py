"""The persistent kernels' self-check (urlstm_triton/selfcheck.py) and the kernel="auto" dispatch that relies on it.

The cache and dispatch tests fake a CUDA device (its properties and name, as tests/test_kernels_persistent.py
does) and replace the check that would run on it with a recorder; the check itself runs for real on CPU
tensors in Triton's interpreter, where a fault injected into the persistent kernels must make it fail.
"""
import json
import warnings
from types import SimpleNamespace

import pytest
import torch
import triton

from urlstm_triton import kernels as step_kernels
from urlstm_triton import selfcheck
from urlstm_triton.kernels import MODE_CLASSIC, MODE_REFINE, MODE_TIED
from urlstm_triton.kernels import persistent as P
from urlstm_triton.triton_backend import choose_kernel

CUDA = torch.device("cuda")
BF16 = torch.bfloat16


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache directory and no verdicts in memory (as in a new process)."""
    monkeypatch.setenv(selfcheck.CACHE_ENV, str(tmp_path))
    selfcheck.forget()
    yield tmp_path / selfcheck.CACHE_FILE
    selfcheck.forget()


@pytest.fixture
def gpu(monkeypatch):
    """A fake H200 named "Fake H200"; ``gpu.name`` renames it."""
    props = SimpleNamespace(multi_processor_count=132, shared_memory_per_block_optin=232448,
                            regs_per_multiprocessor=65536)
    fake = SimpleNamespace(name="Fake H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: fake.name)
    monkeypatch.setattr(P, "interpreting", lambda: False)
    return fake


class Recorder:
    """Stands in for selfcheck.run_checks: records each call, returns ``reason`` ('' = passed)."""

    def __init__(self, reason=""):
        self.reason = reason
        self.calls = []

    def __call__(self, device, mode, dtype):
        self.calls.append((str(device), mode, dtype))
        return self.reason


@pytest.fixture
def check(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(selfcheck, "run_checks", recorder)
    return recorder


def auto(steps=2000, mode=MODE_REFINE, dtype=BF16):
    """kernel='auto' for the adding task's shape (B=10, H=256), which the dispatch rule gives the persistent
    kernels on an H200."""
    return choose_kernel("auto", 10, 256, CUDA, dtype=dtype, steps=steps, mode=mode)


def entries(path):
    return json.loads(path.read_text())["entries"]


# ------------------------------------------------------------------------------------------- dispatch


def test_pass_takes_the_persistent_kernels_checked_once_then_cached(cache, gpu, check):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passed check warns nothing
        assert auto() is P
        assert auto() is P
    assert check.calls == [("cuda", MODE_REFINE, BF16)]
    (key, entry), = entries(cache).items()
    assert entry["passed"] is True and entry["reason"] == ""
    assert "Fake H200" in key and triton.__version__ in key and "refine" in key and "bfloat16" in key
    selfcheck.forget()  # a new process: the verdict comes from the file
    assert auto() is P
    assert len(check.calls) == 1
    assert selfcheck.verdict(CUDA, MODE_REFINE, BF16).source == "cache"


def test_each_mode_and_dtype_is_checked_on_its_own(cache, gpu, check):
    auto(mode=MODE_REFINE, dtype=BF16)
    auto(mode=MODE_CLASSIC, dtype=BF16)
    auto(mode=MODE_REFINE, dtype=torch.float32)
    auto(mode=MODE_REFINE, dtype=BF16)
    assert check.calls == [("cuda", MODE_REFINE, BF16), ("cuda", MODE_CLASSIC, BF16),
                           ("cuda", MODE_REFINE, torch.float32)]
    assert len(entries(cache)) == 3


def test_no_check_where_the_rule_already_takes_the_step_kernels(cache, gpu, check):
    assert auto(steps=1) is step_kernels  # generation: one step per call
    assert choose_kernel("auto", 256, 1024, CUDA, dtype=BF16, steps=512, mode=MODE_REFINE) is step_kernels
    assert choose_kernel("persistent", 10, 256, CUDA, dtype=BF16, steps=2000) is P  # forced: never checked
    assert check.calls == [] and not cache.exists()


def test_fail_takes_the_step_kernels_with_exactly_one_warning(cache, gpu, check):
    check.reason = "planned tiles (T=10 B=10 I=8 H=200): relative error vs float64 dw_hh[r] 3.0e-01 >= 0.02"
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            assert auto() is step_kernels
        torch.zeros(1).sum()  # unrelated work in between
        assert auto() is step_kernels
    assert len(record) == 1
    msg = str(record[0].message)
    assert "step kernels" in msg and "dw_hh[r] 3.0e-01" in msg and "Fake H200" in msg and str(cache) in msg
    assert len(check.calls) == 1
    (entry,) = entries(cache).values()
    assert entry["passed"] is False and "dw_hh[r]" in entry["reason"]
    # a new process reads the failure from the file: step kernels again, one warning again, no new check
    selfcheck.forget()
    with pytest.warns(RuntimeWarning) as record:
        assert auto() is step_kernels
        assert auto() is step_kernels
    assert len(record) == 1 and len(check.calls) == 1


def test_new_triton_version_device_or_kernels_invalidate_the_verdict(cache, gpu, check, monkeypatch):
    real_version = triton.__version__
    auto()
    assert len(check.calls) == 1
    monkeypatch.setattr(triton, "__version__", "99.0.0")
    auto()
    assert len(check.calls) == 2
    gpu.name = "Fake B200"
    auto()
    assert len(check.calls) == 3
    monkeypatch.setattr(selfcheck, "_FINGERPRINT", ["edited-kernels"])  # the kernel sources changed
    auto()
    assert len(check.calls) == 4
    assert len(entries(cache)) == 4  # the other verdicts stay: another environment may share the cache
    # a new process in the first environment finds its verdict in the file
    selfcheck.forget()
    monkeypatch.setattr(triton, "__version__", real_version)
    monkeypatch.setattr(selfcheck, "_FINGERPRINT", [])
    gpu.name = "Fake H200"
    assert auto() is P
    assert len(check.calls) == 4


@pytest.mark.parametrize("content", [b"{not json", b"\x00\xff\xfe", b"[1, 2]", b'{"format": 1, "entries": 7}',
                                     b'{"format": 1, "entries": {"k": {"passed": "yes"}}}', b""])
def test_corrupt_cache_file_is_ignored_and_rewritten(cache, gpu, check, content):
    cache.write_bytes(content)
    assert auto() is P
    assert len(check.calls) == 1
    (entry,) = entries(cache).values()  # valid JSON again, with the new verdict
    assert entry["passed"] is True
    assert [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_verdict_of_another_format_is_not_trusted(cache, gpu, check):
    key = selfcheck.entry_key(CUDA, MODE_REFINE, BF16)
    entry = {"passed": True, "reason": ""}
    cache.write_text(json.dumps({"format": selfcheck.CACHE_FORMAT + 1, "entries": {key: entry}}))
    auto()
    assert len(check.calls) == 1


def test_cache_written_atomically_and_merged(cache, gpu, check, monkeypatch):
    auto(mode=MODE_REFINE)
    before = cache.read_text()
    # a failed write leaves the old file whole and no temporary file behind, and costs the user nothing
    real_replace = selfcheck.os.replace
    monkeypatch.setattr(selfcheck.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    assert auto(mode=MODE_TIED) is P
    monkeypatch.setattr(selfcheck.os, "replace", real_replace)
    assert cache.read_text() == before
    assert [p.name for p in cache.parent.iterdir() if p.name.endswith(".tmp")] == []
    # the next store merges with what the file holds
    auto(mode=MODE_CLASSIC)
    assert sorted(k.split(" | ")[3] for k in entries(cache)) == ["classic", "refine"]


def test_unwritable_cache_directory_still_gives_a_verdict(tmp_path, gpu, check, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(selfcheck.CACHE_ENV, str(blocker / "cache"))  # a directory under a file
    selfcheck.forget()
    assert auto() is P and auto() is P
    assert len(check.calls) == 1  # held in memory for this process
    selfcheck.forget()


def test_cache_directory_override_order(tmp_path, monkeypatch):
    monkeypatch.delenv(selfcheck.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert selfcheck.cache_directory() == tmp_path / "xdg" / "urlstm_triton"
    monkeypatch.setenv(selfcheck.CACHE_ENV, str(tmp_path / "env"))
    assert selfcheck.cache_directory() == tmp_path / "env"
    assert selfcheck.cache_directory(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv(selfcheck.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert selfcheck.cache_directory() == tmp_path / "home" / ".cache" / "urlstm_triton"


def test_argument_cache_dir(tmp_path, gpu, check):
    selfcheck.forget()
    v = selfcheck.verdict(CUDA, MODE_REFINE, BF16, cache_dir=tmp_path / "mine")
    assert v.passed and v.source == "checked" and (tmp_path / "mine" / selfcheck.CACHE_FILE).exists()
    v = selfcheck.verdict(CUDA, MODE_REFINE, BF16, cache_dir=tmp_path / "mine", refresh=True)
    assert v.source == "checked" and len(check.calls) == 2  # refresh checks again
    selfcheck.forget()


def test_no_check_while_a_cuda_graph_is_captured(cache, gpu, check, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auto() is step_kernels
    assert check.calls == [] and not cache.exists()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert auto() is P and len(check.calls) == 1


def test_out_of_memory_is_not_a_verdict_to_keep(cache, gpu, monkeypatch):
    """A check that could not run (the GPU's memory full of the user's tensors) runs the step kernels with one
    warning in this process, stores nothing, and the next process checks again."""
    calls = []

    def full(device, mode, dtype):
        calls.append(mode)
        raise selfcheck.Inconclusive("planned tiles (T=10 B=10 I=8 H=200): the GPU's memory is full: CUDA OOM")

    monkeypatch.setattr(selfcheck, "run_checks", full)
    with pytest.warns(RuntimeWarning, match="could not be checked.*memory is full.*next process checks again") as rec:
        assert auto() is step_kernels and auto() is step_kernels
    assert len(rec) == 1 and len(calls) == 1 and not cache.exists()
    selfcheck.forget()
    monkeypatch.setattr(selfcheck, "run_checks", Recorder(""))
    assert auto() is P


def test_out_of_memory_during_the_check_is_inconclusive(monkeypatch):
    import urlstm_triton.parity as parity

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    monkeypatch.setattr(parity, "measure", oom)
    with pytest.raises(selfcheck.Inconclusive, match="planned tiles .*memory is full: OutOfMemoryError: CUDA out of memory"):
        selfcheck.run_checks("cpu", MODE_REFINE, torch.float32)


def test_bad_mode_is_a_clear_error(cache, gpu):
    with pytest.raises(ValueError, match="mode must be one of"):
        selfcheck.verdict(CUDA, 7, BF16)


# ----------------------------------------------------------------------- the check itself (interpreter)


def test_check_passes_on_correct_kernels_whatever_the_callers_context():
    """The real check, on CPU tensors in the interpreter: it passes, also when called from inside an inference
    call (inference mode or no_grad, autocast) as the dispatch may be, and leaves the caller's random state
    alone."""
    rng = torch.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert selfcheck.run_checks("cpu", MODE_REFINE, torch.float32) == ""
    with torch.no_grad():
        assert selfcheck.run_checks("cpu", MODE_TIED, torch.float16) == ""
    assert torch.equal(torch.get_rng_state(), rng)


def test_check_fails_on_a_wrong_gradient(monkeypatch):
    real = P.backward_sequence

    def wrong_dz(d_out, w_hh, gates, cs, dzs, dc, mode, config, **kw):
        real(d_out, w_hh, gates, cs, dzs, dc, mode, config, **kw)
        H = w_hh.shape[1]
        dzs[..., H:2 * H] *= 1.01  # a 1% error in the second gate block's derivative

    monkeypatch.setattr(P, "backward_sequence", wrong_dz)
    reason = selfcheck.run_checks("cpu", MODE_TIED, torch.float32)
    assert reason.startswith("planned tiles") and "relative error vs float64" in reason and "[u]" in reason


def test_check_fails_on_an_exception_with_its_message(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("persistent forward kernel: a grid barrier timed out\nsecond line")

    monkeypatch.setattr(P, "forward_sequence", broken)
    reason = selfcheck.run_checks("cpu", MODE_CLASSIC, torch.float32)
    assert reason.endswith("RuntimeError: persistent forward kernel: a grid barrier timed out")


@pytest.mark.cuda
def test_gpu_self_check_passes_and_is_fast_once_compiled(tmp_path):
    import time

    selfcheck.forget()
    for mode in (MODE_TIED, MODE_REFINE, MODE_CLASSIC):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            v = selfcheck.verdict(CUDA, mode, dtype, cache_dir=tmp_path)
            assert v.passed, v.reason
            start = time.perf_counter()
            assert selfcheck.run_checks(CUDA, mode, dtype) == ""
            assert time.perf_counter() - start < 1.0  # "a few hundred milliseconds" once compiled
    selfcheck.forget()
