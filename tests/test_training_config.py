"""Config parsing: presets, overrides, bare flags, lists, unknown keys, types, choices, validation, hash."""
from dataclasses import dataclass, field

import pytest

from urlstm_triton.lm.config import PRESETS, LMConfig
from urlstm_triton.training import ConfigError, config_hash, opt, parse_config


def parse(*argv, preset="quickstart"):
    return parse_config(LMConfig, list(argv), PRESETS, default_preset=preset)


def test_preset_then_overrides_in_order():
    cfg = parse("--train.lr", "0.01", "--hidden", "64", "--lr", "0.02")
    assert cfg.run.preset == "quickstart"
    assert cfg.model.hidden == 64 and cfg.model.embed == PRESETS["quickstart"]["model"]["embed"]
    assert cfg.train.lr == 0.02  # the later override wins
    assert parse("--preset", "wt103").model.hidden == 3072


def test_bare_bool_flag_list_values_and_equals_form():
    cfg = parse("--resume", "--data.source", "files", "--data.files", "train=a.txt", "valid=b.txt",
                "--run.tensorboard=false")
    assert cfg.run.resume is True and cfg.run.tensorboard is False
    assert cfg.data.files == ["train=a.txt", "valid=b.txt"]


@pytest.mark.parametrize("argv, needle", [
    (["--model.hiden", "3"], "--model.hiden; did you mean --model.hidden"),
    (["--bogus", "1"], "unknown config key --bogus"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--train.steps", "ten"], "--train.steps: expected int, got 'ten'"),
    (["--run.resume", "maybe"], "--run.resume: expected bool"),
    (["--model.rnn", "gru"], "--model.rnn: 'gru' is not one of"),
    (["--train.steps"], "--train.steps needs a value"),
    (["--train.steps", "0"], "train.steps must be >= 1"),
    (["--model.hidden", "0"], "model.hidden must be >= 1"),
    (["--model.gate", "XY"], "model.gate"),
    (["--data.batch_size", "6", "--train.grad_accum", "4"], "data.batch_size=6 is not divisible by train.grad_accum"),
    (["--tokenizer.vocab_size", "100"], "tokenizer.vocab_size=100 is too small with byte_fallback"),
    (["--data.files", "x.txt"], "add --data.source files"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_config_is_rejected_naming_the_key(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse(*argv)
    assert needle in str(e.value)


def test_ambiguous_bare_key():
    @dataclass
    class A:
        size: int = opt(1)

    @dataclass
    class B:
        size: int = opt(2)

    @dataclass
    class Cfg:
        a: A = field(default_factory=A)
        b: B = field(default_factory=B)

    with pytest.raises(ConfigError, match="ambiguous.*--a.size, --b.size"):
        parse_config(Cfg, ["--size", "3"])
    assert parse_config(Cfg, ["--b.size", "3"]).b.size == 3


def test_yaml_config_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  hidden: 40\ntrain.lr: 0.5\n")
    cfg = parse("--config", str(p), "--hidden", "48")
    assert cfg.model.hidden == 48 and cfg.train.lr == 0.5
    p.write_text("model:\n  hiddn: 40\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key --model.hiddn"):
        parse("--config", str(p))


def test_config_hash_ignores_resume_safe_fields_only():
    base = config_hash(parse())
    assert config_hash(parse("--train.steps", "999", "--run.dir", "x", "--log_every", "3")) == base
    assert config_hash(parse("--train.lr", "0.5")) != base
    assert config_hash(parse("--model.hidden", "8")) != base


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model.hidden" in out and "presets: quickstart, wt2, wt103" in out
