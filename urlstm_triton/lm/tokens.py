"""The tokenised corpus: each split encoded once (``datasets.map`` with ``num_proc``) into a flat memmap.

Cache: ``<cache_dir>/tokens-<key>/{train,valid,test}.bin`` (uint16 when the vocabulary fits, else uint32) and
``meta.json``, written last (its presence marks a complete cache). ``key`` hashes the data key, the tokeniser's
sha256 and the encoding format, so new data or a new tokeniser gives a new cache. Each line is encoded and
followed by the end-of-sequence id, so line breaks are predicted and counted as words (as in the WikiText
literature). ``meta.json`` also records per split the number of whitespace words (+1 per line) and UTF-8 bytes
(+1 per newline) of the original text, which word-level perplexity and bits per byte divide by.

On load, a cache made with another tokeniser (stale), a file of the wrong size (truncated) or a token id beyond
the vocabulary raise ``DataError`` naming the file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np

from ..errors import DataError
from ..files import write_json_atomic
from .corpus import SPLITS, default_num_proc

log = logging.getLogger("urlstm_triton.lm")
ENCODING_FORMAT = 1  # bump when the way lines become ids changes
_processors: Dict[str, object] = {}


@dataclass
class TokenSplit:
    ids: np.ndarray  # a read-only memmap
    n_words: int
    n_bytes: int
    n_lines: int
    path: Path


def _processor(model_path: str):
    if model_path not in _processors:
        import sentencepiece as spm

        _processors[model_path] = spm.SentencePieceProcessor(model_file=model_path)
    return _processors[model_path]


def encode_lines(batch, model_path: str, eos_id: int):
    """``datasets.map`` function (module level so worker processes can pickle it)."""
    sp = _processor(model_path)
    texts = [t[:-1] if t.endswith("\n") else t for t in batch["text"]]
    ids = sp.encode(texts)
    return {
        "ids": [x + [eos_id] for x in ids],
        "n_words": [len(t.split()) + 1 for t in texts],
        "n_bytes": [len(t.encode("utf-8")) + 1 for t in texts],
    }


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def tokens_key(corpus_key: str, tokenizer_sha: str) -> str:
    return hashlib.sha256(f"{corpus_key}|{tokenizer_sha}|{ENCODING_FORMAT}".encode()).hexdigest()[:16]


def _build(corpus, sp, model_path: Path, num_proc: int, out: Path) -> dict:
    vocab = sp.get_piece_size()
    dtype = token_dtype(vocab)
    meta_splits = {}
    for split in SPLITS:
        ds = corpus.splits[split]
        nproc = default_num_proc(ds.num_rows, num_proc)
        mapped = ds.map(encode_lines, batched=True, batch_size=1000, num_proc=nproc if nproc > 1 else None,
                        remove_columns=ds.column_names, desc=f"tokenising {split}",
                        fn_kwargs={"model_path": str(model_path), "eos_id": sp.eos_id()})
        table = mapped.data
        n_words = int(sum(c.to_numpy().sum() for c in table.column("n_words").chunks))
        n_bytes = int(sum(c.to_numpy().sum() for c in table.column("n_bytes").chunks))
        chunks = table.column("ids").chunks
        total = int(sum(len(c.flatten()) for c in chunks))
        path = out / f"{split}.bin"
        mm = np.memmap(path, dtype=dtype, mode="w+", shape=(max(total, 1),))
        pos = 0
        for c in chunks:
            flat = c.flatten().to_numpy()
            mm[pos:pos + len(flat)] = flat
            pos += len(flat)
        mm.flush()
        del mm
        if total == 0:
            os.truncate(path, 0)
        meta_splits[split] = {"n_tokens": total, "n_words": n_words, "n_bytes": n_bytes, "n_lines": ds.num_rows}
        log.info("tokenised %s: %d lines, %d tokens, %d words, %d bytes", split, ds.num_rows, total, n_words,
                 n_bytes)
    return {"dtype": np.dtype(dtype).name, "vocab_size": vocab, "splits": meta_splits}


def load_token_splits(cache: Path, tokenizer_sha: str, vocab_size: int) -> Dict[str, TokenSplit]:
    """Open and check a complete cache; DataError naming the file if it is stale, truncated or out of vocab."""
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text())
    if meta.get("tokenizer_sha256") != tokenizer_sha:
        raise DataError(f"token cache {cache} is stale: it was made with another tokeniser (sha256 in {meta_path} "
                        "differs); delete it or pass --data.rebuild_cache true")
    if meta.get("vocab_size") != vocab_size:
        raise DataError(f"token cache {meta_path} says vocab_size={meta.get('vocab_size')}, the tokeniser has "
                        f"{vocab_size}; delete {cache} or pass --data.rebuild_cache true")
    dtype = np.dtype(meta["dtype"])
    out = {}
    for split in SPLITS:
        info = meta["splits"][split]
        path = cache / f"{split}.bin"
        if not path.exists():
            raise DataError(f"token cache file {path} is missing; pass --data.rebuild_cache true")
        expected = info["n_tokens"] * dtype.itemsize
        if path.stat().st_size != expected:
            raise DataError(f"token cache file {path} has {path.stat().st_size} bytes, {meta_path} says "
                            f"{expected}: truncated or overwritten; pass --data.rebuild_cache true")
        if info["n_tokens"] == 0:
            raise DataError(f"the {split} split tokenised to no tokens ({path}): the corpus is empty")
        ids = np.memmap(path, dtype=dtype, mode="r", shape=(info["n_tokens"],))
        top = int(ids.max())
        if top >= vocab_size:
            pos = int(np.argmax(ids >= vocab_size))
            raise DataError(f"token id {top} at position {pos} of {path} is beyond the vocabulary (size "
                            f"{vocab_size}); the cache does not match the tokeniser: pass --data.rebuild_cache true")
        out[split] = TokenSplit(ids, info["n_words"], info["n_bytes"], info["n_lines"], path)
    return out


def get_token_splits(cfg, corpus, sp, model_path: Path, tokenizer_sha: str, is_main: bool = True):
    """Tokenise (or reuse) every split; call under ``accelerator.main_process_first()``."""
    key = tokens_key(corpus.key, tokenizer_sha)
    cache = Path(cfg.data.cache_dir) / f"tokens-{key}"
    vocab = sp.get_piece_size()
    if (cache / "meta.json").exists() and not (cfg.data.rebuild_cache and is_main):
        log.info("token cache: reusing %s", cache)
        return load_token_splits(cache, tokenizer_sha, vocab), cache
    if not is_main:
        raise DataError(f"token cache {cache} is missing on a non-main process: data.cache_dir must be on a "
                        "file system all processes share")
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = _build(corpus, sp, model_path, cfg.data.num_proc, tmp)
    meta.update({"corpus_key": corpus.key, "tokenizer_sha256": tokenizer_sha, "format": ENCODING_FORMAT})
    write_json_atomic(meta, tmp / "meta.json")
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    return load_token_splits(cache, tokenizer_sha, vocab), cache
