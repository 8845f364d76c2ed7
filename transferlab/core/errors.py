"""Errors a user can act on. The CLI prints their message alone, without a traceback."""

import errno


class TransferlabError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""


class TransferlabWarning(UserWarning):
    """Something the user should know that does not stop the work (a skipped image, an imbalanced
    data set, a damaged checkpoint trained again). The library issues these through ``warnings``, so
    a notebook or a program filters them as it likes; the command line prints them in colour."""


class DataError(TransferlabError):
    """A dataset cannot be used as given (missing path, empty class, corrupt image in strict mode)."""


class BackboneError(TransferlabError):
    """A backbone name is unknown or its weights cannot be obtained."""


class DamagedFileError(TransferlabError):
    """A file transferlab wrote earlier cannot be read back (cut short by a crash or a full disk,
    or edited by hand)."""

    def __init__(self, path: object, problem: str, fix: str = ""):
        self.path = path
        super().__init__(f"{path} is damaged or incomplete ({problem}); "
                         + (fix or "it was probably cut short by a crash or a full disk: delete it and rerun "
                                   "the command that wrote it"))


# What to do about an operating-system error, by errno name.
_OS_ADVICE = {
    "ENOSPC": "the disk is full: free some space, or write elsewhere",
    "EDQUOT": "your disk quota is used up: free some space, or write elsewhere",
    "EROFS": "that file system is read-only: write elsewhere",
    "EACCES": "permission denied: check the file's permissions, or write elsewhere",
    "EPERM": "operation not permitted: check the file's permissions, or write elsewhere",
    "ENOTDIR": "a file stands where a folder is needed",
    "EISDIR": "a folder stands where a file is needed",
    "ENOENT": "no such file or folder",
    "EEXIST": "it already exists",
    "EIO": "the device reported an input/output error",
}


def explain_os_error(exc: OSError, hint: str = "") -> TransferlabError:
    """A one-line error for an ``OSError``: what failed, on which file, and what to do."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = _OS_ADVICE.get(name, exc.strerror or str(exc))
    files = " -> ".join(str(f) for f in (exc.filename, getattr(exc, "filename2", None)) if f)
    return TransferlabError(f"{files + ': ' if files else ''}{what}" + (f" ({hint})" if hint else ""))
