"""The checks every job that writes an output makes, in one place, before it reads or computes anything: where
the output goes (not onto an input, into a folder that can be written, a file where a file goes), whether the
sizes asked for fit the memory budget, an existing output (kept by --resume only if it was made as asked now), an
interrupted run's leftovers, a resumed state made with other options, and shards (which slice is mine, and their
order)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .memory import human, image_bytes
from .meta import jsonable


def check_range(
    value: float, option: str, low: float | None = None, high: float | None = None, open_low: bool = False
) -> None:
    """A finite number within [low, high] (above low when `open_low`): one error line naming the option."""
    import math

    below = low is not None and (value <= low if open_low else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = ("above " if open_low else "at least ") + f"{low:g}" if low is not None else ""
        bounds += (" and " if bounds else "") + f"at most {high:g}" if high is not None else ""
        raise UserError(f"{option} must be a number{(' ' + bounds) if bounds else ''}, got {value}")


def _resolved(path: Path) -> Path:
    """The absolute path with links followed; a loop of links stays as given (opening it fails later, in one line)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return path.absolute()


def check_destination(out: str | Path, inputs: Sequence[str | Path | None] = (), folder: bool = False) -> None:
    """`out` is none of `inputs` (compared as resolved paths and as files, so links and ./x count), is not a
    folder where a file goes (nor a file where a folder of results goes), and the nearest folder of it that
    exists can be written (tried with a file created and removed at once)."""
    if not str(out).strip():
        raise UserError("an empty output path was given: name the file or folder to write")
    out = Path(out)
    target = _resolved(out)
    for given in inputs:
        if given is None or str(given) == "":
            continue
        path = Path(given)
        same = _resolved(path) == target
        if not same and path.exists() and out.exists():
            try:
                same = os.path.samefile(path, out)
            except OSError:
                same = False
        if same:
            raise UserError(
                f"{out} is the input {given}: writing it would replace what this command reads; choose another output"
            )
    if out.exists():
        if out.is_dir() and not folder:
            raise UserError(f"{out} is a folder: give the path of a file to write")
        if folder and not out.is_dir():
            raise UserError(f"{out} is a file, but this command writes a folder of results there: give a folder path")
    existing = out if folder and out.is_dir() else out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {out}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".synthkit-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write {out}: {existing} is not writable ({err.strerror or err})") from None


def check_distinct(paths: Sequence[str | Path], what: str) -> None:
    """The same file given twice (by another name or through a link) would count twice: refused."""
    seen: dict[Path, str] = {}
    for path in paths:
        key = _resolved(Path(path))
        if key in seen:
            raise UserError(f"{what} {path} is given twice (also as {seen[key]}): give each once")
        seen[key] = str(path)


def check_outside(out: str | Path, folder: str | Path) -> None:
    """An output may not lie inside a folder the command reads whole (an image-folder tree): it would read itself."""
    folder = Path(folder)
    if folder.is_dir() and _resolved(Path(out)).is_relative_to(_resolved(folder)):
        raise UserError(
            f"{out} is inside the source folder {folder}: the command would read its own output; write it elsewhere"
        )


def check_input_outside(given: str | Path, out: str | Path) -> None:
    """An input may not lie inside a folder the command writes whole (an export): replacing it would delete it."""
    out = Path(out)
    if out.is_dir() and _resolved(Path(given)).is_relative_to(_resolved(out)):
        raise UserError(
            f"{given} lies inside the output folder {out}: writing {out} would delete what this command reads; "
            "write it elsewhere"
        )


def check_fits(need: int, budget: int, what: str) -> None:
    """Refuse work whose images alone would not fit the memory budget, before any of it is done."""
    if need > budget:
        raise UserError(
            f"{what} takes {human(need)}, over the memory budget of {human(budget)} (half the free memory, "
            "or --memory-limit / SYNTHKIT_MEMORY_LIMIT where it applies): ask for a smaller size"
        )


def check_store_fits(images: int, size: int, out: Path, what: str) -> None:
    """Refuse a count whose store could not be written: `images` uint8 RGB images of at least `size` px against the
    free disk space of the output's folder, before anything of the count's size is built."""
    folder = next((p for p in Path(out).absolute().parents if p.is_dir()), Path("/"))
    need, free = image_bytes(images, size), shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"{what} would write {images:,} images ({human(need)} at {size} px or more), more than the {human(free)} "
            f"free in {folder}: ask for fewer"
        )


@dataclass
class Asked:
    """What a job is asked to make now, in the terms of a finished output's record, so that --resume keeps only an
    output made the same way: `options` under the names of the record's params (only these are compared: a value
    known only once the work starts, such as a model's own size, is left out), `inputs` each input's path as given
    and its fingerprint now (None for one without), in the order of the record's sources, and `record`, which reads
    a finished output's record as {"params": {...}, "sources": [{"path": ..., "fingerprint" or "sha256": ...}]}."""

    options: dict[str, Any]
    inputs: list[tuple[str, str | None]]
    record: Callable[[Path], dict[str, Any]]


