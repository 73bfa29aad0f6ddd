"""The checks every job that writes an output makes, in one place: an existing output, an interrupted
run's leftovers, a resumed state made with other options, and shards (which slice is mine, and their order)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .locks import refuse_leftover


def check_output(out: Path, leftovers: Sequence[Path], overwrite: bool, resume: bool, resumable: bool = True) -> bool:
    """Whether `out` is already finished and `--resume` keeps it. Refuses to replace an output, or to start
    over from an interrupted run's leftovers (a .partial, a state file), unless --overwrite or --resume says so."""
    out = Path(out)
    if out.exists() and not (overwrite or resume):
        keep = " or --resume to continue it" if resumable else ""
        raise UserError(f"{out} already exists: pass --overwrite to replace it{keep}")
    if out.exists() and resume:
        return True
    if not (overwrite or resume):
        for leftover in leftovers:
            if Path(leftover).exists():
                refuse_leftover(Path(leftover), out)
    return False


def check_same_options(saved: Any, current: Any, state: Path) -> None:
    """A resumed state must come from the same options (and data): else continuing it would mix two jobs."""
    if saved != current:
        raise UserError(f"{state} was started with other options or data: rerun with the same ones, or --overwrite to start again")


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
        raise UserError(f"the shards given are {', '.join(shards[k] for k in order)}: all of 0/{n} .. {n - 1}/{n} are needed, once each")
    return order
