"""The step kernels' tile tuner (urlstm_triton.tuning) and its candidates (kernels/step_plan.py), on a CPU: the
timing is replaced by a fake clock; what is tested is what it times, what it keeps, where it keeps it and
when it stays out of the way. The GPU run (scripts/gpu_check.sh) times it for real."""
import math

import pytest
import torch

from urlstm_triton import tuning
from urlstm_triton.benchmarks import CONFIGS
from urlstm_triton.kernels import MODE_REFINE, TileConfig, Tiles, pick_config
from urlstm_triton.kernels.step_plan import SPLITS, TUNE_MAX_SPLIT, tuning_candidates


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_candidates_start_with_the_model_pick_and_are_distinct_and_valid(name, backward):
    _, B, _, H = CONFIGS[name]
    cands = tuning_candidates(B, H, 4, 2, 2, backward)
    model = pick_config(B, H, True, "tf32", elem_bytes=2)
    assert cands[0] == (model.bwd if backward else model.fwd)
    assert len(cands) == len(set(cands)) >= 2
    assert [t for t in cands if t.gemm] == [cands[-1]]  # 16-bit operands: the library-GEMM step, last
    assert not any(t.gemm for t in tuning_candidates(B, H, 4, 4, 4, backward))  # fp32: its precision is torch's
    for t in cands[1:-1]:
        TileConfig(fwd=t if not backward else Tiles(), bwd=t if backward else Tiles())  # valid tiles
        width = t.block_h if backward else 4 * t.block_h
        assert width >= 64  # the MMA is at least 64 wide at these sizes
        assert t.num_warps == 4 and t.split_k <= TUNE_MAX_SPLIT
        assert t.block_b <= max(16, 1 << (B - 1).bit_length())
        tiles = math.ceil(B / t.block_b) * math.ceil(H / t.block_h)
        if t.split_k > 1:  # a split is only there to give the multiprocessors work: no smaller one would
            assert tiles * max(s for s in SPLITS if s < t.split_k) < 132


def test_candidates_hold_the_tilings_that_measured_fastest_on_the_h200():
    """BENCHMARKS.md's tile sweep: the fastest rows of lm-seed, big-batch and lm-1k are among the candidates."""
    def spec(t):
        return (t.block_b, t.block_h, t.block_k, t.split_k, t.num_warps)

    assert (64, 16, 64, 1, 4) in map(spec, tuning_candidates(128, 3072, 4, 2, 2, False))   # lm-seed fwd
    assert (64, 64, 64, 2, 4) in map(spec, tuning_candidates(128, 3072, 4, 2, 2, True))    # lm-seed bwd
    assert (64, 16, 64, 1, 4) in map(spec, tuning_candidates(256, 1024, 4, 2, 2, False))   # big-batch fwd
    assert (32, 128, 64, 3, 4) in map(spec, tuning_candidates(256, 1024, 4, 2, 2, True))   # big-batch bwd
    assert (16, 64, 64, 3, 4) in map(spec, tuning_candidates(64, 1024, 4, 2, 2, True))     # lm-1k bwd


