"""Language-model metrics from a total negative log-likelihood (natural log, summed over tokens).

- token perplexity: ``exp(nll / tokens)``;
- word-level perplexity: ``exp(nll / words)``, where ``words`` counts the whitespace-separated words of the
  original text plus one end-of-line per line, as the WikiText literature counts them (Merity et al.'s
  ``line.split() + ['<eos>']``): comparable across tokenisers, since every tokenisation of the same text must
  pay the same total NLL;
- bits per byte: ``nll / ln 2 / bytes`` (UTF-8 bytes of the text, newlines included).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Tuple


def count_words_bytes(lines: Iterable[str]) -> Tuple[int, int]:
    """``(words, bytes)`` of text given as lines (without their newline)."""
    words = nbytes = 0
    for line in lines:
        words += len(line.split()) + 1
        nbytes += len(line.encode("utf-8")) + 1
    return words, nbytes


def lm_metrics(nll: float, tokens: int, words: int = 0, nbytes: int = 0) -> Dict[str, float]:
    loss = nll / tokens
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": tokens}
    if words:
        out["word_ppl"] = math.exp(min(nll / words, 700.0))
    if nbytes:
        out["bits_per_byte"] = nll / math.log(2) / nbytes
    return out
