"""How an output is written, in one place: whole (into its `.partial`, renamed to its name only once complete, so
that an interrupted job never leaves a file that looks finished), and by one writer at a time (its lock)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .jobs import check_destination
from .locks import writer_lock
from .paths import partial_path


@contextlib.contextmanager
def written_whole(out: str | Path, folder: bool = False) -> Iterator[Path]:
    """`with written_whole(out) as tmp:` write `tmp` (a file, or with `folder` a folder); when the block ends it
    replaces `out` at once, so `out` is either the old one or the new one. When the block fails it is removed; an
    interruption (Ctrl-C) leaves it as a kill would, and the next write starts it afresh."""
    out = Path(out)
    tmp = partial_path(out)
    shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink(missing_ok=True)
        raise
    if folder and out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def locked_output(argument: str = "out", folder: bool = False) -> Callable:
    """Decorator: run the function holding the writer lock of its argument `argument`, once that output's
    destination is checked (jobs.check_destination: a folder that can be written, a file where a file goes)."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = signature.bind(*args, **kwargs).arguments[argument]
            check_destination(out, folder=folder)
            with writer_lock(out):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
