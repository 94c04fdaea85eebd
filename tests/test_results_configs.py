"""The sweep files under results/ parse, and every run they expand to is a valid command line of its trainer,
so a committed grid cannot hold a typo that only shows hours into a sweep; the wt2 LM preset parses."""
from pathlib import Path

import pytest

from conftest import ROOT
from urlstm_triton.lm.config import PRESETS as LM_PRESETS, LMConfig
from urlstm_triton.tasks.config import SYNTHETIC_PRESETS, VISION_PRESETS, SyntheticJobConfig, VisionJobConfig
from urlstm_triton.tasks.sweep import expand, load_sweep
from urlstm_triton.training import parse_config

PARSERS = {"synthetic": (SyntheticJobConfig, SYNTHETIC_PRESETS), "vision": (VisionJobConfig, VISION_PRESETS),
           "lm": (LMConfig, LM_PRESETS)}
SWEEPS = sorted((ROOT / "results").rglob("*.json"))
SWEEPS = [p for p in SWEEPS if '"job"' in p.read_text()[:2000] and p.name != "summary.json"]


def test_there_are_sweep_files():
    assert {p.stem for p in SWEEPS} >= {"copy", "adding", "master-copy", "master-adding", "smnist", "pmnist", "wt2",
                                        "copy-lag480", "adding-T2000", "scifar", "wt103"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_run_of_a_sweep_file_parses(path, tmp_path):
    sweep = load_sweep(path)
    cls, presets = PARSERS[sweep.job]
    runs = expand(sweep, tmp_path)
    assert len(runs) == len(sweep.variants) * len(sweep.seeds) * len(sweep.sizes)
    for run in runs:
        cfg = parse_config(cls, run.argv, presets=presets)
        assert cfg.train.seed == run.seed and Path(cfg.run.dir) == run.dir and cfg.run.resume


def test_wt2_preset_reads_wikitext2_from_the_hub():
    cfg = parse_config(LMConfig, ["--preset", "wt2"], presets=LM_PRESETS)
    assert (cfg.data.source, cfg.data.hf_config) == ("hf", "wikitext-2-raw-v1")
