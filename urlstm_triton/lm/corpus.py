"""Raw text corpora for the language model: train/valid/test splits as ``datasets.Dataset`` of lines.

Sources (``data.source``):

- ``pydoc``: Python's own ``pydoc_data.topics`` (~465k characters of English documentation), present wherever
  Python is: the offline quickstart corpus. Topics are split in order, the last ones forming valid and test.
- ``hf``: a Hugging Face dataset (default ``Salesforce/wikitext``, ``wikitext-103-raw-v1``). Without network
  this fails with a message that says how to use local files instead.
- ``files``: local ``.txt`` (one line per row) or ``.parquet`` files (column ``data.text_column``), given as
  ``split=PATH`` or with ``train``/``valid``/``test`` in their names; missing valid/test splits are cut from
  the end of the training rows.

Each row is one line of text (a trailing newline is ignored). ``key`` fingerprints the data so that caches
built from it can be found again and told apart.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from ..errors import DataError

log = logging.getLogger("urlstm_triton.lm")
SPLITS = ("train", "valid", "test")
_SPLIT_WORDS = {"train": ("train",), "valid": ("valid", "validation", "val", "dev"), "test": ("test",)}
SMALL_FILE_BYTES = 64 << 20  # below this, text files are read directly (faster than the datasets builder)


@dataclass
class Corpus:
    splits: Dict[str, "datasets.Dataset"]  # noqa: F821 - rows with a "text" column
    key: str  # fingerprint of the data (not of tokenisation)
    description: str


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _holdout(rows: List[str], frac: float, missing: List[str]) -> Dict[str, List[str]]:
    """Cut ``frac`` of the rows per missing split off the end: ... train | valid | test."""
    k = max(1, int(len(rows) * frac))
    out = {}
    end = len(rows)
    for split in reversed([s for s in ("valid", "test") if s in missing]):
        out[split] = rows[end - k:end]
        end -= k
    out["train"] = rows[:end]
    return out


def _pydoc(cfg) -> Corpus:
    from pydoc_data.topics import topics

    import datasets

    texts = [topics[k] for k in sorted(topics)]
    rows = "\n".join(texts).split("\n")
    parts = _holdout(rows, cfg.data.holdout, ["valid", "test"])
    splits = {s: datasets.Dataset.from_dict({"text": r}) for s, r in parts.items()}
    key = _sha("pydoc", _sha(*texts), cfg.data.holdout)
    return Corpus(splits, key, "pydoc_data.topics (offline)")


def _assign_files(files: List[str]) -> Dict[str, List[Path]]:
    out: Dict[str, List[Path]] = {s: [] for s in SPLITS}
    for spec in files:
        split, eq, path = spec.partition("=")
        if eq:
            split = {"validation": "valid", "val": "valid", "dev": "valid"}.get(split, split)
            if split not in SPLITS:
                raise DataError(f"--data.files: unknown split {split!r} in {spec!r}; use train=, valid= or test=")
        else:
            path = spec
            name = Path(spec).name.lower()
            found = [s for s, words in _SPLIT_WORDS.items()
                     if any(re.search(rf"(^|[^a-z]){w}([^a-z]|$)", name) for w in words)]
            if len(found) != 1:
                raise DataError(f"--data.files: cannot tell which split {spec} is; write train={spec} (or valid=, "
                                "test=), or put train/valid/test in the file name")
            split = found[0]
        p = Path(path)
        if not p.is_file():
            raise DataError(f"--data.files: {p} does not exist or is not a file")
        if p.suffix not in (".txt", ".parquet", ".raw", ".tokens"):
            raise DataError(f"--data.files: {p} is neither text (.txt/.raw/.tokens) nor .parquet")
        out[split].append(p)
    if not out["train"]:
        raise DataError("--data.files: no training file; give train=PATH (valid/test are cut from it if absent)")
    return out


def _check_parquet(path: Path, column: str) -> None:
    """A readable parquet file with a text column ``column``, checked from its footer (no rows read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    if column not in schema.names:
        raise DataError(f"{path}: no column {column!r} (columns: {schema.names}); set --data.text_column")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not text; set --data.text_column to the text "
                        f"column (columns: {schema.names})")