def test_fastest_takes_the_minimum_and_reports_failures():
    a, b, c = Tiles(16, 16, 32), Tiles(32, 16, 32), Tiles(64, 16, 32)
    clock = {a: 3e-6, b: 1e-6}

    def timer(t):
        if t not in clock:
            raise RuntimeError("out of resources: shared memory\nsecond line")
        return clock[t]

    report = {}
    assert tuning.fastest([a, b, c], timer, report, "fwd") is b
    assert [row[1] for row in report["fwd_us"]] == [3.0, 1.0]
    assert report["failed"] == ["fwd {'block_b': 64, 'block_h': 16, 'block_k': 32, 'split_k': 1, 'num_warps': 4, "
                                "'num_stages': 3, 'epi_h': 16, 'gemm': False, 'pdl': False}: RuntimeError: out of "
                                "resources: shared memory"]
    assert tuning.fastest([c], timer, {}, "bwd") is None


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA device as far as the tuner asks (name, capture state); ``measure`` counts its calls."""
    calls = []
    fwd, bwd = Tiles(64, 16, 64, 1, 4, 4), Tiles(32, 128, 64, 3, 4, 3, 32)

    def measure(batch, hidden, mode, dtype, gate_dtype, device, precision):
        calls.append((batch, hidden))
        return fwd, bwd, {"fwd_us": [], "bwd_us": []}

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H200")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(tuning, "measure", measure)
    monkeypatch.delenv(tuning.TUNE_ENV, raising=False)
    tuning.forget()
    yield calls, fwd, bwd, tmp_path
    tuning.forget()


def _tuned(batch, cache_dir, **kw):
    return tuning.tuned_config(batch, 1024, MODE_REFINE, torch.bfloat16, torch.bfloat16, "cuda", "ieee",
                               cache_dir=cache_dir, **kw)


def test_tuned_once_per_size_then_from_memory_then_from_disk(fake_gpu):
    calls, fwd, bwd, cache = fake_gpu
    cfg = _tuned(256, cache)
    assert (cfg.fwd, cfg.bwd) == (fwd, bwd) and calls == [(256, 1024)]
    _tuned(256, cache)
    _tuned(200, cache)  # same power-of-two bucket: no new measurement
    assert calls == [(256, 1024)]
    tuning.forget()  # a new process: read back from the file
    assert (_tuned(256, cache).fwd, calls) == (fwd, [(256, 1024)])
    assert (cache / tuning.CACHE_FILE).exists()
    _tuned(64, cache)  # another bucket
    assert calls == [(256, 1024), (64, 1024)]


def test_the_cache_summary_names_the_choice_and_every_timed_candidate(fake_gpu, monkeypatch):
    """What scripts/gpu_check.sh prints of the tuner's file: the choice per direction, each candidate's time
    (fastest first, the library-GEMM step spelt gemm.BB.BH.WARPS) and what failed."""
    calls, fwd, _, cache = fake_gpu
    assert "no choices" in tuning.summarize_cache(cache)
    gemm = Tiles(16, 64, 16, gemm=True)
    timings = {"fwd_us": [[tuning._tiles_dict(fwd), 31.0]],
               "bwd_us": [[tuning._tiles_dict(Tiles(64, 64, 64, 2)), 57.5], [tuning._tiles_dict(gemm), 24.25]],
               "failed": ["bwd {...}: RuntimeError: out of resources"]}
    monkeypatch.setattr(tuning, "measure", lambda *a: (fwd, gemm, timings))
    assert _tuned(128, cache).bwd.gemm
    text = tuning.summarize_cache(cache)
    assert "chosen: fwd 64.16.64.1.4.16.4, bwd gemm.16.64.4" in text
    assert "bwd us/step: gemm.16.64.4 24.2, 64.64.64.2.4.64.3 57.5" in text
    assert "failed: bwd {...}: RuntimeError: out of resources" in text


def test_a_new_triton_or_gpu_is_tuned_again(fake_gpu, monkeypatch):
    import triton

    calls, _, _, cache = fake_gpu
    _tuned(256, cache)
    tuning.forget()
    monkeypatch.setattr(triton, "__version__", "99.0.0")
    _tuned(256, cache)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake B200")
    tuning.forget()
    _tuned(256, cache)
    assert len(calls) == 3


def test_untimed_when_disabled_capturing_or_not_cuda(fake_gpu, monkeypatch):
    calls, _, _, cache = fake_gpu
    model = TileConfig(fwd=Tiles(16, 16, 32), bwd=Tiles(16, 16, 32))
    monkeypatch.setenv(tuning.TUNE_ENV, "0")
    assert _tuned(256, cache, fallback=model) is model
    monkeypatch.delenv(tuning.TUNE_ENV)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _tuned(256, cache, fallback=model) is model
    assert tuning.tuned_config(256, 1024, MODE_REFINE, torch.float32, torch.float32, "cpu", fallback=model) is model
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert _tuned(32, cache, fallback=model) is not model  # 32 x 1024 rows x units: worth a tuning
    calls.clear()
    small = tuning.tuned_config(16, 1024, MODE_REFINE, torch.bfloat16, torch.bfloat16, "cuda", fallback=model,
                                cache_dir=cache)
    assert small is model  # 16 x 1024 < MIN_WORK: launch-bound, untimed
    assert calls == []


def test_nothing_timed_falls_back_to_the_model_with_one_warning(fake_gpu, monkeypatch):
    _, _, _, cache = fake_gpu
    monkeypatch.setattr(tuning, "measure", lambda *a: (None, None, {"failed": ["fwd ...: RuntimeError: boom"]}))
    model = TileConfig(fwd=Tiles(16, 16, 32), bwd=Tiles(16, 16, 32))
    with pytest.warns(RuntimeWarning, match="boom"):
        assert _tuned(256, cache, fallback=model) == model
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _tuned(256, cache, fallback=model) == model  # remembered: no second warning
    assert not (cache / tuning.CACHE_FILE).exists()  # a failure is not written down


def test_a_corrupt_cache_file_is_measured_over(fake_gpu):
    calls, fwd, _, cache = fake_gpu
    (cache / tuning.CACHE_FILE).write_text("{not json")
    assert _tuned(256, cache).fwd == fwd and len(calls) == 1


def test_the_interpreter_never_tunes(monkeypatch):
    """On a CPU (Triton's interpreter) the backend takes the model's pick and never calls the tuner."""
    from urlstm_triton.gates import parse_gate
    from urlstm_triton.triton_backend import triton_recurrence

    monkeypatch.setattr(tuning, "tuned_config", lambda *a, **k: pytest.fail("tuned on a CPU"))
    spec = parse_gate("UR")
    T, B, I, H = 3, 2, 4, 8
    out = triton_recurrence(torch.randn(T, B, I), torch.randn(4 * H, I), torch.randn(4 * H, H), torch.zeros(4 * H),
                            torch.zeros(B, H), torch.zeros(B, H), spec)
    assert out[0].shape == (T, B, H)


def test_the_fastest_fused_tiling_is_timed_again_with_pdl_and_kept_only_if_faster():
    pick = Tiles(64, 16, 64, 1, 4, 4)
    clock = {pick: 3e-6}

    def timer(t):
        if t not in clock:
            raise RuntimeError("griddepcontrol needs sm_90")
        return clock[t]

    report = {"fwd_us": [[tuning._tiles_dict(pick), 3.0]]}  # as fastest() left it
    assert tuning.with_pdl_if_faster(pick, timer, report, "fwd") is pick  # the variant failed: said, not kept
    assert "'pdl': True}: RuntimeError: griddepcontrol needs sm_90" in report["failed"][0]
    faster, slower = Tiles(64, 16, 64, 1, 4, 4, pdl=True), 5e-6
    clock[faster] = 2e-6
    report = {"fwd_us": [[tuning._tiles_dict(pick), 3.0]]}
    assert tuning.with_pdl_if_faster(pick, timer, report, "fwd") == faster
    assert [us for _, us in report["fwd_us"]] == [3.0, 2.0]  # both timings stay in the report
    clock[faster] = slower
    assert tuning.with_pdl_if_faster(pick, timer, {"fwd_us": [[tuning._tiles_dict(pick), 3.0]]}, "fwd") is pick


@pytest.mark.parametrize("supported", [True, False], ids=["sm90", "older"])
def test_measure_tries_pdl_for_fused_picks_where_the_gpu_has_it(monkeypatch, supported):
    """Per direction: the candidates, then (sm_90+) the winner with pdl; a library-GEMM winner is left as it is."""
    import contextlib

    fused, gemm = Tiles(64, 16, 64, 1, 4, 4), Tiles(16, 64, 16, gemm=True)
    timed = []
    clock = {fused: 3e-6, gemm: 1e-6, Tiles(64, 16, 64, 1, 4, 4, pdl=True): 2e-6}

    def time_launches(tiles, backward, mode, buf, precision):
        timed.append((backward, tiles))
        return clock[tiles] if backward or not tiles.gemm else 9e-6  # forward: the fused tiling wins

    monkeypatch.setattr(tuning.torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(tuning, "_buffers", lambda *a: {})
    monkeypatch.setattr(tuning, "tuning_candidates", lambda *a: [fused, gemm])
    monkeypatch.setattr(tuning, "time_launches", time_launches)
    monkeypatch.setattr(tuning, "pdl_supported", lambda device: supported)
    fwd, bwd, report = tuning.measure(128, 1024, MODE_REFINE, torch.bfloat16, torch.bfloat16, "cuda:0", "ieee")
    assert fwd == Tiles(64, 16, 64, 1, 4, 4, pdl=supported) and bwd == gemm
    assert [t.pdl for bw, t in timed] == [False, False, True][:3 if supported else 2] + [False, False]
    assert len(report["fwd_us"]) == (3 if supported else 2) and len(report["bwd_us"]) == 2


def test_tile_specs_read_back_and_old_cache_entries_without_pdl_load():
    for t in (Tiles(64, 16, 64, 1, 4, 4), Tiles(64, 64, 64, 2, 4, 3, 16, pdl=True), Tiles(16, 64, 16, gemm=True)):
        assert tuning.parse_tile_spec(tuning.tile_spec(t)) == t
    assert tuning.tile_spec(Tiles(32, 128, 64, 3, 4, 3, 32, pdl=True)) == "32.128.64.3.4.32.3.pdl"
    assert tuning.parse_tile_spec("32.16.64.1.4") == Tiles(32, 16, 64, 1, 4)  # epi and stages default
    for bad in ("32.16.64.1", "gemm.16.64", "32.16.64.1.4.pdl.3", "32.16.64.1.4.16.3.9"):
        with pytest.raises(ValueError):
            tuning.parse_tile_spec(bad)
    old = {k: v for k, v in tuning._tiles_dict(Tiles(64, 64, 64, 2)).items() if k != "pdl"}  # written before pdl
    assert tuning._valid({"fwd": old, "bwd": old}) and tuning._from_entry({"fwd": old, "bwd": old})[0].pdl is False
