"""Job configuration: nested dataclasses read by simple-parsing, with presets, YAML files and a config hash.

A job's config is a dataclass whose fields are *sections* (dataclasses themselves: ``run``, ``train``, ``model``,
``data`` ...). ``parse_config`` starts from the defaults, then applies the preset (``--preset NAME``), a YAML file
(``--config FILE``, nested ``section: {field: value}`` or dotted ``section.field: value`` keys) and the command
line, later ones winning. Every option is ``--section.field value``, or ``--field value`` where no other section
has a field of that name; bool options may be given bare (``--resume``); lists take several values
(``--data.files a b``). A preset or YAML file goes through the same parser as the command line (its values become
``--section.field=value`` arguments), so each value is read and checked one way. Unknown keys, values of the wrong
type and choices outside a ``Literal`` are a ``ConfigError`` naming the key, before any work. Each section may
define ``validate(cfg)`` for checks across fields; a job config may map old option names to their new ones in a
``RENAMED`` class attribute (an old name then stops with a line naming the new one).

``config_hash`` fingerprints the fields that decide what a checkpoint means (model shape, data, optimiser),
leaving out fields marked ``resume_safe`` (step count, logging, paths), so a run may be resumed with more steps
but not with a different model.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError

_DEST = "cfg"
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+(e-?\d+)?$")  # a value, not an option (argparse's own rule)


def opt(default=MISSING, help: str = "", resume_safe: bool = False, parse=None, metavar: str = "",
        default_factory=MISSING):
    """A config field with a help text, whether changing it keeps checkpoints valid, and optionally ``parse``,
    the function that reads its value from text (for unions such as ``chunk_size``; see :func:`optional`), and
    the ``metavar`` that stands for its value in ``--help``."""
    meta = {"help": help, "resume_safe": resume_safe}
    if parse is not None:
        meta["custom_args"] = {"type": _reader(parse), "metavar": metavar or getattr(parse, "metavar", "VALUE")}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


def _reader(parse):
    """``parse`` for argparse: its ValueError's message becomes the error's (argparse would only say 'invalid')."""
    def read(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return read


def optional(parse):
    """The text parser of an ``Optional[...]`` field: ``none``/``null`` -> None, anything else -> ``parse``."""
    def read(text):
        return None if str(text).strip().lower() in ("none", "null") else parse(text)
    read.metavar = f"{parse.__name__}|none"
    return read


# ---------------------------------------------------------------------------------------------- introspection
def iter_fields(cfg) -> List[Tuple[str, Any, dataclasses.Field]]:
    """Every leaf field as ``(dotted_key, owner_instance, field)``, sections expanded."""
    out = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out.extend((f"{f.name}.{sf.name}", value, sf) for sf in fields(value))
        else:
            out.append((f.name, cfg, f))
    return out


# ---------------------------------------------------------------------------------------------- parsing
def _parser(cls, prog: str, presets: Dict[str, dict]):
    import simple_parsing

    class Parser(simple_parsing.ArgumentParser):
        def _get_values(self, action, arg_strings):
            # argparse before Python 3.12 drops a value that is exactly '--' (the end-of-options marker), but
            # '--' is a value here: the tied-gate variant (``--variant=--``)
            if arg_strings == ["--"] and action.nargs is None:
                return self._get_value(action, "--")
            return super()._get_values(action, arg_strings)

        def error(self, message):
            # argparse reports some mistakes (an ambiguous prefix such as --train) through error() even with
            # exit_on_error=False, which prints the whole usage and exits: one line instead, like every other error
            raise ConfigError(message)

    parser = Parser(
        prog=prog, exit_on_error=False, add_help=True,
        # both --section.field and, where unique, the bare --field
        argument_generation_mode=simple_parsing.ArgumentGenerationMode.BOTH,
        nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT,
        description="Options are applied in order: defaults, --preset (--run.preset), --config FILE.yaml, the "
                    "command line. Presets: " + (", ".join(presets) or "none"),
    )
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="a YAML file of settings ({section: {field: value}} or section.field: value)")
    parser.add_arguments(cls, dest=_DEST)
    parser.parse_known_args([])  # builds the option table (simple-parsing adds the fields on first use)
    return parser


def _flatten(values, source: str, prefix: str = "") -> List[Tuple[str, Any]]:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(values).__name__}")
    out = []
    for k, v in values.items():
        key = f"{prefix}{k}"
        out.extend(_flatten(v, source, key + ".") if isinstance(v, dict) else [(key, v)])
    return out


def _as_arguments(values: dict, source: str, sections=()) -> List[str]:
    """A preset or YAML mapping as the command-line arguments that would set the same values. A section name
    (``sections``) given a single value instead of a mapping of its fields is an error naming it."""
    args = []
    for key, value in _flatten(values, source):
        if key in sections:
            raise ConfigError(f"{source}: {key}: expected a mapping of the {key} section's fields "
                              f"({key}: {{field: value}}), got {value!r}")
        if isinstance(value, (list, tuple)):
            args += [f"--{key}"] + [str(v) for v in value]
        elif value is None:
            args.append(f"--{key}=none")
        elif isinstance(value, bool):
            args.append(f"--{key}={str(value).lower()}")
        else:
            args.append(f"--{key}={value}")
    return args


def _join_dash_values(parser, argv: Sequence[str]) -> List[str]:
    """``--variant -R`` -> ``--variant=-R``: argparse reads a value that starts with a dash (``-R``, ``--``, both
    variant names) as an option; attached with ``=`` it is read as the value it is."""
    known = parser._option_string_actions
    out: List[str] = []
    for tok in argv:
        action = known.get(out[-1]) if out else None
        if (action is not None and action.nargs is None and tok.startswith("-") and tok not in known
                and not _NEGATIVE_NUMBER.match(tok)):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def _unknown(cls, tokens: List[str], renamed: Dict[str, str]) -> ConfigError:
    """The error for arguments the parser did not take: renamed, ambiguous, misspelt or stray."""
    tok = tokens[0]
    if not tok.startswith("--"):
        return ConfigError(f"unexpected argument {tok!r}: options look like --section.field value")
    key = tok[2:].split("=", 1)[0].replace("-", "_")
    if key in renamed:
        return ConfigError(f"--{key} is no longer an option: {renamed[key]}")
    leaves = [k for k, _, _ in iter_fields(cls())]
    same_name = [k for k in leaves if k.split(".")[-1] == key]
    if "." not in key and len(same_name) > 1:
        return ConfigError(f"option --{key} is ambiguous: it could be {', '.join('--' + k for k in same_name)}; "
                           "use the full name")
    names = leaves if "." in key else [k.split(".")[-1] for k in leaves]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see --help for the options"
    return ConfigError(f"unknown config key --{key}{hint}")


def _parse(parser, cls, argv: List[str], source: str, renamed: Dict[str, str]):
    try:
        ns, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        names = (e.argument_name or "").split("/")
        name = max(names, key=lambda n: n.count("."))  # the --section.field spelling
        raise ConfigError(f"{source}{name}: {e.message}") from None
    except (ValueError, TypeError) as e:  # the library's own complaints about a value
        raise ConfigError(f"{source}{e}") from None
    if extra:
        err = _unknown(cls, extra, renamed)
        raise ConfigError(f"{source}{err}") from None
    return ns


def read_config(cls, argv: Optional[Sequence[str]] = None, presets: Optional[Dict[str, dict]] = None,
                default_preset: Optional[str] = None, prog: str = "train"):
    """``(config, keys)``: ``cls`` from defaults, preset, YAML file and command line (see the module docstring),
    validated, and the dotted keys the command line itself set (a job may let those win over what a preset
    implies). ``--help`` prints every option and exits. The preset's name lands in ``run.preset`` if present."""
    argv = list(sys.argv[1:] if argv is None else argv)
    presets = presets or {}
    renamed = getattr(cls, "RENAMED", {})
    parser = _parser(cls, prog, presets)
    argv = _join_dash_values(parser, argv)
    first = _parse(parser, cls, argv, "", renamed)  # --help exits here; a bad key or value stops here
    preset = getattr(getattr(first, _DEST), "run", None)
    preset = getattr(preset, "preset", "") or default_preset  # --preset is the run section's preset field
    layers = []
    sections = {f.name for f in fields(cls) if is_dataclass(getattr(cls(), f.name))}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(presets)}")
        layers.append((f"preset {preset!r}: ", _as_arguments(presets[preset], f"preset {preset!r}", sections)))
    if first.config:
        layers.append((f"{first.config}: ", _as_arguments(_read_yaml(first.config), first.config, sections)))
    for source, args in layers:  # each layer alone first, so an error names where the bad value came from
        _parse(parser, cls, args, source, renamed)
    cfg = getattr(_parse(parser, cls, [a for _, args in layers for a in args] + argv, "", renamed), _DEST)
    if preset is not None and hasattr(cfg, "run") and hasattr(cfg.run, "preset"):
        cfg.run.preset = preset
    validate_config(cfg)
    return cfg, _given(parser, argv)


