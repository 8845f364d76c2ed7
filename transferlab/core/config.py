"""Configuration as frozen dataclasses: to and from plain dicts (config.yaml), flat views for the CLI.

A config is a frozen dataclass whose fields are plain values (str, int, float, bool, None, tuples)
or other configs. ``option`` attaches what the command line needs (help, flag name, choices); the
CLI builds its options from the fields, so every command spells a setting the same way. Leaf field
names are unique within a config tree, which is what lets a flat namespace (argparse) rebuild it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
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
        elif isinstance(value, enum.Enum):
            value = value.value
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


class SettingError(TransferlabError):
    """A configuration value that is refused: ``setting`` names the field (dotted from the root of a
    config.yaml once ``from_dict`` has seen it), ``problem`` says what is wrong, in the words the
    command line uses for the same value."""

    def __init__(self, setting: str, problem: str, flag: str | None = None):
        self.setting, self.problem, self.flag = setting, problem, flag
        super().__init__(f"setting {setting}" + (f" ({flag})" if flag else "") + f": {problem}")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field (``--field-name`` unless the option names another)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


_KIND = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def check_scalar(value: Any, tp: Any, finite: bool = True) -> tuple[Any, str | None]:
    """``value`` as the type ``tp`` (an int is a float; an Enum's value is its member), or why not;
    with ``finite`` a float must not be NaN or infinite. Settings and records (``core.records``) share it."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value, None
        known = [m.value for m in tp]
        if isinstance(value, str) and value in known:
            return tp(value), None
        return value, f"{_shown(value)} is not one of {', '.join(known)}"
    if tp is Any:
        return value, None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if not ok:
        return value, f"{_shown(value)} is not {_KIND.get(tp, tp.__name__)}"
    if finite and tp is float and not math.isfinite(value):
        return value, f"{_shown(value)} is not a finite number"
    return value, None


def out_of_limits(value: float, minimum: float | None, maximum: float | None, shown: str | None = None) -> str | None:
    """What is wrong with the number ``value`` (written ``shown``) for an ``option``'s ``minimum`` and
    ``maximum`` (or that it is NaN or infinite), or None: the one wording of the command line's, the
    dataclasses' and config.yaml's checks."""
    shown = str(value) if shown is None else shown
    if isinstance(value, float) and not math.isfinite(value):
        return f"{shown} is not a finite number"
    if minimum is not None and value < minimum:
        return f"{shown} is below the minimum of {minimum:g}"
    if maximum is not None and value > maximum:
        return f"{shown} is above the maximum of {maximum:g}"
    return None


def _check_tuple(value: Any, tp: Any, meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    if isinstance(value, str):  # config.yaml's ``strategies: probe,finetune``, as on the command line
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, (tuple, list)):
        return value, f"{_shown(value)} is not a list"
    (item, *_) = typing.get_args(tp) or (Any,)
    out = []
    for v in value:
        v, problem = check_value(v, item, meta)
        if problem:
            return value, problem
        out.append(v)
    if not out and meta.get("required"):
        return value, "names no values"
    return tuple(out), None


def check_value(value: Any, tp: Any, meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    """``value`` checked against the field type ``tp`` and the ``option``'s choices and limits:
    (the value as stored, e.g. a list as a tuple), and what is wrong with it or None. The one
    wording of the checks that the command line, the dataclasses and config.yaml share."""
    if value is None:
        optional = tp is Any or is_union(tp) and type(None) in typing.get_args(tp)
        return None, None if optional else "a value is needed"
    tp = without_none(tp)
    if typing.get_origin(tp) is tuple:
        return _check_tuple(value, tp, meta)
    value, problem = check_scalar(value, tp)
    if problem:
        return value, problem
    if meta.get("choices") and value not in meta["choices"]:
        return value, f"{_shown(value)} is not one of {', '.join(meta['choices'])}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value, out_of_limits(value, meta.get("minimum"), meta.get("maximum"))
    return value, None


class Settings:
    """Base of the configuration dataclasses: every field is checked when the object is built
    (type, choices, limits, NaN), so the command line, config.yaml and the Python API refuse the
    same bad values with the same words (``SettingError`` naming the field and its flag)."""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            tp, value = hints[f.name], getattr(self, f.name)
            if is_config(tp):
                if not isinstance(value, tp):
                    raise SettingError(f.name, f"{_shown(value)} is not a {tp.__name__}")
                continue
            stored, problem = check_value(value, tp, f.metadata)
            if problem:
                raise SettingError(f.name, problem, flag_of(f) if f.metadata.get("help") else None)
            if stored is not value:
                object.__setattr__(self, f.name, stored)  # frozen: the checked form (list -> tuple)
        self.check()

    def check(self) -> None:
        """Checks across fields (none by default); raise ``SettingError``."""


def from_dict(cls: type[C], data: Any, where: str = "") -> C:
    """Rebuild a config from ``to_dict``'s output (a config.yaml); unknown keys and refused values
    are a ``SettingError`` naming the key, dotted from the root (``train.model.dropout``)."""
    if not isinstance(data, Mapping):
        raise SettingError(where.rstrip(".") or cls.__name__, f"{_shown(data)} is not a section of settings")
    hints = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in names]
    if unknown:
        raise SettingError(where + unknown[0], f"unknown setting; known here: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SettingError(where + missing[0], "missing")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        kwargs[name] = from_dict(tp, {} if value is None else value, f"{where}{name}.") if is_config(tp) else value
    try:
        return cls(**kwargs)
    except SettingError as exc:
        raise SettingError(where + exc.setting, exc.problem) from None


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
