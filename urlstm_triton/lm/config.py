"""The language-model job's config (``LMConfig``) and its presets.

Sections: ``run`` and ``train`` (shared, ``urlstm_triton.training.sections``), ``model``, ``data``,
``tokenizer``. Presets: ``quickstart`` (offline corpus, small model, a few minutes on a laptop CPU; the default)
and ``wt103`` (WikiText-103 at the scale of the community port: embedding 1024, hidden 3072, BPTT 128,
batch 128, Adam 1e-3, dropout 0.3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal

from ..errors import ConfigError
from ..training.config import opt
from ..training.recurrent import RecurrentConfig
from ..training.sections import RunConfig, TrainConfig, launched_world_size


@dataclass
class ModelConfig(RecurrentConfig):
    """The recurrent core (``RecurrentConfig``: variant, hidden, layers, backend ...) and the LM around it."""

    hidden: int = opt(512, "hidden units per recurrent layer")
    embed: int = opt(256, "embedding size (also the decoder's input size: weights are tied)")
    dropout: float = opt(0.1, "dropout on embeddings, between layers and on the output")
    tie_weights: bool = opt(True, "tie the decoder's weight to the embedding (a projection maps hidden -> embed)")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if self.embed < 1:
            raise ConfigError(f"model.embed must be >= 1, got {self.embed}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DataConfig:
    """The corpus (--data.*): where the text comes from, how much of it, and the token cache."""

    source: Literal["pydoc", "hf", "files"] = opt("pydoc", "corpus: Python's pydoc_data.topics (offline), a Hugging "
                                                           "Face dataset, or local files")
    hf_name: str = opt("Salesforce/wikitext", "Hugging Face dataset name (source=hf)")
    hf_config: str = opt("wikitext-103-raw-v1", "Hugging Face dataset config (source=hf)")
    files: List[str] = opt([], "local .txt/.parquet files (source=files): split=PATH, or paths whose names "
                               "contain train/valid/test; without valid/test they are cut from the train end")
    text_column: str = opt("text", "text column of parquet files and Hugging Face datasets")
    holdout: float = opt(0.05, "fraction of the train text cut off for each missing valid/test split")
    batch_size: int = opt(32, "rows of the token stream per optimiser step, over all processes")
    bptt: int = opt(64, "truncated-BPTT window (tokens per row per step)")
    eval_batch_size: int = opt(10, "rows the valid/test streams are cut into for evaluation", resume_safe=True)
    cache_dir: str = opt(".cache/lm", "where tokenisers and tokenised corpora are cached", resume_safe=True)
    num_proc: int = opt(0, "processes for tokenising (0: 1 for small corpora, else up to 16)", resume_safe=True)
    rebuild_cache: bool = opt(False, "rebuild the tokenised corpus even if a cache exists", resume_safe=True)

    def validate(self, cfg) -> None:
        for name in ("batch_size", "bptt", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_proc < 0:
            raise ConfigError(f"data.num_proc must be >= 0, got {self.num_proc}")
        if not 0.0 < self.holdout < 0.5:
            raise ConfigError(f"data.holdout must be in (0, 0.5), got {self.holdout}")
        if self.source == "files" and not self.files:
            raise ConfigError("data.files is empty but data.source is 'files': give --data.files train=PATH ...")
        if self.source != "files" and self.files:
            raise ConfigError(f"data.files is set but data.source is {self.source!r}: add --data.source files")
        check_batch_split(self.batch_size, launched_world_size(), cfg.train.grad_accum)


def check_batch_split(batch_size: int, processes: int, grad_accum: int) -> None:
    """``data.batch_size`` rows are split evenly over the processes, then over the micro-batches of each. Checked
    when the config is read (with the launcher's process count, so a bad split stops before data preparation) and
    again when the objective is made (with the Accelerator's)."""
    if batch_size % (processes * grad_accum):
        raise ConfigError(
            f"data.batch_size={batch_size} must be divisible by processes x train.grad_accum = {processes} x "
            f"{grad_accum}: each process takes batch_size/processes contiguous rows, split into grad_accum "
            "micro-batches")


@dataclass
class TokenizerConfig:
    """The sentencepiece tokeniser trained on the corpus (--tokenizer.*)."""

    type: Literal["unigram", "bpe"] = opt("unigram", "sentencepiece model type")
    vocab_size: int = opt(8000, "vocabulary size")
    byte_fallback: bool = opt(True, "encode unknown characters as UTF-8 bytes (needs vocab_size > ~260)")
    character_coverage: float = opt(0.9995, "fraction of characters covered by single-character pieces")
    sample_lines: int = opt(2_000_000, "at most this many train lines are used to train the tokeniser")
    model_file: str = opt("", "use this trained sentencepiece model instead of training one")

    def validate(self, cfg) -> None:
        if self.vocab_size < 8:
            raise ConfigError(f"tokenizer.vocab_size must be >= 8, got {self.vocab_size}")
        if self.byte_fallback and self.vocab_size < 260:
            raise ConfigError(f"tokenizer.vocab_size={self.vocab_size} is too small with byte_fallback (256 byte "
                              "pieces + specials): use >= 260 or --tokenizer.byte_fallback false")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ConfigError(f"tokenizer.character_coverage must be in [0.9, 1], got {self.character_coverage}")
        if self.sample_lines < 1:
            raise ConfigError(f"tokenizer.sample_lines must be >= 1, got {self.sample_lines}")


@dataclass
class LMConfig:
    """Settings of the language-model job, by section."""

    run: RunConfig = field(default_factory=RunConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    # options of earlier versions, and what replaced them (the old --model.gate lstm meant the URLSTM's classic
    # mode while lstm now means torch.nn.LSTM everywhere, so the old names are refused rather than guessed)
    RENAMED = {key: "use --model.variant: a gate code (UR, U-, ...), lstm (torch.nn.LSTM) or classic (the URLSTM's "
                    "classic-LSTM mode, the old --model.gate lstm)"
               for key in ("model.rnn", "model.gate", "rnn", "gate")}


PRESETS = {
    # Offline, CPU, a few minutes on 2 cores including tokeniser training and evaluation.
    "quickstart": {
        # one thread: the recurrence is many small ops, where a second OpenMP thread costs more than it gives
        # (3x slower on a busy 2-core machine, measured)
        "run": {"cpu": True, "log_every": 25, "threads": 1},
        "data": {"source": "pydoc", "batch_size": 32, "bptt": 64, "eval_batch_size": 4},
        "tokenizer": {"vocab_size": 2000},
        "model": {"embed": 256, "hidden": 512, "layers": 1, "dropout": 0.2},
        "train": {"steps": 400, "lr": 3e-3, "warmup_steps": 20, "grad_clip": 1.0, "eval_every": 100,
                  "eval_batches": 10, "save_every": 200},
    },
    # WikiText-2 from the hub (for users who have it; the offline comparison in RESULTS.md trains on the
    # repository's data/wikitext-2/valid.txt instead). Word-level perplexity is reported beside the subword one.
    "wt2": {
        "run": {"log_every": 50},
        "data": {"source": "hf", "hf_name": "Salesforce/wikitext", "hf_config": "wikitext-2-raw-v1",
                 "batch_size": 32, "bptt": 70, "eval_batch_size": 10},
        "tokenizer": {"type": "unigram", "vocab_size": 8000},
        "model": {"embed": 512, "hidden": 1024, "layers": 1, "dropout": 0.3},
        "train": {"steps": 20000, "optimizer": "adam", "lr": 1e-3, "warmup_steps": 500, "grad_clip": 0.25,
                  "eval_every": 1000, "save_every": 1000},
    },
    # WikiText-103 at the community port's scale (one GPU or several; batch_size is global).
    "wt103": {
        "run": {"log_every": 50},
        "data": {"source": "hf", "hf_name": "Salesforce/wikitext", "hf_config": "wikitext-103-raw-v1",
                 "batch_size": 128, "bptt": 128, "eval_batch_size": 10},
        # 300k of the ~1.2M non-blank train lines (~150 MB) train the tokeniser in minutes, not hours
        "tokenizer": {"type": "unigram", "vocab_size": 32000, "sample_lines": 300_000},
        "model": {"embed": 1024, "hidden": 3072, "layers": 1, "dropout": 0.3},
        "train": {"steps": 50000, "optimizer": "adam", "lr": 1e-3, "warmup_steps": 1000, "grad_clip": 0.25,
                  "mixed_precision": "bf16", "eval_every": 2000, "eval_batches": 200, "save_every": 1000,
                  "keep_checkpoints": 3},
    },
}