def parse_config(cls, argv: Optional[Sequence[str]] = None, presets: Optional[Dict[str, dict]] = None,
                 default_preset: Optional[str] = None, prog: str = "train"):
    """The config alone; see :func:`read_config`."""
    return read_config(cls, argv, presets, default_preset, prog)[0]


def config_from_dict(cls, values: dict, source: str):
    """``cls`` rebuilt from a saved mapping (a run's ``config.json``), read and validated as a YAML file would be,
    so an unknown or bad key is a ``ConfigError`` naming ``source`` and the key."""
    parser = _parser(cls, "config", {})
    sections = {f.name for f in fields(cls) if is_dataclass(getattr(cls(), f.name))}
    args = _as_arguments(values, source, sections)
    cfg = getattr(_parse(parser, cls, args, f"{source}: ", getattr(cls, "RENAMED", {})), _DEST)
    validate_config(cfg)
    return cfg


def _given(parser, argv: List[str]) -> frozenset:
    """The dotted keys that ``argv`` sets, through the parser's own table of option names (aliases resolved)."""
    keys = set()
    for tok in argv:
        action = parser._option_string_actions.get(tok.split("=", 1)[0])
        if action is not None and action.dest.startswith(_DEST + "."):
            keys.add(action.dest[len(_DEST) + 1:])
    return frozenset(keys)


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path} is not UTF-8 text (byte {e.start}): not a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--config: {path} is not valid YAML{where}: {what}") from None


