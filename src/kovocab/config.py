"""Stage configs: typed frozen dataclasses loaded from YAML recipes, validated all at once.

A recipe is a YAML mapping with one section per stage (`shard:`, `train_tokenizer:`,
`merge_vocab:`, ...). `load_section` turns a section into its dataclass, collecting
every problem (unknown key with a suggestion, wrong type, missing required key)
before raising one `ConfigError`, as torchtune does. Overrides come as
`section.key=value` strings (`--set` on the CLI), parsed as YAML scalars.

Stage modules define their own `XConfig` dataclasses with `opt(...)` fields; the
one-line `doc` of each field is what `kovocab SUBCOMMAND --help` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from kovocab.errors import ConfigError

T = TypeVar("T")

_REQUIRED = dataclasses.MISSING


def opt(default: Any = _REQUIRED, doc: str = "") -> Any:
    """A config field with a default (omit it for a required key) and a one-line doc."""
    if default is _REQUIRED:
        return dataclasses.field(metadata={"doc": doc})
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable: use a tuple")
    return dataclasses.field(default=default, metadata={"doc": doc})


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe file into a dict, with a clear error for a missing or broken file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p} (give a path to a YAML file)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: recipe is not UTF-8 text ({exc.reason})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    data.setdefault("_recipe_dir", str(p.resolve().parent))
    return data


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], sections: Collection[str] | None = None
) -> dict[str, Any]:
    """Apply `section.key=value` overrides (value parsed as YAML) to a raw recipe dict.

    With `sections` (the sections the command reads), an override of any other section
    is refused with a suggestion, so a typo like `shrad.shards=8` cannot be ignored.
    """
    out = dict(data)
    problems = []
    valid = f" (sections for this command: {', '.join(sections)})" if sections else ""
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(p.strip() for p in parts):
            example = f"{next(iter(sections))}.{parts[-1] or 'KEY'}={raw or 'VALUE'}" if sections else ""
            problems.append(f"--set {item!r}: expected SECTION.KEY=VALUE"
                            + (f", e.g. --set {example}" if example else "") + valid)
            continue
        if sections is not None and parts[0] not in sections:
            hint = suggest(parts[0], sections)
            problems.append(f"--set {item!r}: unknown section {parts[0]!r}{hint}{valid}")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def suggest(word: str, choices: Iterable[str]) -> str:
    """"; did you mean 'X'?" for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(str(word), sorted(map(str, choices)), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def section_problems(data: Mapping[str, Any], known: Collection[str], where: str) -> list[str]:
    """Problems with a recipe's top level: keys that are no known section, sections that are no mapping.

    `where` names the recipe file. Keys starting with `_` are kovocab's own (`_recipe_dir`).
    """
    problems = []
    names = ", ".join(sorted(known))
    for key, value in data.items():
        if str(key).startswith("_"):
            continue
        if key not in known:
            problems.append(f"{where}: unknown section '{key}'{suggest(str(key), known)} (sections: {names})")
        elif value is not None and not isinstance(value, Mapping):
            problems.append(f"{where}: section '{key}' must be a mapping of keys (key: value lines "
                            f"indented under '{key}:'), got {type(value).__name__}")
    return problems


def load_section(cls: type[T], data: Mapping[str, Any] | None, section: str) -> T:
    """Build the dataclass `cls` from `data[section]`, raising one ConfigError with all problems."""
    raw = (data or {}).get(section, {})
    if raw is None:
        raw = {}
    problems: list[str] = []
    obj = build(cls, raw, section, problems)
    if problems or obj is None:
        raise ConfigError(problems)
    return obj


def build(cls: type[T], raw: Any, where: str, problems: list[str]) -> T | None:
    """Build one dataclass from a mapping, appending problems instead of raising."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
        return None
    flds = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    before = len(problems)
    for key in raw:
        if key not in flds:
            close = difflib.get_close_matches(str(key), list(flds), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(
                f"{where}.{key}: unknown key{hint} (valid keys: {', '.join(sorted(flds))})"
            )
    kwargs: dict[str, Any] = {}
    for name, f in flds.items():
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], f"{where}.{name}", problems)
        elif f.default is _REQUIRED and f.default_factory is _REQUIRED:
            doc = f.metadata.get("doc", "")
            problems.append(f"{where}.{name}: required key is missing" + (f" ({doc})" if doc else ""))
    if len(problems) > before:
        return None
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return None
    check = getattr(obj, "check", None)
    if callable(check):
        problems.extend(f"{where}.{p}" for p in check())
    return obj


def _coerce(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and isinstance(value, Mapping):
            # `X | None` given a mapping: X's own problems name the nested key that is wrong.
            return _coerce(options[0], value, where, problems)
        for a in options:
            trial: list[str] = []
            out = _coerce(a, value, where, trial)
            if not trial:
                return out
        names = " or ".join(_type_name(a) for a in args)
        problems.append(f"{where}: expected {names}, got {value!r}")
        return None
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{hint}")
        return None
    if origin is tuple:
        item_tp = args[0] if args else Any
        if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
            value = [value]
        return tuple(_coerce(item_tp, v, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return None
        if len(args) == 2:  # dict[str, X]: each value built as an X (e.g. source_weights)
            return {str(k): _coerce(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where}: expected true or false, got {value!r}")
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"{where}: expected an integer, got {value!r}")
        return None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{where}: expected a number, got {value!r}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{where}: expected a string, got {value!r}")
        return None
    if tp is Path:
        if isinstance(value, str | Path) and str(value):
            return Path(value)
        problems.append(f"{where}: expected a path, got {value!r}")
        return None
    return value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return " | ".join(map(repr, get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def to_dict(obj: Any) -> Any:
    """A config as plain YAML/JSON-ready data (Paths become strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def describe(cls: type, section: str) -> str:
    """The keys of a config section with their defaults and docs, for `--help`."""
    lines = [f"config keys (recipe section '{section}:', or --set {section}.KEY=VALUE):"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not _REQUIRED:
            default = f"default {to_dict(f.default)!r}"
        else:
            default = "required"
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, {default})")
        doc = f.metadata.get("doc")
        if doc:
            lines.append(f"      {doc}")
    return "\n".join(lines)


def resolve_path(value: str | Path, base_dir: str | Path | None) -> Path:
    """A path from a recipe: relative paths are taken from the recipe's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or base_dir is None:
        return p
    return Path(os.path.normpath(Path(base_dir) / p))


def resolve_paths(cfg: T, base_dir: str | Path | None) -> T:
    """`cfg` with every relative Path field (nested too) taken from `base_dir` (the recipe's folder)."""
    if base_dir is None or not dataclasses.is_dataclass(cfg):
        return cfg
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        new = _resolve_value(value, base_dir)
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


def _resolve_value(value: Any, base_dir: str | Path) -> Any:
    if isinstance(value, Path):
        return resolve_path(value, base_dir)
    if isinstance(value, tuple):
        return tuple(_resolve_value(v, base_dir) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return resolve_paths(value, base_dir)
    return value


def absolutize_section(cls: type, raw: Mapping[str, Any], base_dir: str | Path | None) -> dict[str, Any]:
    """A raw recipe section with its relative Path values taken from `base_dir`.

    For sections moved between recipes (`kovocab run`'s `from:`): once absolute, their
    paths no longer depend on which file the section was read from.
    """
    out = dict(raw)
    if base_dir is None or not dataclasses.is_dataclass(cls):
        return out
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in out:
            out[f.name] = _absolutize_value(hints[f.name], out[f.name], base_dir)
    return out


def _absolutize_value(tp: Any, value: Any, base_dir: str | Path) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is not type(None):
                value = _absolutize_value(a, value, base_dir)
        return value
    if origin is tuple and args:
        items = [value] if isinstance(value, str | Mapping) else value
        if isinstance(items, list | tuple):
            return [_absolutize_value(args[0], v, base_dir) for v in items]
        return value
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return absolutize_section(tp, value, base_dir)  # type: ignore[arg-type]
    if tp is Path and isinstance(value, str | Path) and str(value):
        return str(resolve_path(value, base_dir))
    return value
