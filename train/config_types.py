"""Strict typing of config values: a value must already be of its key's declared type (a YAML string is not a
bool, "1e-3" is not a number), except text typed on the command line, which is read as that type on purpose.

One rule for every key: the TrainConfig fields, the `augment` sub-keys (pipelines.AugmentConfig's annotations)
and the `model_args` a model's builder annotates (models.registry.builder_arg_types).
"""
from __future__ import annotations

import math
import re
import types
import typing

import yaml


class ConfigError(ValueError):
    """A one-line message naming the offending key."""


class CommandLineYAML(yaml.SafeLoader):
    """YAML for values typed on the command line (`--augment.scales "[1, 0.875]"`): PyYAML's safe loader, but
    1e-3 (no dot before the exponent) is a number as in YAML 1.2: on a command line it can mean nothing else."""


_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
CommandLineYAML.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+0123456789."))
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def read_text(key: str, text: str, kind=None):
    """A command-line value as `kind` (None: as YAML, the sub-keys' reading before their own check)."""
    try:
        if kind is bool:
            return _BOOL_WORDS[text.lower()]
        if kind in (int, float, str):
            return kind(text)
        return yaml.load(text, Loader=CommandLineYAML)
    except (KeyError, ValueError, yaml.YAMLError):
        raise ConfigError(f"config key {key!r}: expected {type_name(kind)}, got {text!r}") from None


def check_type(key: str, value, kind):
    """`value` if it is a `kind` (an int where a float is declared becomes that float), else a one-line
    ConfigError naming the key, the value and the type; nan and inf are never a setting."""
    if not matches(value, kind):
        raise ConfigError(f"config key {key!r}: expected {type_name(kind)}, got {value!r}{_string_hint(value, kind)}")
    check_finite(key, value)
    return float(value) if kind is float else value


def check_finite(key: str, value) -> None:
    """nan and inf parse as floats (YAML's .nan, the command line's "nan") but are never a setting."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
    if isinstance(value, dict):
        for sub, v in value.items():
            check_finite(f"{key}.{sub}", v)
    if isinstance(value, (list, tuple)):
        for v in value:
            check_finite(key, v)


def matches(value, kind) -> bool:
    """Whether `value` is of the annotation `kind`, strictly: a bool is not an int, a string is not a number;
    an int is a float; a list is a tuple (YAML has no tuples). Elements of containers are not checked; an
    annotation this does not know (a class, a callable) accepts anything."""
    if kind is typing.Any:
        return True
    if kind is type(None):
        return value is None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, k) for k in typing.get_args(kind))
    kind = origin or kind
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (list, tuple):
        return isinstance(value, (list, tuple))
    if kind in (dict, str):
        return isinstance(value, kind)
    return True


def type_name(kind) -> str:
    if kind is None:
        return "a YAML value"
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(type_name(k) for k in typing.get_args(kind))
    if kind is type(None):
        return "null"
    return getattr(kind, "__name__", str(kind))


def _string_hint(value, kind) -> str:
    """What to write instead of a string that reads as the declared type."""
    if not isinstance(value, str):
        return ""
    try:
        meant = yaml.load(value, Loader=CommandLineYAML)
    except yaml.YAMLError:
        return ""
    if isinstance(meant, str) or not matches(meant, kind):
        return ""
    if _EXPONENT.match(value) and "." not in value.split("e")[0].split("E")[0]:
        return (f" (a string: YAML reads a number without a dot before its exponent as text; write "
                f"{float(meant)!r} or {value.lower().replace('e', '.0e', 1)})")
    return f" (a string: write {yaml.safe_dump(meant).splitlines()[0]} without quotes)"
