"""Typed records: the files one command writes and a later one reads back (result.json, model.json,
calibration.json, metrics.json ...), as dataclasses checked field by field when read.

A file that parses but holds the wrong content (a missing key, a string where a number belongs, a
list cut short) is a ``DamagedFileError`` naming the file, the key and the fix, exactly as for a file
that does not parse; nothing downstream meets a KeyError or a NaN it did not expect.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .config import check_scalar
from .errors import DamagedFileError
from .io import read_json

R = TypeVar("R")


class RecordError(ValueError):
    """What is wrong with a record's content, and where (``key``, dotted)."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}" if key else problem)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else None


def _scalar(value: Any, tp: type, key: str) -> Any:
    # Records may hold NaN where a number was not defined (JSON's NaN): only settings refuse it.
    value, problem = check_scalar(value, tp, finite=False)
    if problem:
        raise RecordError(key, problem)
    return value


def _check_union(value: Any, union: tuple[Any, ...], key: str) -> Any:
    if value is None and type(None) in union:
        return None
    errors = []
    for option in (a for a in union if a is not type(None)):
        try:
            return check_type(value, option, key)
        except RecordError as exc:
            errors.append(exc.problem)
    raise RecordError(key, errors[0] if len(errors) == 1 else f"{value!r} is of none of the expected types")


def check_type(value: Any, tp: Any, key: str = "") -> Any:
    """``value`` (parsed JSON) as the type ``tp`` (lists become tuples where the type says so, dicts
    become dataclasses), or a ``RecordError`` naming ``key``."""
    if tp is Any:
        return value
    union = _union_args(tp)
    if union is not None:
        return _check_union(value, union, key)
    if value is None:
        raise RecordError(key, "a value is missing")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return load_record(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecordError(key, f"{type(value).__name__} is not a list")
        item = args[0] if args else Any
        items = [check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecordError(key, f"{type(value).__name__} is not a mapping")
        val_tp = args[1] if args else Any
        return {str(k): check_type(v, val_tp, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    return _scalar(value, tp, key)


def load_record(cls: type[R], data: Any, key: str = "") -> R:
    """The record ``cls`` from a parsed mapping: every field's type checked, unknown keys and missing
    required ones refused, then the record's own ``check`` (a ``RecordError`` on any of it)."""
    if not isinstance(data, Mapping):
        raise RecordError(key, f"{type(data).__name__} is not a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise RecordError(f"{key}.{unknown[0]}" if key else str(unknown[0]), "unknown key")
    kwargs = {}
    for name, f in fields.items():
        where = f"{key}.{name}" if key else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(where, "missing")
            continue
        kwargs[name] = check_type(data[name], hints[name], where)
    record = cls(**kwargs)
    check = getattr(record, "check", None)
    if check is not None:
        check()
    return record


def read_record(cls: type[R], path: Path, fix: str = "") -> R:
    """The record ``cls`` read from the JSON file ``path``; a file that does not parse, or parses
    to the wrong content, is a ``DamagedFileError`` naming it and ``fix``."""
    data = read_json(path, fix)
    try:
        return load_record(cls, data)
    except RecordError as exc:
        raise DamagedFileError(path, f"{exc}", fix) from None


def positive_finite(key: str, value: float) -> None:
    """A ``RecordError`` unless ``value`` is a finite number above 0 (a temperature, a scale)."""
    if not math.isfinite(value) or value <= 0:
        raise RecordError(key, f"{value} is not a finite number above 0")


def check_array(path: Path, array: Any, shape: tuple[int | None, ...], fix: str = "") -> Any:
    """``array`` (read from ``path``) if it has ``shape`` (None: any length) and finite values;
    else a ``DamagedFileError`` naming the file."""
    import numpy as np

    ok = array.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, array.shape))
    if not ok:
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise DamagedFileError(path, f"shape {'x'.join(map(str, array.shape))}, expected {want}", fix)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DamagedFileError(path, "holds values that are not finite numbers", fix)
    return array
