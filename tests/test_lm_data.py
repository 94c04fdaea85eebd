"""LM data: metrics arithmetic, corpus splits, tokeniser and token caches (reuse, stale, out of vocabulary,
empty), per-process contiguous rows, evaluation windows."""
import json
import math

import numpy as np
import pytest
import torch

from lm_helpers import tiny_args
from urlstm_triton.lm.batching import TrainStream, eval_windows
from urlstm_triton.lm.config import PRESETS, LMConfig
from urlstm_triton.lm.corpus import load_corpus
from urlstm_triton.lm.data import prepare_data
from urlstm_triton.lm.metrics import count_words_bytes, lm_metrics
from urlstm_triton.training import ConfigError, DataError, parse_config


def cfg_for(tmp_path, corpus, *extra):
    return parse_config(LMConfig, tiny_args(tmp_path / "run", tmp_path / "cache", corpus, *extra), PRESETS)


def test_word_level_perplexity_arithmetic_on_a_hand_made_example():
    lines = ["the cat sat", "", "on  the mat ."]  # 3 + 1, 0 + 1, 4 + 1 words (one end-of-line each)
    words, nbytes = count_words_bytes(lines)
    assert words == 10
    assert nbytes == (11 + 1) + (0 + 1) + (13 + 1)
    nll = 23.0  # e.g. 20 sub-word tokens whose NLLs sum to 23 nats
    m = lm_metrics(nll, tokens=20, words=words, nbytes=nbytes)
    assert m["loss"] == pytest.approx(23 / 20)
    assert m["ppl"] == pytest.approx(math.exp(23 / 20))
    assert m["word_ppl"] == pytest.approx(math.exp(23 / 10))
    assert m["bits_per_byte"] == pytest.approx(23 / math.log(2) / 27)


def test_token_cache_counts_words_and_bytes_of_the_original_text(tmp_path, corpus):
    data = prepare_data(cfg_for(tmp_path, corpus))
    lines = corpus["valid"].read_text().split("\n")[:-1]
    words, nbytes = count_words_bytes(lines)
    v = data.splits["valid"]
    assert (v.n_words, v.n_bytes, v.n_lines) == (words, nbytes, len(lines))
    assert v.ids.dtype == np.uint16 and int(v.ids.max()) < data.vocab_size
    assert int((np.asarray(v.ids) == data.eos_id).sum()) == len(lines)  # one end-of-line id per line


def test_tokenizer_and_token_caches_are_reused(tmp_path, corpus, caplog):
    cfg = cfg_for(tmp_path, corpus)
    first = prepare_data(cfg)
    stamp = (first.tokenizer_path.stat().st_mtime_ns, (first.token_cache / "train.bin").stat().st_mtime_ns)
    with caplog.at_level("INFO", logger="urlstm_triton.lm"):
        second = prepare_data(cfg)
    assert "tokeniser: reusing" in caplog.text and "token cache: reusing" in caplog.text
    assert second.tokenizer_path == first.tokenizer_path and second.token_cache == first.token_cache
    assert stamp == (second.tokenizer_path.stat().st_mtime_ns,
                     (second.token_cache / "train.bin").stat().st_mtime_ns)
    # other tokeniser settings -> another cache, not a reuse
    third = prepare_data(cfg_for(tmp_path, corpus, "--tokenizer.vocab_size", "280"))
    assert third.tokenizer_path != first.tokenizer_path and third.vocab_size == 280


def test_tokenizer_cache_from_different_settings_is_reported(tmp_path, corpus):
    cfg = cfg_for(tmp_path, corpus)
    data = prepare_data(cfg)
    meta = data.tokenizer_path.parent / "meta.json"
    m = json.loads(meta.read_text())
    m["settings"]["vocab_size"] = 999
    meta.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"tokeniser cache .* tokenizer.vocab_size=999 but the config asks for 300"):
        prepare_data(cfg)


def test_given_tokenizer_model_must_match_vocab_size(tmp_path, corpus):
    data = prepare_data(cfg_for(tmp_path, corpus))
    cfg = cfg_for(tmp_path, corpus, "--tokenizer.model_file", str(data.tokenizer_path), "--tokenizer.vocab_size",
                  "512")
    with pytest.raises(DataError, match="has 300 pieces but tokenizer.vocab_size is 512"):
        prepare_data(cfg)


def test_stale_truncated_and_out_of_vocab_token_caches_are_reported(tmp_path, corpus):
    cfg = cfg_for(tmp_path, corpus)
    data = prepare_data(cfg)
    cache = data.token_cache
    meta_path = cache / "meta.json"
    good_meta = meta_path.read_text()
    m = json.loads(good_meta)
    m["tokenizer_sha256"] = "0" * 64
    meta_path.write_text(json.dumps(m))
    with pytest.raises(DataError, match="token cache .* is stale"):
        prepare_data(cfg)
    meta_path.write_text(good_meta)
    ids = np.memmap(cache / "valid.bin", dtype=np.uint16, mode="r+")
    ids[5] = 4000
    ids.flush()
    del ids
    with pytest.raises(DataError, match=r"token id 4000 at position 5 of .*valid.bin is beyond the vocabulary"):
        prepare_data(cfg)
    with open(cache / "valid.bin", "r+b") as fh:
        fh.truncate(8)
    with pytest.raises(DataError, match=r"valid.bin has 8 bytes"):
        prepare_data(cfg)
    rebuilt = prepare_data(cfg_for(tmp_path, corpus, "--data.rebuild_cache", "true"))
    assert int(rebuilt.splits["valid"].ids.max()) < 300


