"""The sentencepiece tokeniser: trained on the train split once, cached by data + settings, then reused.

Cache: ``<cache_dir>/tokenizer-<key>/`` with ``spm.model`` and ``meta.json`` (the settings it was trained with,
the data key, the model's sha256). ``key`` hashes the data key and the tokeniser settings, so any change gives a
new tokeniser. A cache whose ``meta.json`` disagrees with the settings asked for, or whose model file has
changed, is reported (``DataError`` naming the file and the field) rather than silently used. With
``tokenizer.model_file`` a given model is used instead; its vocabulary size must equal ``tokenizer.vocab_size``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import sha256_file, write_json_atomic

log = logging.getLogger("urlstm_triton.lm")


def tokenizer_settings(cfg) -> dict:
    s = dataclasses.asdict(cfg.tokenizer)
    s.pop("model_file")
    return s


def tokenizer_key(cfg, data_key: str) -> str:
    blob = json.dumps({"data": data_key, "settings": tokenizer_settings(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_processor(path):
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"tokeniser {path} cannot be loaded (corrupt or not a sentencepiece model): {e}") from None


def _train(cfg, train_rows, out_dir: Path) -> None:
    import sentencepiece as spm

    t = cfg.tokenizer
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "train_sample.txt"
    n = train_rows.num_rows
    idx = list(range(n))
    if n > t.sample_lines:  # a fixed random sample keeps training time bounded on big corpora
        idx = sorted(random.Random(0).sample(idx, t.sample_lines))
    with open(text_file, "w", encoding="utf-8") as fh:
        for start in range(0, len(idx), 10_000):
            for line in train_rows.select(idx[start:start + 10_000])["text"]:
                line = line.strip()
                if line:
                    fh.write(line + "\n")
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(out_dir / "spm"), model_type=t.type, vocab_size=t.vocab_size,
            byte_fallback=t.byte_fallback, character_coverage=t.character_coverage,
            input_sentence_size=t.sample_lines, shuffle_input_sentence=True, max_sentence_length=1 << 16,
            num_threads=max(1, min(16, os.cpu_count() or 1)), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            hard_vocab_limit=True, minloglevel=2)
    except RuntimeError as e:
        raise ConfigError(f"tokenizer.vocab_size={t.vocab_size}: sentencepiece could not train on this corpus: "
                          f"{str(e).strip().splitlines()[-1]}") from None
    finally:
        text_file.unlink(missing_ok=True)


def get_tokenizer(cfg, corpus, is_main: bool = True):
    """``(SentencePieceProcessor, model path, sha256)``; trains and caches it if needed (main process only:
    call under ``accelerator.main_process_first()``)."""
    t = cfg.tokenizer
    if t.model_file:
        path = Path(t.model_file)
        if not path.is_file():
            raise DataError(f"tokenizer.model_file: {path} does not exist")
        sp = load_processor(path)
        if sp.get_piece_size() != t.vocab_size:
            raise DataError(f"tokenizer.model_file {path} has {sp.get_piece_size()} pieces but "
                            f"tokenizer.vocab_size is {t.vocab_size}: make them agree")
        return sp, path, sha256_file(path)
    key = tokenizer_key(cfg, corpus.key)
    cache = Path(cfg.data.cache_dir) / f"tokenizer-{key}"
    model, meta_path = cache / "spm.model", cache / "meta.json"
    want = {"data_key": corpus.key, "settings": tokenizer_settings(cfg)}
    if meta_path.exists() and model.exists():
        meta = json.loads(meta_path.read_text())
        for field in want["settings"]:
            if meta.get("settings", {}).get(field) != want["settings"][field]:
                raise DataError(
                    f"tokeniser cache {cache} was trained with tokenizer.{field}="
                    f"{meta.get('settings', {}).get(field)!r} but the config asks for {want['settings'][field]!r}; "
                    f"delete {cache} to retrain it")
        if meta.get("data_key") != corpus.key:
            raise DataError(f"tokeniser cache {cache} was trained on other data; delete {cache} to retrain it")
        sha = sha256_file(model)
        if sha != meta.get("sha256"):
            raise DataError(f"tokeniser cache {model} has changed since it was trained (sha256 differs from "
                            f"{meta_path}); delete {cache} to retrain it")
        log.info("tokeniser: reusing %s", model)
        return load_processor(model), model, sha
    if not is_main:
        raise DataError(f"tokeniser cache {cache} is missing on a non-main process: the run directory and "
                        "data.cache_dir must be on a file system all processes share")
    log.info("tokeniser: training a %s sentencepiece model, %d pieces, on %d train lines", t.type, t.vocab_size,
             corpus.splits["train"].num_rows)
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _train(cfg, corpus.splits["train"], tmp)
    sha = sha256_file(tmp / "spm.model")
    write_json_atomic({**want, "sha256": sha, "vocab_size": t.vocab_size}, tmp / "meta.json")
    shutil.rmtree(cache, ignore_errors=True)
    os.replace(tmp, cache)
    return load_processor(model), model, sha
