"""An output and the files beside it, in one place: where it lives while being written (`.partial`), its writer's
lock (`.lock`), the resumable state of a long job, its log and preview, its shards; and the one way a file or folder
is written whole: into its `.partial`, renamed to its name only once complete, so that an interrupted job never
leaves a file that looks finished."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def _beside(out: str | Path, ending: str, keep_suffix: bool = True) -> Path:
    """A side file named from the whole output name (only a .safetensors ending dropped), so that m.0 and m.1 do not
    share one."""
    out = Path(out)
    name = out.name if keep_suffix else out.name.removesuffix(".safetensors")
    return out.with_name(name + ending)


def partial_path(out: str | Path) -> Path:
    """Where `out` lives while it is being written: data/real.h5 -> data/real.h5.partial."""
    return _beside(out, PARTIAL_SUFFIX)


def lock_path(out: str | Path) -> Path:
    """The writer lock beside `out`: data/real.h5 -> data/real.h5.lock."""
    return _beside(out, ".lock")


def train_state_path(out: str | Path) -> Path:
    """A classifier's resumable training state: models/m.safetensors -> models/m.train-state.safetensors."""
    return _beside(out, ".train-state.safetensors", keep_suffix=False)


def train_log_path(out: str | Path) -> Path:
    """A classifier's JSON-lines log: models/m.safetensors -> models/m.log.jsonl."""
    return _beside(out, ".log.jsonl", keep_suffix=False)


def invert_state_dir(out: str | Path) -> Path:
    """An inversion's resumable state: models/inv/cat.safetensors -> models/inv/cat.invert-state/."""
    return _beside(out, ".invert-state", keep_suffix=False)


def preview_path(embeddings: str | Path) -> Path:
    """Where invert draws its preview: models/inv/airplane.safetensors -> models/inv/airplane.preview.png."""
    return _beside(embeddings, ".preview.png", keep_suffix=False)


def shard_path(out: str | Path, rank: int, world: int) -> Path:
    """Where shard rank/world of `out` is written: data/inv.h5 -> data/inv.shard-1-of-4.h5 (the Makefile's naming
    too)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")


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