def test_empty_corpus_and_missing_files_are_reported(tmp_path, corpus):
    corpus["train"].write_text("\n  \n\n")
    with pytest.raises(DataError, match=r"the train split of .*train.txt.* is empty"):
        load_corpus(cfg_for(tmp_path, corpus))
    corpus["train"] = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="nope.txt does not exist"):
        load_corpus(cfg_for(tmp_path, corpus))


def test_file_split_names_and_holdout(tmp_path, corpus):
    base = tiny_args(tmp_path / "run", tmp_path / "cache", corpus)
    i = base.index("--data.files")
    argv = base[:i + 1] + [str(corpus["train"])] + base[i + 4:]
    c = load_corpus(parse_config(LMConfig, argv, PRESETS))
    n = len(corpus["train"].read_text().split("\n")) - 1
    k = int(n * 0.05)
    assert (c.splits["train"].num_rows, c.splits["valid"].num_rows, c.splits["test"].num_rows) == (n - 2 * k, k, k)
    odd = tmp_path / "text" / "corpus.txt"
    odd.write_text("a b\n")
    argv = base[:i + 1] + [str(odd)] + base[i + 4:]
    with pytest.raises(DataError, match="cannot tell which split .*corpus.txt is"):
        load_corpus(parse_config(LMConfig, argv, PRESETS))


def test_pydoc_corpus_is_offline_and_split():
    cfg = parse_config(LMConfig, [], PRESETS, default_preset="quickstart")
    c = load_corpus(cfg)
    sizes = {s: sum(map(len, ds["text"])) for s, ds in c.splits.items()}
    assert sizes["train"] > 300_000 and sizes["valid"] > 10_000 and sizes["test"] > 10_000


def test_each_rank_owns_contiguous_rows_of_the_global_layout():
    ids = np.arange(1000, dtype=np.uint16)
    single = TrainStream(ids, batch_size=4, bptt=10)
    ranks = [TrainStream(ids, batch_size=4, bptt=10, rank=r, world=2) for r in (0, 1)]
    assert [(s.first_row, s.last_row) for s in ranks] == [(0, 2), (2, 4)]
    for step in (1, 2, 24, 25):  # 24 windows per epoch: 25 wraps to the start
        x, y = single.window(step)
        parts = [s.window(step) for s in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts], 1), x)
        assert torch.equal(y[:-1], x[1:])  # targets are the inputs shifted by one
    x1, _ = single.window(1)
    x2, _ = single.window(2)
    assert torch.equal(x2[0], x1[-1] + 1)  # the next window continues each row: text stays contiguous
    assert single.position(25) == (1, 0)
    with pytest.raises(ConfigError, match="data.batch_size=4 rows"):
        TrainStream(ids[:30], batch_size=4, bptt=10)


def test_eval_windows_predict_every_token_once():
    ids = np.arange(3, 103, dtype=np.uint16)
    for world in (1, 2):
        targets = []
        for rank in range(world):
            for x, y, m in eval_windows(ids, 0, rows=3, bptt=7, rank=rank, world=world):
                targets += y[m].tolist()
                assert torch.equal(x[1:][m[1:]], (y[:-1][m[1:]]))
        assert sorted(targets) == ids.tolist()


def test_word_count_of_the_wikitext_test_split_matches_the_literature(tmp_path):
    """Word-level perplexity on WikiText is NLL / 245,569 on test and / 217,646 on valid (Merity et al.'s
    counts, end-of-line included); the local files loader must count exactly that."""
    from conftest import DATA

    wt2 = DATA / "wikitext-2"
    if not (wt2 / "test.txt").exists():
        pytest.skip("data/wikitext-2 not present")
    argv = ["--data.source", "files", "--data.files", f"train={wt2 / 'valid.txt'}", f"valid={wt2 / 'valid.txt'}",
            f"test={wt2 / 'test.txt'}", "--run.dir", str(tmp_path)]
    c = load_corpus(parse_config(LMConfig, argv, PRESETS))
    assert count_words_bytes(c.splits["test"]["text"])[0] == 245_569
    assert count_words_bytes(c.splits["valid"]["text"])[0] == 217_646


def test_parquet_files_with_hugging_face_split_names(tmp_path, corpus):
    import datasets

    files = []
    for split, hf_name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        rows = corpus[split].read_text().split("\n")[:-1]
        p = tmp_path / f"{hf_name}-00000-of-00001.parquet"
        datasets.Dataset.from_dict({"text": [r + "\n" for r in rows]}).to_parquet(str(p))
        files.append(str(p))
    base = tiny_args(tmp_path / "run", tmp_path / "cache", corpus)
    i = base.index("--data.files")
    cfg = parse_config(LMConfig, base[:i + 1] + files + base[i + 4:], PRESETS)
    c = load_corpus(cfg)
    lines = corpus["valid"].read_text().split("\n")[:-1]
    assert c.splits["valid"].num_rows == len(lines)
    data = prepare_data(cfg)  # trailing newlines of parquet rows do not count as extra lines or words
    assert (data.splits["valid"].n_words, data.splits["valid"].n_bytes) == count_words_bytes(lines)
