"""The ``transferlab`` command line: builds the parser from the command modules, makes the process-wide
settings a command-line run wants, and turns user errors into one-line messages."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import warnings

import torch.distributed as dist
from PIL import Image
from rich.markup import escape

from ..core.errors import TransferlabError, TransferlabWarning, explain_os_error
from ..core.paths import cache_home
from ..core.progress import console, show_warning
from ..data.images import allow_large_images
from ..runtime import distributed
from ..runtime.allocator import tune_allocator
from ..runtime.device import configure_torch
from . import browse, deploy, runs, studies
from .common import out


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one subcommand per task, options generated from the configs."""
    p = argparse.ArgumentParser(prog="transferlab", description="Transfer learning for image classification.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (runs, studies, browse, deploy):
        module.register(sub)
    p.set_defaults(root_parser=p)
    return p


def _as_user_error(exc: BaseException) -> TransferlabError | None:
    """The one-line error for what a user's files, disk or environment caused; None for a bug."""
    if isinstance(exc, TransferlabError):
        return exc
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in (errno.ENOSPC, errno.EIO, errno.EPIPE):
        return TransferlabError(f"writing the output failed ({exc.strerror or exc}): the terminal's or the "
                                "redirected output's device is full or closed; free some space or write the "
                                "output elsewhere")
    if isinstance(exc, OSError):
        where = str(exc.filename or "")
        hint = "set TRANSFERLAB_HOME to another folder for the caches" if where.startswith(str(cache_home())) \
            else "choose another --out" if exc.errno is not None else ""
        return explain_os_error(exc, hint)
    if isinstance(exc, Image.DecompressionBombError):
        return TransferlabError(f"an image is too large to decode safely: {exc}")
    return None


RESUME_HINT = ("finished runs and the last checkpoints are kept: run the same command again with --resume "
               "to continue")
# How a failed collective reads when a peer process died: PyTorch raises DistError for some, and a
# plain RuntimeError carrying gloo's or NCCL's message for others (gloo's "Connection reset by peer").
_PEER_SIGNS = ("by peer", "gloo", "NCCL")


class _Terminated(Exception):
    """SIGTERM arrived (a batch scheduler's stop, ``kill``, or torchrun stopping the job)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _stopped(exc: BaseException) -> tuple[str, int] | None:
    """For a process that was stopped (SIGTERM) or whose torchrun job lost a process: the message,
    naming why and that --resume continues, and the exit status; None for any other exception."""
    several = distributed.world_size() > 1
    where = f"rank {distributed.rank()}: " if several else ""
    if isinstance(exc, _Terminated):
        why = "stopped by SIGTERM" + (" (torchrun stops every process of a job when one fails; its report "
                                      "names which)" if several else "")
        return f"{where}{why}; {RESUME_HINT}", 143
    if several and (isinstance(exc, dist.DistError) or
                    isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _PEER_SIGNS)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{where}an exchange with the other processes of the job failed ({first}): one of them " \
               f"stopped or hangs; {RESUME_HINT}", 1
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command (``_main``), with the library's warnings shown on stderr as they come."""
    for stream in (sys.stdout, sys.stderr):
        # PYTHONIOENCODING=ascii and class names in other scripts: escaped, not a UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    with warnings.catch_warnings():
        warnings.simplefilter("always", TransferlabWarning)
        warnings.showwarning = show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    """Run one command; 0 on success, 2 on a user error (message, no traceback), 130 on Ctrl-C, 143 on
    SIGTERM, 1 when another process of a torchrun job failed (message, no traceback).

    Errors that the user's input, files, disk or environment caused (``TransferlabError``, and
    ``OSError`` such as a full disk, a read-only folder or a missing permission) are one line naming
    the file and what to do; ``TRANSFERLAB_DEBUG=1`` shows the traceback as well."""
    args = build_parser().parse_args(argv)
    # Python's default for SIGTERM ends the process without a word; a message and the finally
    # clauses (lock release, process group shutdown) are what a stopped long run should leave.
    on_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal's condition
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        args = runs.apply_config_file(args, argv)
        # Process-wide settings belong to the program, not to the library: a notebook that imports
        # transferlab keeps its own allocator, Pillow limits and cuDNN settings.
        tune_allocator()
        allow_large_images()
        configure_torch(deterministic=getattr(args, "deterministic", False))
        _join_torchrun_job(args)
        return args.handler(args) or 0
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:
        if on_main_thread:  # torchrun's SIGTERM follows a peer's failure: the message must come out whole
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(exc, _Terminated) and getattr(args, "on_sigterm", None):
            console.print(args.on_sigterm, highlight=False, markup=False)  # a server's normal way to stop
            return 0
        stopped, error = _stopped(exc), _as_user_error(exc)
        if stopped is None and error is None or os.environ.get("TRANSFERLAB_DEBUG"):
            raise
        # The message may hold file or class names with brackets: printed as text, not as markup.
        if stopped is not None:
            console.print(f"[bold red]stopped:[/bold red] {escape(stopped[0])}", highlight=False, soft_wrap=True)
            return stopped[1]
        console.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 2
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        distributed.shutdown()


def _join_torchrun_job(args: argparse.Namespace) -> None:
    """Under torchrun: join the process group, use this process's GPU, and leave the output to rank 0
    (the others would print the same bars and tables); errors still print on every rank."""
    if not distributed.launched():
        return
    args.device = distributed.init_from_env(getattr(args, "device", "auto"))
    if not distributed.is_main():
        out.quiet = True
        if hasattr(args, "quiet"):
            args.quiet = True


if __name__ == "__main__":
    sys.exit(main())