def check_output(
    out: Path,
    leftovers: Sequence[Path],
    overwrite: bool,
    resume: bool,
    resumable: bool = True,
    inputs: Sequence[str | Path | None] = (),
    folder: bool = False,
    asked: Callable[[], Asked] | None = None,
) -> bool:
    """Whether `out` is already finished and `--resume` keeps it. First its destination (check_destination);
    then refuses to replace an output, or to start over from an interrupted run's leftovers (a .partial, a state
    file), unless --overwrite or --resume says so. A finished output is kept only if it was made as `asked()` says
    the job is asked now (check_made_as_asked; built only then, as fingerprinting an input may take a while)."""
    out = Path(out)
    check_destination(out, inputs, folder)
    if out.exists() and not (overwrite or resume):
        keep = " or --resume to continue it" if resumable else ""
        raise UserError(f"{out} already exists: pass --overwrite to replace it{keep}")
    if out.exists() and resume:
        if asked is not None:
            check_made_as_asked(out, asked())
        return True
    if not (overwrite or resume):
        for leftover in leftovers:
            if Path(leftover).exists():
                refuse_leftover(Path(leftover), out)
    return False


NOT_RECORDED = "(not recorded)"


def check_made_as_asked(out: Path, asked: Asked) -> None:
    """A finished output that --resume keeps must have been made with the options and from the inputs asked now:
    else one line naming what differs (the first three), and --overwrite redoes it."""
    record = asked.record(Path(out))
    made = record.get("params")
    made = made if isinstance(made, dict) else {}
    differ = [
        f"{key} {_shown(made.get(key, NOT_RECORDED))}, not {_shown(value)}"
        for key, value in jsonable(asked.options).items()
        if made.get(key, NOT_RECORDED) != value
    ]
    sources = [s if isinstance(s, dict) else {} for s in record.get("sources") or []]
    if len(sources) != len(asked.inputs):
        differ.append(f"{len(sources)} inputs, not {len(asked.inputs)}")
    for (path, now), source in zip(asked.inputs, sources) if len(sources) == len(asked.inputs) else ():
        was = source.get("fingerprint", source.get("sha256"))
        if was != now:  # the same file changed, or another file given
            made_from = source.get("path", path)
            differ.append(
                f"{path} fingerprint {_shown(was)}, not {_shown(now)}"
                if made_from == path
                else f"{made_from} (fingerprint {_shown(was)}), not {path} (fingerprint {_shown(now)})"
            )
    if differ:
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(f"{out} was made with {'; '.join(differ[:3])}{more}: pass --overwrite to redo it")


def _shown(value: Any) -> str:
    """A recorded or asked value as the user would type it: none for None, lists comma-separated, a sha256 cut to the
    16 hex digits a store's fingerprint has."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(_shown, value)) or "(none)"
    text = str(value)
    return text[:16] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def refuse_leftover(leftover: Path, out: Path) -> None:
    """An interrupted run's .partial or state exists and neither --resume nor --overwrite was given."""
    raise UserError(
        f"an interrupted run of {out} left {leftover}: pass --resume to continue it, "
        "or --overwrite to discard it and start again"
    )


def check_same_options(saved: Any, current: Any, state: Path) -> None:
    """A resumed state must come from the same options (and data): else continuing it would mix two jobs."""
    if saved != current:
        raise UserError(
            f"{state} was started with other options or data: rerun with the same ones, or --overwrite to start again"
        )


def parse_shard(shard: str) -> tuple[int, int]:
    """'i/n' as (i, n), 0 <= i < n."""
    try:
        i, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n (for example 0/4), got '{shard}'") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {shard}: need 0 <= i < n")
    return i, n


def shard_range(total: int, shard: str | None) -> tuple[int, int]:
    """The contiguous slice [start, stop) of `total` work items that shard 'i/n' does (everything without one)."""
    if not shard:
        return 0, total
    i, n = parse_shard(shard)
    return total * i // n, total * (i + 1) // n


def shard_order(shards: Sequence[str]) -> list[int]:
    """Indices that put the shards of one job in order; refuses a set that is not 0/n .. n-1/n, once each."""
    parsed = [parse_shard(s) for s in shards]
    order = sorted(range(len(shards)), key=lambda k: parsed[k][0])
    n = parsed[0][1]
    if [shards[k] for k in order] != [f"{i}/{n}" for i in range(n)]:
        raise UserError(
            f"the shards given are {', '.join(shards[k] for k in order)}: all of 0/{n} .. {n - 1}/{n} are needed, "
            "once each"
        )
    return order
