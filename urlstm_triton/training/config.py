"""Job configuration: nested dataclasses with presets, command-line overrides, validation and a config hash.

A job's config is a dataclass whose fields are *sections* (dataclasses themselves, e.g. ``run``, ``train``,
``model``, ``data``). ``parse_config`` starts from the defaults, applies a preset (``--preset NAME``), then a
YAML file (``--config FILE``) if given, then every ``--section.field value`` or ``--field value`` on the command
line, in order. Unknown keys, values of the wrong type and choices outside the allowed set are rejected with a
``ConfigError`` that names the key, before any work. Each section may define ``validate(cfg)`` for checks
across fields (impossible sizes); those errors name the field too.

``config_hash`` fingerprints the fields that decide what a checkpoint means (model shape, data, optimiser),
leaving out fields marked ``resume_safe`` (step count, logging, paths), so a run may be resumed with more steps
but not with a different model.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, impossible value. The message names the key."""


def opt(default=MISSING, help: str = "", choices: Optional[Sequence] = None, resume_safe: bool = False,
        default_factory=MISSING):
    """A config field with a help text, allowed ``choices`` and whether changing it keeps checkpoints valid."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "resume_safe": resume_safe}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------- introspection
def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return isinstance(tp, type) and is_dataclass(tp)


def _unwrap_optional(tp) -> Tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def iter_fields(cfg) -> List[Tuple[str, Any, dataclasses.Field, Any]]:
    """Every leaf field as ``(dotted_key, owner_instance, field, type)``, sections expanded."""
    out = []
    hints = _hints(type(cfg))
    for f in fields(cfg):
        tp = hints[f.name]
        value = getattr(cfg, f.name)
        if _is_section(tp):
            sub_hints = _hints(tp)
            for sf in fields(value):
                out.append((f"{f.name}.{sf.name}", value, sf, sub_hints[sf.name]))
        else:
            out.append((f.name, cfg, f, tp))
    return out


def _parse_scalar(key: str, tp, text: str):
    tp, optional = _unwrap_optional(tp)
    if optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str or tp is Any:
            return text
    except ValueError:
        raise ConfigError(f"--{key}: expected {tp.__name__}, got {text!r}") from None
    raise ConfigError(f"--{key}: cannot parse a value of type {tp} from the command line")


def _is_list(tp) -> bool:
    tp, _ = _unwrap_optional(tp)
    return typing.get_origin(tp) in (list, List, tuple, Tuple)


def _coerce(key: str, tp, value):
    """Convert ``value`` (from the command line, a preset or YAML) to the field's type, or raise ConfigError."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be None")
    if _is_list(base):
        (elem,) = typing.get_args(base)[:1] or (str,)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, elem, v) for v in value]
    if isinstance(value, str) and base is not str:
        return _parse_scalar(key, base, value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, bool, str) and not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {base.__name__}, got {type(value).__name__} ({value!r})")
    return value


# ---------------------------------------------------------------------------------------------- setting keys
def _resolve_key(cfg, key: str):
    """Find the leaf field for ``section.field`` or a bare, unambiguous ``field``."""
    leaves = iter_fields(cfg)
    matches = [leaf for leaf in leaves if leaf[0] == key]
    if not matches and "." not in key:
        matches = [leaf for leaf in leaves if leaf[0].split(".")[-1] == key]
        if len(matches) > 1:
            names = ", ".join("--" + m[0] for m in matches)
            raise ConfigError(f"option --{key} is ambiguous: it could be {names}; use the full name")
    if not matches:
        all_keys = [leaf[0] for leaf in leaves] if "." in key else [leaf[0].split(".")[-1] for leaf in leaves]
        close = difflib.get_close_matches(key, all_keys, n=3, cutoff=0.75)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see --help for the options"
        raise ConfigError(f"unknown config key --{key}{hint}")
    return matches[0]


def set_value(cfg, key: str, value) -> None:
    dotted, owner, f, tp = _resolve_key(cfg, key)
    value = _coerce(dotted, tp, value)
    choices = f.metadata.get("choices")
    if choices is not None:
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in choices]
        if bad:
            raise ConfigError(f"--{dotted}: {bad[0]!r} is not one of {', '.join(map(repr, choices))}")
    setattr(owner, f.name, value)


