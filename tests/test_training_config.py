"""Config parsing (simple-parsing underneath): presets, YAML, overrides, bare flags, lists, union types, unknown
and renamed keys, types, choices, validation, hash, and the keys the command line itself set."""
from dataclasses import dataclass, field

import pytest

from urlstm_triton.lm.config import PRESETS, LMConfig
from urlstm_triton.tasks.config import VISION_PRESETS, VisionJobConfig
from urlstm_triton.training import ConfigError, config_hash, opt, parse_config, read_config


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
    (["--train.steps", "ten"], "--train.steps: invalid int value: 'ten'"),
    (["--run.resume", "maybe"], "--run.resume: Boolean value expected"),
    (["--train.optimizer", "gd"], "--train.optimizer: invalid choice: 'gd'"),
    (["--data.source", "web"], "--data.source: invalid choice: 'web'"),
    (["--train.steps"], "--train.steps: expected one argument"),
    (["--train.steps", "0"], "train.steps must be >= 1"),
    (["--model.hidden", "0"], "model.hidden must be >= 1"),
    (["--model.variant", "XY"], "--model.variant: unknown variant 'XY'"),
    (["--model.chunk_size", "x"], "--model.chunk_size: expected none, auto or a positive integer, got 'x'"),
    (["--model.chunk_size", "-2"], "--model.chunk_size: chunk_size must be None, a positive int or 'auto'"),
    (["--model.backend", "reference", "--model.chunk_size", "16"], "backend='reference' takes no backend options"),
    (["--model.gate", "lstm"], "--model.gate is no longer an option: use --model.variant"),
    (["--model.rnn", "lstm"], "--model.rnn is no longer an option: use --model.variant"),
    (["--data.batch_size", "6", "--train.grad_accum", "4"], "data.batch_size=6 must be divisible by processes x "
                                                        "train.grad_accum = 1 x 4"),
    (["--tokenizer.vocab_size", "100"], "tokenizer.vocab_size=100 is too small with byte_fallback"),
    (["--data.files", "x.txt"], "add --data.source files"),
    (["stray"], "unexpected argument 'stray'"),
    # inf and nan parse as floats but mean nothing as settings: every float field, whichever section
    (["--train.lr", "inf"], "train.lr must be a finite number, got inf"),
    (["--train.grad_clip", "nan"], "train.grad_clip must be a finite number, got nan"),
    (["--model.forget_bias=-inf"], "model.forget_bias must be a finite number, got -inf"),
    (["--model.chrono_tmax", "inf"], "model.chrono_tmax must be a finite number, got inf"),
    (["--train", "5"], "ambiguous option: --train could match --train.steps"),  # one line, not the usage
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
    p.write_text("model:\n  hidden: 40\n  chunk_size: 8\ntrain.lr: 0.5\ndata:\n  source: files\n  files: [a, b]\n")
    cfg = parse("--config", str(p), "--hidden", "48")
    assert cfg.model.hidden == 48 and cfg.train.lr == 0.5 and cfg.model.chunk_size == 8
    assert cfg.data.files == ["a", "b"] and cfg.train.steps == PRESETS["quickstart"]["train"]["steps"]
    p.write_text("model:\n  hiddn: 40\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key --model.hiddn"):
        parse("--config", str(p))
    p.write_text("train:\n  steps: many\n")  # a value of the wrong type names the file and the key
    with pytest.raises(ConfigError, match=r"c.yaml: --train.steps: invalid int value: 'many'"):
        parse("--config", str(p))
    p.write_text("train: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML at line 2, column 1: expected"):
        parse("--config", str(p))
    p.write_text("train: 5\n")  # a section given one value
    with pytest.raises(ConfigError, match=r"c.yaml: train: expected a mapping of the train section's fields"):
        parse("--config", str(p))
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"c.yaml: expected a mapping of config keys, got list"):
        parse("--config", str(p))
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"c.yaml is not UTF-8 text \(byte 0\): not a YAML file"):
        parse("--config", str(p))
    with pytest.raises(ConfigError, match=r"cannot read .*missing.yaml: No such file"):
        parse("--config", str(tmp_path / "missing.yaml"))


def test_union_values_dash_values_and_what_the_command_line_set():
    cfg = parse("--model.chunk_size", "64", "--variant", "-R")
    assert cfg.model.chunk_size == 64 and cfg.model.variant == "-R"
    assert parse("--chunk_size", "auto").model.chunk_size == "auto"
    assert parse("--chunk_size", "none").model.chunk_size is None
    assert parse("--variant", "--").model.variant == "--" and parse("--variant", "U-LSTM").model.variant == "U-"
    assert parse("--variant", "classic").model.variant == "classic"
    # a preset counts in epochs; only what the command line itself gave is reported as given
    cfg, given = read_config(VisionJobConfig, ["--preset", "smnist-tiny", "--steps", "2"], VISION_PRESETS, "smnist")
    assert given == {"train.steps", "run.preset"} and cfg.data.epochs == VISION_PRESETS["smnist-tiny"]["data"]["epochs"]


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
    assert "--model.hidden" in out and "Presets: quickstart, wt2, wt103" in out
    assert "hidden units per recurrent layer" in out and "--lr" in out  # per-field help; unique bare names