def _text_column(ds, column: str, where) -> "datasets.Dataset":  # noqa: F821
    """The rows' ``column`` as a dataset with one ``text`` column of strings; DataError naming ``where`` if it is
    missing or is not text."""
    if column not in ds.column_names:
        raise DataError(f"{where}: no column {column!r} (columns: {ds.column_names}); set --data.text_column")
    kind = getattr(ds.features[column], "dtype", None)
    if kind not in ("string", "large_string"):
        raise DataError(f"{where}: column {column!r} holds {kind or ds.features[column]}, not text; set "
                        f"--data.text_column to the text column (columns: {ds.column_names})")
    return ds.select_columns([column]).rename_column(column, "text") if column != "text" else \
        ds.select_columns(["text"])


def _read_rows(paths: List[Path], column: str):
    import datasets

    parquet = [p for p in paths if p.suffix == ".parquet"]
    text = [p for p in paths if p.suffix != ".parquet"]
    if parquet and text:
        raise DataError(f"--data.files: mix of parquet and text files in one split: {parquet[0]}, {text[0]}")
    if parquet:
        for p in parquet:
            _check_parquet(p, column)
        ds = datasets.Dataset.from_parquet([str(p) for p in parquet])
        return _text_column(ds, column, parquet[0])
    if sum(p.stat().st_size for p in text) > SMALL_FILE_BYTES:
        ds = datasets.load_dataset("text", data_files=[str(p) for p in text], split="train")
        return ds
    rows: List[str] = []
    for p in text:
        try:
            rows.extend(p.read_text(encoding="utf-8").split("\n"))
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text ({e})") from None
        if rows and rows[-1] == "":
            rows.pop()  # the newline that ends the file is not an extra empty line
    return datasets.Dataset.from_dict({"text": rows})


def _files(cfg) -> Corpus:
    import datasets

    by_split = _assign_files(cfg.data.files)
    key_parts = ["files", cfg.data.holdout, cfg.data.text_column]
    for split in SPLITS:
        for p in by_split[split]:
            st = p.stat()
            key_parts += [split, str(p.resolve()), st.st_size, st.st_mtime_ns]
    splits = {s: _read_rows(ps, cfg.data.text_column) for s, ps in by_split.items() if ps}
    missing = [s for s in ("valid", "test") if s not in splits]
    if missing:
        rows = splits["train"]["text"]
        log.info("no %s file given: cutting %s of the training rows for each", "/".join(missing),
                 f"{cfg.data.holdout:.0%}")
        cut = _holdout(rows, cfg.data.holdout, missing)
        for s, r in cut.items():
            splits[s] = datasets.Dataset.from_dict({"text": r})
    desc = ", ".join(f"{s}={'+'.join(map(str, ps))}" for s, ps in by_split.items() if ps)
    return Corpus(splits, _sha(*key_parts), desc)


def _hf(cfg) -> Corpus:
    import datasets

    name, conf = cfg.data.hf_name, cfg.data.hf_config
    try:
        dd = datasets.load_dataset(name, conf)
    except Exception as e:  # noqa: BLE001 - any failure here (network, hub, auth) gets the same advice
        raise DataError(
            f"could not load the Hugging Face dataset {name} ({conf}): {type(e).__name__}: {e}\n"
            "Without network, download the data elsewhere and point at local files, e.g.\n"
            "  --data.source files --data.files train=wiki.train.raw valid=wiki.valid.raw test=wiki.test.raw\n"
            "(text or parquet; Salesforce/wikitext's parquet files work as they are), or train on the offline "
            "corpus with --data.source pydoc") from None
    names = {"train": "train", "valid": "validation" if "validation" in dd else "valid", "test": "test"}
    splits = {}
    for s, n in names.items():
        if n not in dd:
            raise DataError(f"{name} ({conf}) has no {n!r} split (it has {list(dd)})")
        splits[s] = _text_column(dd[n], cfg.data.text_column, f"{name} ({conf})")
    key = _sha("hf", name, conf, *[splits[s]._fingerprint for s in SPLITS])
    return Corpus(splits, key, f"{name} ({conf})")


def load_corpus(cfg) -> Corpus:
    """The train/valid/test splits of ``cfg.data``; raises DataError naming the file/source if a split is empty."""
    corpus = {"pydoc": _pydoc, "hf": _hf, "files": _files}[cfg.data.source](cfg)
    for split in SPLITS:
        ds = corpus.splits[split]
        if ds.num_rows == 0 or not any(t.strip() for t in ds[: min(ds.num_rows, 100_000)]["text"]):
            raise DataError(f"the {split} split of {corpus.description} is empty (no non-blank line); "
                            "check the file or --data.files")
    return corpus


def default_num_proc(rows: int, requested: int) -> int:
    if requested:
        return requested
    return 1 if rows < 200_000 else max(1, min(16, os.cpu_count() or 1))