def apply_dict(cfg, values: Dict[str, Any], source: str) -> None:
    """Apply nested (``{"train": {"lr": 1e-3}}``) or dotted (``{"train.lr": 1e-3}``) settings."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(values).__name__}")
    for k, v in values.items():
        if isinstance(v, dict):
            hints = _hints(type(cfg))
            if k not in hints or not _is_section(hints[k]):
                raise ConfigError(f"{source}: unknown config section {k!r}")
            for sk, sv in v.items():
                try:
                    set_value(cfg, f"{k}.{sk}", sv)
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
        else:
            try:
                set_value(cfg, k, v)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------------- parsing
def _split_argv(argv: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``--key v1 v2 --flag --k=v`` -> [(key, [v1, v2]), (flag, []), (k, [v])]."""
    items: List[Tuple[str, List[str]]] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2 and not _looks_negative_number(tok):
            key, eq, val = tok[2:].partition("=")
            items.append((key.replace("-", "_"), [val] if eq else []))
        elif items:
            items[-1][1].append(tok)
        else:
            raise ConfigError(f"unexpected argument {tok!r}: options look like --section.field value")
    return items


def _looks_negative_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def format_help(cfg, prog: str, presets: Dict[str, dict]) -> str:
    lines = [f"usage: {prog} [--preset NAME] [--config FILE.yaml] [--section.field VALUE ...]", ""]
    if presets:
        lines.append("presets: " + ", ".join(presets))
    current = None
    for key, owner, f, tp in iter_fields(cfg):
        section = key.split(".")[0] if "." in key else ""
        if section != current:
            lines.append(f"\n[{section or 'top'}]")
            current = section
        choices = f.metadata.get("choices")
        extra = f" (one of {', '.join(map(str, choices))})" if choices else ""
        lines.append(f"  --{key} {getattr(owner, f.name)!r}: {f.metadata.get('help', '')}{extra}")
    return "\n".join(lines)


def parse_config(cls, argv: Optional[Sequence[str]] = None, presets: Optional[Dict[str, dict]] = None,
                 default_preset: Optional[str] = None, prog: str = "train"):
    """Build ``cls()`` and apply, in order: the preset, ``--config`` YAML, then the command-line overrides.

    ``--help`` prints every option and exits. Bool options may be given bare (``--resume``). The chosen preset
    name is stored in the config's ``run.preset`` field when there is one.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    presets = presets or {}
    cfg = cls()
    if "-h" in argv or "--help" in argv:
        print(format_help(cfg, prog, presets))
        raise SystemExit(0)
    items = _split_argv(argv)
    preset = default_preset
    yaml_path = None
    overrides = []
    for key, vals in items:
        if key == "preset":
            if len(vals) != 1:
                raise ConfigError("--preset takes exactly one name")
            preset = vals[0]
        elif key == "config":
            if len(vals) != 1:
                raise ConfigError("--config takes exactly one YAML file")
            yaml_path = vals[0]
        else:
            overrides.append((key, vals))
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(presets)}")
        apply_dict(cfg, presets[preset], f"preset {preset!r}")
        if hasattr(cfg, "run") and hasattr(cfg.run, "preset"):
            cfg.run.preset = preset
    if yaml_path is not None:
        import yaml

        try:
            with open(yaml_path) as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"--config: cannot read {yaml_path}: {e.strerror}") from None
        apply_dict(cfg, data, yaml_path)
    for key, vals in overrides:
        dotted, owner, f, tp = _resolve_key(cfg, key)
        base, _ = _unwrap_optional(tp)
        if not vals:
            if base is bool:
                vals = ["true"]
            else:
                raise ConfigError(f"--{dotted} needs a value")
        if _is_list(base):
            set_value(cfg, dotted, vals)
        else:
            if len(vals) != 1:
                raise ConfigError(f"--{dotted} takes one value, got {len(vals)}: {' '.join(vals)}")
            set_value(cfg, dotted, vals[0])
    validate_config(cfg)
    return cfg


def validate_config(cfg) -> None:
    """Run every section's ``validate(cfg)`` (cross-field checks); they raise ConfigError naming the field."""
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
    return {key: getattr(owner, f.name) for key, owner, f, _ in iter_fields(cfg)
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
    lines = []
    for key, owner, f, _ in iter_fields(cfg):
        lines.append(f"  {key} = {getattr(owner, f.name)!r}")
    return "\n".join(lines)