def check_finite(cfg) -> None:
    """Every float field holds a finite number: ``inf`` and ``nan`` parse as floats, but no setting means them
    (``--train.lr inf``, ``--train.grad_clip nan`` would only poison the run later)."""
    for key, owner, f in iter_fields(cfg):
        value = getattr(owner, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")


def validate_config(cfg) -> None:
    """Check that float fields are finite, then run every section's ``validate(cfg)`` (cross-field checks); they
    raise ConfigError naming the field."""
    check_finite(cfg)
    for f in fields(cfg):
        section = getattr(cfg, f.name)
        check = getattr(section, "validate", None)
        if is_dataclass(section) and callable(check):
            check(cfg)


# ---------------------------------------------------------------------------------------------- output
def config_to_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def hashed_fields(cfg) -> Dict[str, Any]:
    """The fields that decide whether a checkpoint fits this config (all but those marked ``resume_safe``)."""
    return {key: getattr(owner, f.name) for key, owner, f in iter_fields(cfg)
            if not f.metadata.get("resume_safe", False)}


def config_hash(cfg) -> str:
    blob = json.dumps(hashed_fields(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff_hashed(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable differences between two ``hashed_fields`` dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        if json.dumps(old.get(key), default=str) != json.dumps(new.get(key), default=str):
            out.append(f"{key}: checkpoint {old.get(key, '<absent>')!r}, now {new.get(key, '<absent>')!r}")
    return out


def format_config(cfg) -> str:
    return "\n".join(f"  {key} = {getattr(owner, f.name)!r}" for key, owner, f in iter_fields(cfg))


__all__ = ["ConfigError", "opt", "optional", "parse_config", "read_config", "config_from_dict", "validate_config",
           "config_to_dict", "hashed_fields", "config_hash", "diff_hashed", "format_config", "iter_fields"]
