"""``main`` of ``train/lm.py``: config -> run session -> data -> model -> Trainer -> summary.

Works under ``accelerate launch`` (any number of processes) and as plain ``python train/lm.py``.
"""
from __future__ import annotations

import logging
import shutil
from typing import Optional, Sequence

from ..training import RunSession, Trainer, parse_config, run_main
from .config import PRESETS, LMConfig
from .data import prepare_data
from .model import build_model
from .objective import LMObjective

log = logging.getLogger("urlstm_triton.lm")


def main(argv: Optional[Sequence[str]] = None) -> dict:
    from accelerate.utils import set_seed

    cfg = parse_config(LMConfig, argv, PRESETS, default_preset="quickstart", prog="train/lm.py")
    with RunSession(cfg, "lm") as session:
        acc = session.accelerator
        with acc.main_process_first():
            data = prepare_data(cfg, is_main=acc.is_main_process)
        if acc.is_main_process:
            shutil.copyfile(data.tokenizer_path, session.run_dir / "tokenizer.model")
        sizes = ", ".join(f"{s} {len(t.ids):,}" for s, t in data.splits.items())
        log.info("data: %s; vocabulary %d; tokens: %s (cache %s)", data.description, data.vocab_size, sizes,
                 data.token_cache)
        set_seed(cfg.train.seed)  # the same initial parameters on every process and for every data source
        model = build_model(cfg.model, data.vocab_size, cfg.data.bptt)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %s, %.2fM parameters", cfg.model.variant, n_params / 1e6)
        summary = Trainer(session, model, LMObjective(cfg, data, acc)).fit()
        if acc.is_main_process:
            for split, m in summary["eval"].items():
                line = f"{split}: loss {m['loss']:.4f}  token ppl {m['ppl']:.2f}"
                if "word_ppl" in m:
                    line += f"  word ppl {m['word_ppl']:.2f}  bits/byte {m['bits_per_byte']:.4f}"
                print(line, flush=True)
            print(f"summary: {session.run_dir / 'summary.json'}", flush=True)
    return summary


def cli(argv: Optional[Sequence[str]] = None) -> None:
    run_main(main, argv)
