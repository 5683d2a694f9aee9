"""Typed configs loaded from YAML recipes with ``--set a.b=value`` overrides.

A config is a (possibly nested) dataclass. Field docs live in ``field(metadata={"help": ...})`` and
double as CLI help. Loading reports *every* problem in one pass (unknown keys with the valid ones,
wrong types, failed checks) before anything heavy happens.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tallrec_cli.core.errors import ConfigError, problem_count

T = TypeVar("T")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so a label word Yes / No / on stays text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | None = None, **kwargs: Any):
    """A dataclass field with help text (and optional allowed values) for docs and validation."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _field_type(schema: type | None, parts: list[str]) -> Any:
    """The declared type of the dotted field ``parts`` of dataclass ``schema`` (None when unknown)."""
    tp: Any = schema
    for part in parts:
        if not (dataclasses.is_dataclass(tp) and part in {f.name for f in dataclasses.fields(tp)}):
            return None
        tp = typing.get_type_hints(tp)[part]
    return tp


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and set(typing.get_args(tp)) == {str, type(None)})


def parse_overrides(pairs: list[str] | None, schema: type | None = None) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> ``{"a": {"b": 3}, "c": [1, 2]}``; values are parsed as YAML.

    A text field of ``schema`` (a config dataclass) keeps exactly what was typed: ``labels.positive=Yes``
    is the word Yes, not a boolean.
    """
    nested: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' is not of the form key=value", "write it as --set lora.r=16")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _NUMBER.match(value):
            value = float(value)  # YAML 1.1 reads "3e-4" as text; a number is what anyone typing it means
        if _is_text(_field_type(schema, parts)) and value is not None:
            value = raw
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{pair}' conflicts with another override of '{part}'")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe {path} does not exist", "pass a path to a YAML recipe, e.g. recipes/smollm2-135m-lora.yaml")
    if not path.is_file():
        yamls = ", ".join(sorted(p.name for p in path.glob("*.yaml"))[:5]) if path.is_dir() else ""
        raise ConfigError(f"recipe {path} is a folder, not a YAML file",
                          f"pass one of its recipes ({yamls})" if yamls else "pass a path to a YAML recipe")
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".splitlines()[0], "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level")
    return data


_TYPE_NAMES = {type(None): "null", int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    return _TYPE_NAMES.get(tp) or getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            result = _coerce(value, arg, where, trial)
            if not trial:
                return result
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin in (list, tuple):
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(item, inner, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping of {tp.__name__} settings, got {value!r}")
            return tp()
        return _build(tp, value, where + ".", problems)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        problems.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: expected a number, got {value!r}")
            return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            problems.append(f"{where}: expected an integer, got {value!r}")  # never round 2.5 down silently
            return value
        try:
            return int(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return value
    if tp is str:
        if isinstance(value, (dict, list)):
            problems.append(f"{where}: expected text, got {value!r}")
            return value
        if isinstance(value, bool):
            return "true" if value else "false"  # as written in YAML, not Python's True
        return str(value)
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, problems: list[str]) -> T:
    reported = len(problems)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        problems.append(f"unknown key '{prefix}{key}'; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, fld in fields.items():
        if name not in data:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{name}: required")
            continue
        before = len(problems)
        value = _coerce(data[name], hints[name], prefix + name, problems)
        choices = fld.metadata.get("choices")
        if choices and value not in choices:
            problems.append(f"{prefix}{name}: {value!r} is not one of {', '.join(map(str, choices))}")
        # A bad value keeps the default so the checks still run; a section keeps its good values.
        if len(problems) == before or (dataclasses.is_dataclass(hints[name]) and value is not None):
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        if len(problems) == reported:  # else a consequence of the problems above (a required field missing)
            problems.append(f"{prefix.rstrip('.') or cls.__name__}: {exc}")
        return None  # type: ignore[return-value]


def _collect_checks(config: Any, problems: list[str]) -> None:
    """Run each nested dataclass's ``check()`` (returns a list of problem strings)."""
    if not dataclasses.is_dataclass(config):
        return
    for fld in dataclasses.fields(config):
        _collect_checks(getattr(config, fld.name), problems)
    check = getattr(config, "check", None)
    if callable(check):
        problems.extend(check())


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build and validate ``cls`` from a plain mapping; raise one ConfigError listing every problem."""
    problems: list[str] = []
    config = _build(cls, data, "", problems)
    if config is not None:
        _collect_checks(config, problems)
    if problems:
        raise ConfigError(hint="fix the recipe or the --set overrides; `tallrec keys` lists every key with its help",
                          problems=problems, heading=f"{source} has {problem_count(problems)}")
    return config


def load_config(cls: type[T], recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Recipe YAML (optional) + nested overrides -> validated config of type ``cls``."""
    data = read_yaml(recipe) if recipe else {}
    if overrides:
        data = deep_merge(data, overrides)
    return from_dict(cls, data, source=str(recipe) if recipe else "config")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every leaf field: the recipe reference."""
    rows = []
    for fld in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[fld.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, f"{prefix}{fld.name}."))
            continue
        default = fld.default if fld.default is not dataclasses.MISSING else (
            fld.default_factory() if fld.default_factory is not dataclasses.MISSING else "(required)")
        rows.append((prefix + fld.name, repr(default), fld.metadata.get("help", "")))
    return rows

