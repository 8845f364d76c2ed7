"""Command line options generated from the config dataclasses, so every command spells a setting the
same way (``--batch-size``, ``--max-epochs``, ``--split-seed``, ``--device`` ...), with values checked
at the parser: a bad value is a one-line error naming the option."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ..core.config import flag_of, from_flat, is_union, leaf_fields, out_of_limits, without_none


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; a wider union is read as a string; other types unchanged."""
    tp = without_none(tp)
    return str if is_union(tp) else tp


def number(kind: type, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` (int or float), at least ``minimum`` and at most ``maximum``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") \
                from None
        problem = out_of_limits(value, minimum, maximum, text)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    return parse


def _sequence(item: type, minimum: float | None) -> Callable[[str], tuple]:
    """Comma-separated values; for whole numbers also a range ``a..b``."""
    one = number(item, minimum) if item in (int, float) else str

    def parse(text: str) -> tuple:
        if item is int and ".." in text:
            lo, _, hi = text.partition("..")
            first, last = one(lo), one(hi)
            if last < first:
                raise argparse.ArgumentTypeError(f"{text}: the range is empty")
            return tuple(range(first, last + 1))
        values = tuple(one(x.strip()) for x in text.split(",") if x.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names no values")
        return values
    return parse


def _group_title(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


def add_config_options(parser: argparse.ArgumentParser, cls: type, defaults: Mapping[str, Any] | None = None,
                       skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """Add an option for every leaf field of the config ``cls`` (defaults overridable per command), in
    one help group per section (``--help`` shows the sections of ``train.config``); ``only`` keeps just
    the named fields (a command that uses a few of a section's settings)."""
    defaults = defaults or {}
    groups: dict[type, argparse._ArgumentGroup] = {}
    for f, tp, owner in leaf_fields(cls):
        if f.name in skip or only is not None and f.name not in only:
            continue
        if owner not in groups:
            groups[owner] = parser.add_argument_group(_group_title(owner))
        _add_option(groups[owner], f, tp, defaults)


def _add_option(group: argparse._ArgumentGroup, f: dataclasses.Field, tp: Any, defaults: Mapping[str, Any]) -> None:
    """The option of one config field: its flag, type, limits, choices and help."""
    meta = f.metadata
    flag = flag_of(f)
    default = defaults.get(f.name, f.default)
    if isinstance(default, enum.Enum):  # argparse passes a str default through ``type``: give it the text
        default = default.value
    kind = _base_type(tp)
    if kind is bool:
        # The flag turns away from the dataclass default: --fp32, --no-augment.
        flag = flag if not f.default else "--no-" + f.name.replace("_", "-")
        # The help describes the setting; a --no- flag says that it turns it off.
        shown = f"turn off: {meta.get('help')}" if f.default and meta.get("help") else meta.get("help")
        group.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true",
                           default=default, help=shown)
        return
    if typing.get_origin(kind) is tuple:
        parse, shown = _sequence(typing.get_args(kind)[0], meta.get("minimum")), ",".join(map(str, default or ()))
    elif kind in (int, float):
        parse, shown = number(kind, meta.get("minimum"), meta.get("maximum")), default
    else:
        parse, shown = str, default
    # Required settings are checked after parsing (``require``): --config may supply them.
    note = " (required)" if meta.get("required") and f.name not in defaults else ""
    help_text = meta.get("help", "") + (f" (default: {shown})" if shown not in (None, "", ()) else note)
    metavar = None if meta.get("choices") else flag[2:].upper().replace("-", "_")
    group.add_argument(flag, dest=f.name, type=parse, default=default, choices=meta.get("choices"),
                       metavar=metavar, help=help_text)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The config ``cls`` built from parsed options (fields without an option keep their defaults);
    a required setting left empty is a usage error naming its option."""
    for f, _, _ in leaf_fields(cls):
        if f.metadata.get("required") and not getattr(args, f.name, None):
            args.subparser.error(f"the following arguments are required: {flag_of(f)}")
    return from_flat(cls, vars(args))


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` printed as one JSON document on stdout instead of the text for people."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of text")


def add_output_options(parser: argparse.ArgumentParser, out_help: str, resume: bool = False,
                       out_default: str | None = None) -> None:
    """``--out`` and ``--quiet`` (and ``--resume``), the same on every command that writes results."""
    group = parser.add_argument_group("output")
    group.add_argument("--out", default=out_default, help=out_help)
    group.add_argument("--quiet", action="store_true", help="no progress output")
    if resume:
        group.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
