"""CIFAR-100 and STL-10 as torchvision downloads them, into stores: `synthkit data cifar100|stl10`.

CIFAR-100's python pickles go through the same restricted unpickler as CIFAR-10's batches (numpy arrays and plain
data, nothing executable); STL-10's binary files are plain uint8 arrays. Either comes from --source (the folder or
archive torchvision downloads) or from torchvision's own downloader (--download, needs internet).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import DATA, SEED, SPLITS, check_choice
from ..core.errors import UserError
from ..core.memory import ram_budget
from ..core.outputs import locked_output
from .datasets import Members, Source, _BatchUnpickler, _describe, fetch_torchvision_archive, write_source

DATASETS = {  # name: (torchvision class, folder inside the download, archive torchvision downloads)
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"),
    "stl10": ("STL10", "stl10_binary", "stl10_binary.tar.gz"),
}


def _files(source: Path, folder: str) -> dict[str, Callable[[], bytes]]:
    """Base file name -> bytes, from the download root, the folder itself, or the archive."""
    if not source.exists():
        raise UserError(f"source {source} does not exist")
    if source.is_dir():
        root = source / folder if (source / folder).is_dir() else source
        return {p.name: p.read_bytes for p in root.iterdir() if p.is_file()}
    members = Members(
        source
    )  # an index only: a file's bytes are read when asked for (STL-10's unlabeled_X.bin never is)
    return {name.rsplit("/", 1)[-1]: (lambda name=name: members.read_one(name)) for name in members.names}


def _unpickle(files: dict[str, Callable[[], bytes]], name: str, dataset: str) -> dict:
    if name not in files:
        raise UserError(f"the {dataset} files lack '{name}'")
    try:
        data = _BatchUnpickler(io.BytesIO(files[name]()), encoding="bytes").load()
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise UserError(f"{name} is not a {dataset} pickle: {err}") from None


def read_cifar100(source: Path, split: str) -> tuple[Source, list[str]]:
    """CIFAR-100's split (fine labels, 100 classes) in file order, and the class names."""
    files = _files(source, DATASETS["cifar100"][1])
    meta, batch = _unpickle(files, "meta", "CIFAR-100"), _unpickle(files, split, "CIFAR-100")
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as err:
        raise UserError(f"{split} or meta is not a CIFAR-100 pickle: {type(err).__name__}: {err}") from None
    if not len(labels) or len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(names):
        raise UserError(f"{split}: {len(images)} images, {len(labels)} labels for {len(names)} classes: not CIFAR-100")
    images = np.ascontiguousarray(images)
    return Source(labels, [f"{split}:{i}" for i in range(len(labels))], lambda rows: images[rows], (32, 32)), names


def read_stl10(source: Path, split: str) -> tuple[Source, list[str]]:
    """STL-10's labelled split (96 px, 10 classes) in file order, and the class names."""
    files = _files(source, DATASETS["stl10"][1])
    for name in (f"{split}_X.bin", f"{split}_y.bin", "class_names.txt"):
        if name not in files:
            raise UserError(f"the STL-10 files lack '{name}'")
    names = files["class_names.txt"]().decode().split()
    raw = np.frombuffer(files[f"{split}_X.bin"](), dtype=np.uint8)
    labels = np.frombuffer(files[f"{split}_y.bin"](), dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
    if not len(labels) or raw.size != len(labels) * 3 * 96 * 96 or labels.min() < 0 or labels.max() >= len(names):
        raise UserError(f"{split}_X.bin holds {raw.size} bytes for {len(labels)} labels: not STL-10's 96x96 images")
    images = np.ascontiguousarray(
        raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    )  # column-major, as torchvision reads it
    return Source(labels, [f"{split}:{i}" for i in range(len(labels))], lambda rows: images[rows], (96, 96)), names


READERS = {"cifar100": read_cifar100, "stl10": read_stl10}


def import_dataset(
    dataset: str,
    out: str | Path,
    *,
    download: bool = False,
    download_root: str | Path = DATA.download_root,
    **options: Any,
) -> Path:
    """`synthkit data cifar10|cifar100|stl10`: one of the data sets torchvision downloads, from `source` or fetched
    into `download_root`, written to the store `out`; `options` are the importers' own (source, split, per_class,
    seed, memory_limit, overwrite, resume)."""
    if dataset == "cifar10":
        from .datasets import import_cifar10

        return import_cifar10(out, download=download, download_root=download_root, **options)
    return import_torchvision_set(dataset, out, download_root=download_root if download else None, **options)


@locked_output("out")
def import_torchvision_set(
    dataset: str,
    out: str | Path,
    *,
    source: str | Path | None = None,
    split: str = DATA.split,
    per_class: int | None = None,
    seed: int = SEED,
    download_root: str | Path | None = None,
    memory_limit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write CIFAR-100's or STL-10's `split` (or a seeded class-balanced subset) to the store `out`; with
    `download_root` and no `source`, torchvision downloads it there first."""
    if dataset not in READERS:
        raise UserError(f"unknown dataset '{dataset}': use {', '.join(READERS)}")
    check_choice(split, SPLITS, "--split")
    if (source is None) == (download_root is None):
        raise UserError(f"give either --source (the {dataset} folder or {DATASETS[dataset][2]}) or --download")
    params = {
        "dataset": dataset,
        "source": str(source) if source else "torchvision-download",
        "split": split,
        "per_class": per_class,
        "seed": seed,
    }

    def open_split() -> tuple[Source, list[str], dict]:
        path = Path(source) if source is not None else fetch_torchvision_archive(DATASETS[dataset][0], download_root)
        return (*READERS[dataset](path, split), _describe(path))

    return write_source(
        out,
        open_split,
        params,
        split,
        per_class,
        seed,
        overwrite=overwrite,
        resume=resume,
        inputs=[source],
        budget=ram_budget(memory_limit),
        source=source,
    )
