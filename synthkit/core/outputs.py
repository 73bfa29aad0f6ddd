"""How an output is written, in one place: whole (into its `.partial`, renamed to its name only once complete, so
that an interrupted job never leaves a file that looks finished), by one writer at a time (its lock), and resumably
(a finished output kept, an interrupted `.partial` continued, bad input leaving nothing behind)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .jobs import check_destination, check_output
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


@dataclass
class Resumable:
    """Where a resumable output stands: `complete` (finished, and kept by --resume), else `resuming` its
    `partial` (an interrupted run's) or starting it afresh."""

    out: Path
    partial: Path
    complete: bool = False
    resuming: bool = False


@contextlib.contextmanager
def resumable_output(
    out: str | Path,
    overwrite: bool,
    resume: bool,
    inputs: Sequence[str | Path | None] = (),
    leftovers: Sequence[Path] = (),
    same_job: Callable[[Path], None] | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Iterator[Resumable]:
    """`with resumable_output(out, overwrite, resume) as step:` write `step.partial` (unless `step.complete`), from
    scratch or, when `step.resuming`, from where it stopped. The writer lock of `out` is held throughout, taken before
    anything is looked at; jobs.check_output decides on an existing output and the leftovers (the .partial and
    `leftovers`); `same_job(partial)` may refuse a .partial made with other options (it is kept). When the block ends
    `verify(partial)` checks it and it is renamed to `out`; a UserError in the block removes it (bad input is not an
    interruption), any other failure or an interruption keeps it for --resume."""
    out = Path(out)
    step = Resumable(out, partial_path(out))
    with writer_lock(out):
        if check_output(out, [step.partial, *leftovers], overwrite, resume, inputs=inputs):
            step.complete = True
            yield step
            return
        step.resuming = resume and step.partial.exists()
        if step.resuming and same_job is not None:
            same_job(step.partial)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield step
        except UserError:
            step.partial.unlink(missing_ok=True)
            raise
        if verify is not None:
            verify(step.partial)
        os.replace(step.partial, out)
        step.complete = True


def locked_output(argument: str = "out", folder: bool = False, inputs: Sequence[str] = ()) -> Callable:
    """Decorator: run the function holding the writer lock of its argument `argument`, once that output's
    destination is checked (jobs.check_destination: none of the arguments named in `inputs`, a folder that can be
    written, a file where a file goes)."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            out = given[argument]
            check_destination(out, [given.get(name) for name in inputs], folder=folder)
            with writer_lock(out):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
