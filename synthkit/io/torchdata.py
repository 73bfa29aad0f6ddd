"""A store as a torch Dataset (`synthkit.open_store`): (image, label) pairs for a user's own training loop, as
torchvision's CIFAR10 gives them, with the store's classes and columns.

The HDF5 file is opened lazily in each process that reads it and never shared across a fork: a DataLoader's
workers each open their own (HDF5 handles inherited from a parent are not safe to use), and a pickled dataset
(spawn, forkserver) carries only its path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.paths import store_path
from .store import Store


class StoreDataset(Dataset):
    """The images of a store as uint8 tensors (3, H, W) and their labels as ints, each passed through `transform`
    and `target_transform` when given (torchvision.transforms.v2 takes such a tensor as it takes a PIL image).

    `classes`, `class_to_idx` and `targets` are torchvision's names; `column(name)` gives a per-image column,
    `column_names` their names and `meta` the store's provenance."""

    def __init__(
        self,
        path: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ):
        self.path = store_path(path)
        self.transform, self.target_transform = transform, target_transform
        with Store(self.path) as store:  # checked here, in the caller's process, then closed
            self.classes: list[str] = list(store.classes)
            self.targets: list[int] = store.labels.tolist()
            self.column_names: list[str] = store.column_names
            self.image_shape: tuple[int, int, int] = store.image_shape
            self.meta: dict[str, Any] = store.meta
        self.class_to_idx = {name: k for k, name in enumerate(self.classes)}
        self._store: Store | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = torch.from_numpy(self._open().images(slice(index, index + 1))[0]).permute(2, 0, 1)
        label = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def column(self, name: str) -> np.ndarray:
        """A per-image column, every row (strings as Python str)."""
        with Store(self.path) as store:
            return store.column(name)

    def _open(self) -> Store:
        """This process's own handle on the file: opened at its first read, and again in a forked worker, whose
        inherited handle is left alone."""
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = Store(self.path), os.getpid()
        return self._store

    def close(self) -> None:
        """Close this process's handle (a later read opens it again)."""
        if self._store is not None and self._pid == os.getpid():
            self._store.close()
        self._store = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None, "_pid": None}

    def __repr__(self) -> str:
        return f"StoreDataset({self.path}: {len(self)} images of {len(self.classes)} classes, {self.image_shape})"
