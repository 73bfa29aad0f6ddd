"""Rich progress bars with rate and ETA, shared by every long job."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def progress(*fields: str) -> Progress:
    """A progress display: description, bar, count, the named task fields (e.g. loss), elapsed and ETA. It is
    transient, cleared when the work ends, so that a command's output is its result lines, or one error line. Off
    where stderr is no terminal (a log, a pipe): there a transient bar leaves only a blank line."""
    extra = [TextColumn(f"{{task.fields[{name}]}}") for name in fields]
    disable = os.environ.get("SYNTHKIT_QUIET") == "1" or not console.is_terminal
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=True,
    )
