"""Everything the LM needs from its data, prepared once: corpus -> tokeniser -> tokenised splits.

``prepare_data(cfg, is_main)`` is called under ``accelerator.main_process_first()``: the main process trains
the tokeniser and tokenises the corpus (or finds both cached), the others then load the caches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

from .corpus import load_corpus
from .tokenizer import get_tokenizer
from .tokens import TokenSplit, get_token_splits


@dataclass
class LMData:
    splits: Dict[str, TokenSplit]
    vocab_size: int
    eos_id: int
    tokenizer_path: Path
    token_cache: Path
    description: str


def prepare_data(cfg, is_main: bool = True) -> LMData:
    corpus = load_corpus(cfg)
    sp, model_path, sha = get_tokenizer(cfg, corpus, is_main)
    splits, cache = get_token_splits(cfg, corpus, sp, model_path, sha, is_main)
    return LMData(splits, sp.get_piece_size(), sp.eos_id(), Path(model_path), cache, corpus.description)
