"""Language modelling with the UR-LSTM (``train/lm.py``): corpus, tokeniser, token cache, TBPTT batching,
model, metrics, the Trainer's objective and the job's ``main``.

Modules: config (``LMConfig``, presets), corpus (pydoc / Hugging Face / local files), tokenizer (sentencepiece,
cached), tokens (memmap token cache), data (all three together), batching (per-process contiguous rows, eval
windows), model (``LanguageModel``), metrics (perplexity, word-level perplexity, bits per byte), objective
(``LMObjective``), job (``main``).
"""
from .config import PRESETS, LMConfig
from .metrics import count_words_bytes, lm_metrics
from .model import LanguageModel, build_model

__all__ = ["LMConfig", "PRESETS", "LanguageModel", "build_model", "lm_metrics", "count_words_bytes"]
