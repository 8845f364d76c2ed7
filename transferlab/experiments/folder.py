"""The results folder on disk: where it may be, and who holds it (one process; rank 0 of a torchrun
job). Its layout is ``core.layout``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..core.errors import TransferlabError
from ..core.io import folder_lock, remove_stale_temporaries
from ..core.layout import ResultsFolder
from ..runtime.distributed import broadcast, is_main


def check_out_folder(out: Path, source: str | None = None) -> None:
    """``--out`` must be a folder (or not exist yet), outside the data folder ``source``."""
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"--out {out} is a file, not a folder; choose another --out")
    data = Path(source).expanduser() if source else None
    if data is not None and data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise TransferlabError(f"--out {out} lies inside the data folder {data}: results would be read as "
                               "images next time; choose an --out outside it")


@contextmanager
def results_folder(out: Path, source: str | None, what: str) -> Iterator[Path]:
    """Hold the results folder ``out`` for one process (a second one stops with a message), after
    checking it (``check_out_folder``) and removing temporaries that killed processes left in it."""
    check_out_folder(out, source)
    with folder_lock(out, what=what):
        remove_stale_temporaries(out)
        yield out


@contextmanager
def main_holds(out: Path, source: str | None, what: str, checks: Callable[[], None] = lambda: None) -> Iterator[None]:
    """``results_folder`` held by rank 0 alone (the only writer of shared results), with ``checks``
    run there; a refusal on rank 0 stops every process of a torchrun job with the same message."""
    held, error = ExitStack(), None
    if is_main():
        try:
            held.enter_context(results_folder(out, source, what))
            checks()
        except TransferlabError as exc:
            held.close()
            error = str(exc)
    error = broadcast(error)
    if error is not None:
        raise TransferlabError(error)
    with held:
        yield


def model_folder(out: Path, strategy: str, seed: int) -> Path:
    """Where the run of ``strategy`` with ``seed`` keeps its files in the results directory ``out``."""
    return ResultsFolder(out).run(strategy, seed).path


def results_root(folder: Path) -> Path | None:
    """The results directory (the one holding config.yaml) that a model folder belongs to, if any."""
    root = ResultsFolder.containing(folder)
    return None if root is None else root.path
