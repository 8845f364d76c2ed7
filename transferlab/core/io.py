"""The one atomic write: a file (or folder) is built under a temporary name and renamed into place.

A run killed half-way never leaves a half-written file where a reader expects a whole one: it
leaves either the old file or the new one, and at worst a hidden ``.<name>.tmp<pid>`` beside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import DamagedFileError, TransferlabError


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffix (numpy adds ``.npy`` to names without it)."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write (a file, or a folder to create); rename it to ``path`` on success.

    On an exception the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        problem = _write_failure(path, exc)
        if problem is not None:
            raise problem from None
        raise


def _write_failure(path: Path, exc: BaseException) -> BaseException | None:
    """A failed write of ``path`` as an error that names it and what to do: the folder removed while
    the run went on, or a write error (a full disk) that numpy or torch reports without the file's
    name (torch: ``RuntimeError: [enforce fail at inline_container.cc ...] file write failed``)."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    if not path.parent.is_dir():
        return TransferlabError(f"{path.parent} was removed while this command was writing to it; nothing more "
                                "can be saved there: start again, or choose another --out")
    if isinstance(exc, OSError):
        if exc.filename is None:
            exc.filename = str(path)
        return None
    if "inline_container" in str(exc) or "write" in str(exc).lower():
        free = shutil.disk_usage(path.parent).free
        code = errno.ENOSPC if free < (64 << 20) else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    return None


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2))


def read_json(path: str | Path, fix: str = "") -> Any:
    """The JSON in ``path``; a file cut short or otherwise unreadable as JSON is a ``DamagedFileError``
    (``fix`` says what to do about it)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"not valid JSON: {exc}", fix) from None


# ---------------------------------------------------------------------------------------------
# Disk space, stale temporaries, locks

_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.[^.]*)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporaries that ``atomic_path`` left behind in ``folder`` for processes that died
    (killed mid-write); return what was removed. Temporaries of live processes are left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        m = _TEMPORARY.match(path.name)
        if m and not _alive(int(m.group(1))):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def ensure_free_space(folder: str | Path, needed: int, what: str, hint: str = "") -> None:
    """Fail early, with a message, when the file system of ``folder`` has less than ``needed`` bytes
    free (plus a margin) for ``what``."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    margin = 64 << 20
    if free < needed + margin:
        raise TransferlabError(f"not enough free disk space for {what} in {folder}: needs about "
                               f"{(needed + margin) / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free; free some space"
                               + (f" or {hint}" if hint else ""))


def allocate(path: Path) -> None:
    """Give a new memory-mapped file its blocks now: a sparse file on a disk that fills up makes the
    first write to an unbacked page kill the process with SIGBUS; allocated up front, a full disk
    is an ``OSError`` (ENOSPC) here instead."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # file systems without it
                raise


@contextmanager
def folder_lock(folder: str | Path, wait: bool = False, what: str = "") -> Iterator[None]:
    """Hold ``folder/.lock`` (an advisory ``flock``) for the block: a second process either waits
    (``wait``) or stops with a message naming the holder's pid. The lock ends with the process, so a
    killed run never leaves a stale one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise TransferlabError(f"another transferlab process (pid {holder}) is using {folder}"
                                   f"{' for ' + what if what else ''}; wait for it to finish, or choose another "
                                   "folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
