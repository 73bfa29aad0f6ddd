"""Helpers for the benchmarks: the shared CIFAR-10 archive imported once into bench/.cache/."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
SHARED = Path(os.environ.get("SYNTHKIT_SHARED") or ROOT.parent / "shared")  # as in tests/conftest.py
ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"


def cifar_store(split: str, per_class: int | None = None, seed: int = 0) -> Path:
    """A store of the shared CIFAR-10 archive (or a download when it is absent), cached."""
    from synthkit.io.datasets import import_cifar10

    name = f"{split}-{per_class or 'all'}-{seed}.h5"
    source = ARCHIVE if ARCHIVE.exists() else None
    return import_cifar10(
        CACHE / name,
        source=source,
        download=source is None,
        download_root=CACHE,
        split=split,
        per_class=per_class,
        seed=seed,
        resume=True,
    )


def machine() -> str:
    """A one-line description of the machine the numbers come from."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    processor = platform.processor() or platform.machine()
    return f"CPU {processor}, {torch.get_num_threads()} threads, torch {torch.__version__}"
