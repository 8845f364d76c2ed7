"""Progress output (rich), silenced with ``quiet``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import TransferlabWarning

_python_showwarning = warnings.showwarning

# emoji=False: a file or class name like "a:fire:b" is printed as it is.
console = Console(stderr=True, emoji=False, soft_wrap=True)


class _Bar:
    """A handle on one progress task; does nothing when quiet."""

    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)

    def update(self, **fields: object) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


@contextmanager
def progress_bar(description: str, total: int | None, quiet: bool = False,
                 status: bool = False) -> Iterator[_Bar]:
    """A rich progress bar on stderr; ``status=True`` adds a free-text ``info`` field."""
    if quiet:
        yield _Bar(None, None)
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    if status:
        columns.append(TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)


def warn(message: str, category: type[Warning] = TransferlabWarning) -> None:
    """Issue ``message`` as a ``TransferlabWarning`` (``warnings.warn``): the library prints nothing
    itself; the command line shows it on stderr (``show_warning``), even when quiet."""
    warnings.warn(message, category, stacklevel=3)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    """A ``warnings.showwarning`` for the command line: transferlab's warnings as one plain line
    (file and class names with brackets printed as they are, not read as markup), others as Python
    shows them."""
    if issubclass(category, TransferlabWarning):
        console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)
