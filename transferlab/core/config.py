"""Configuration as frozen dataclasses: to and from plain dicts (config.yaml), flat views for the CLI.

A config is a frozen dataclass whose fields are plain values (str, int, float, bool, None, tuples)
or other configs. ``option`` attaches what the command line needs (help, flag name, choices); the
CLI builds its options from the fields, so every command spells a setting the same way. Leaf field
names are unique within a config tree, which is what lets a flat namespace (argparse) rebuild it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import TransferlabError

C = TypeVar("C")


def option(default: Any, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None,
           required: bool = False, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A config field with what the command line shows for it: ``help``; ``flag`` when it is not
    ``--field-name``; ``choices``; ``required`` (no sensible default); ``minimum`` and ``maximum``
    (numbers, and each item of a tuple of numbers)."""
    meta = {"help": help, "flag": flag, "choices": choices, "required": required, "minimum": minimum,
            "maximum": maximum}
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=meta)


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (annotations are strings under __future__)."""
    return typing.get_type_hints(cls)


def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls: type) -> list[tuple[dataclasses.Field, Any, type]]:
    """Every leaf field of a config tree as (field, resolved type, owning class), depth first."""
    out = []
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_config(tp):
            out += leaf_fields(tp)
        else:
            out.append((f, tp, cls))
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A nested dict of plain values (tuples as lists), ready for YAML or JSON."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def without_none(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other type as it is."""
    if is_union(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` read from YAML as the field type ``tp`` (lists become tuples)."""
    if value is None:
        return None
    tp = without_none(tp)
    if is_union(tp):
        return value
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, item) for v in value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def out_of_limits(value: float, minimum: float | None, maximum: float | None, shown: str | None = None) -> str | None:
    """What is wrong with the number ``value`` (written ``shown``) for an ``option``'s ``minimum`` and
    ``maximum``, or None: the one wording of the command line's and config.yaml's checks."""
    shown = str(value) if shown is None else shown
    if minimum is not None and value < minimum:
        return f"{shown} is below the minimum of {minimum:g}"
    if maximum is not None and value > maximum:
        return f"{shown} is above the maximum of {maximum:g}"
    return None


def check_value(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    """The limits of ``option`` (choices, minimum, maximum) applied to ``value`` of the setting ``name``,
    for settings that do not come through the command line (a config.yaml); a TransferlabError names
    the setting and its limit."""
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if meta.get("choices") and item not in meta["choices"]:
            raise TransferlabError(f"setting {name}: {item!r} is not one of {', '.join(meta['choices'])}")
        problem = out_of_limits(item, meta.get("minimum"), meta.get("maximum")) \
            if isinstance(item, (int, float)) and not isinstance(item, bool) else None
        if problem:
            raise TransferlabError(f"setting {name}: {problem}")


def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config from ``to_dict``'s output; unknown keys, and values outside an ``option``'s
    choices or limits, are an error naming them."""
    hints = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TransferlabError(f"unknown setting(s) {', '.join(sorted(unknown))} for {cls.__name__}; "
                               f"known: {', '.join(sorted(names))}")
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if is_config(tp):
            kwargs[name] = from_dict(tp, value or {})
        else:
            kwargs[name] = _coerce(value, tp)
            check_value(name, kwargs[name], meta[name])
    return cls(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """Leaf fields of a config tree by name (names are unique within a tree)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out |= flatten(value) if dataclasses.is_dataclass(value) else {f.name: value}
    return out


def from_flat(cls: type[C], flat: Mapping[str, Any]) -> C:
    """Build a config tree from a flat mapping of leaf names (e.g. argparse's namespace); leaves that
    are missing keep their defaults, keys that are not leaves are ignored."""
    hints = field_types(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_config(tp):
            kwargs[f.name] = from_flat(tp, flat)
        elif f.name in flat:
            kwargs[f.name] = flat[f.name]
    return cls(**kwargs)
