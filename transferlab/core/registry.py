"""A tiny registry of plain builder functions by name, in the style of timm's ``register_model``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import TransferlabError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps names to builder functions; duplicates raise, unknown names list what exists."""

    def __init__(self, kind: str, error: type[TransferlabError] = TransferlabError):
        self.kind = kind
        self.error = error
        self._items: dict[str, F] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``, with optional facts about it (``info``)."""

        def wrap(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            self._info[name] = info
            return fn

        return wrap

    def info(self, name: str) -> dict[str, Any]:
        """The facts registered with ``name`` (empty if none)."""
        self.get(name)
        return dict(self._info[name])

    def get(self, name: str) -> F:
        """The builder registered as ``name``; a helpful error if there is none."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise self.error(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self._items)}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
