"""The HDF5 image store: uint8 images (N, H, W, 3), integer labels, class names, per-image columns
and provenance, written under a temporary name so that only finished stores carry the final name."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..core.errors import UserError
from ..core.jobs import check_output, check_same_options, shard_order
from ..core.locks import busy_message, holder
from ..core.outputs import locked_output, resumable_output
from ..core.paths import PARTIAL_SUFFIX, partial_path

FORMAT = "synthkit-store"
FORMAT_VERSION = 1
COLUMN_KINDS = {"int": np.int64, "float": np.float64, "str": h5py.string_dtype()}
_CHUNK_BYTES = 256 * 1024


def missing_store_message(path: Path) -> str:
    """Why `path` is not there: being written now, interrupted (a .partial is left), or never made."""
    pid = holder(path)
    if pid is not None:
        return f"store {path} does not exist yet: {busy_message(path, pid)}"
    if partial_path(path).exists():
        return (
            f"store {path} does not exist, but an interrupted run left {partial_path(path)}: rerun that command "
            "with --resume to continue it, or with --overwrite to discard it"
        )
    return f"store {path} does not exist"


def unfinished_message(path: Path) -> str | None:
    """For NAME.partial while another process writes NAME: say so (its bytes are not a store yet)."""
    if not path.name.endswith(PARTIAL_SUFFIX):
        return None
    final = path.with_name(path.name[: -len(PARTIAL_SUFFIX)])
    pid = holder(final)
    if pid is None or pid == os.getpid():
        return None
    return f"{path} is unfinished: {busy_message(final, pid)}"


def _problem(f: h5py.File) -> str | None:
    """What is wrong with an open store's layout, from its metadata alone (no image or label is read):
    shapes, dtypes, counts (labels match images, columns match rows, classes are names) and whether the
    file really holds the bytes its datasets declare (a crafted header may claim 10^8 images in 8 KB)."""
    for name in ("images", "labels"):
        if not isinstance(f.get(name), h5py.Dataset):
            return f"it has no '{name}' dataset"
    if not isinstance(f.get("columns"), h5py.Group):
        return "it has no 'columns' group"
    images, labels = f["images"], f["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or min(images.shape[1:3]) < 1:
        return f"its images are {images.dtype} {images.shape}, not uint8 (N, height, width, 3)"
    n = images.shape[0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"its labels are {labels.dtype} {labels.shape}, not integers (N,)"
    if labels.shape[0] != n:
        return f"it has {labels.shape[0]} labels for {n} images"
    classes = _json_attr(f, "classes")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        return "its class list is not a list of distinct names"
    if not isinstance(_json_attr(f, "meta", {}), dict):
        return "its provenance is not a record"
    backed = [images, labels]
    for name, ds in f["columns"].items():
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 1:
            return f"its column '{name}' is not a list of values"
        if ds.shape[0] != n:
            return f"its column '{name}' has {ds.shape[0]} values for {n} images"
        if h5py.check_string_dtype(ds.dtype):
            continue
        if not (np.issubdtype(ds.dtype, np.integer) or np.issubdtype(ds.dtype, np.floating)):
            return f"its column '{name}' holds {ds.dtype}, not numbers or text"
        backed.append(ds)
    file_size = os.path.getsize(f.filename)
    for ds in backed:
        declared = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        if stored < declared or stored > file_size:
            return (
                f"'{ds.name.lstrip('/')}' declares {'x'.join(map(str, ds.shape))} {ds.dtype} ({declared:,} bytes) "
                f"but the file holds {stored:,} bytes of it"
            )
    return None


def _chunk_rows(height: int, width: int) -> int:
    return max(1, min(1024, _CHUNK_BYTES // (height * width * 3)))


def _json_attr(f: h5py.File, name: str, default: Any = None) -> Any:
    return json.loads(f.attrs[name]) if name in f.attrs else default


class Store:
    """A finished store opened for reading; every read loads only the rows asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(missing_store_message(self.path))
        if self.path.is_dir():
            raise UserError(f"{self.path} is a folder, not a store: give a .h5 file written by synthkit")
        busy = unfinished_message(self.path)
        if busy:
            raise UserError(busy)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            raise UserError(f"{self.path} is not an HDF5 file: give a store written by synthkit") from None
        try:
            if self._file.attrs.get("format") != FORMAT:
                self._file.close()
                raise UserError(f"{self.path} is not a synthkit store (no synthkit format tag)")
            problem = _problem(self._file)
        except (KeyError, OSError, ValueError, TypeError, AttributeError, RuntimeError) as err:
            # h5py reports a damaged file as KeyError ("bad local heap signature"), OSError, ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            problem = f"it cannot be read ({type(err).__name__}: {first})"
        if problem:
            self._file.close()
            raise UserError(f"{self.path} is damaged or not a synthkit store: {problem}")
        self.classes: list[str] = _json_attr(self._file, "classes")
        self.meta: dict[str, Any] = _json_attr(self._file, "meta", {})
        self.fingerprint: str = str(self._file.attrs.get("fingerprint", ""))
        self.shard: str = str(self._file.attrs.get("shard", ""))
        self._labels: np.ndarray | None = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return int(self._file["labels"].shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._file["images"].shape[1:])

    @property
    def column_names(self) -> list[str]:
        return sorted(self._file["columns"].keys())

    @property
    def labels(self) -> np.ndarray:
        """The labels (read once); values outside the class list are refused."""
        if self._labels is None:
            labels = self._file["labels"][...].astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
                bad = int(labels.min() if labels.min() < 0 else labels.max())
                raise UserError(
                    f"{self.path} is damaged or not a synthkit store: label {bad} is not one of its "
                    f"{len(self.classes)} classes"
                )
            self._labels = labels
        return self._labels

    def require_images(self, why: str = "") -> Store:
        """This store, or one error line when it has no images (`why` says what they were needed for)."""
        if len(self) == 0:
            raise UserError(f"store {self.path} has no images{why}")
        return self

    def counts(self) -> np.ndarray:
        """Images per class, in class order."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def images(self, index: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """Images at `index` (any order, repeats allowed), or all of them when `index` is None."""
        return _read_rows(self._file["images"], index)

    def column(self, name: str, index: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """A per-image column (strings come back as Python str)."""
        if name not in self._file["columns"]:
            raise UserError(
                f"store {self.path} has no column '{name}' (it has: {', '.join(self.column_names) or 'none'})"
            )
        ds = self._file["columns"][name]
        values = _read_rows(ds, index)
        if h5py.check_string_dtype(ds.dtype):
            values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
        return values

    def column_kind(self, name: str) -> str:
        dtype = self._file["columns"][name].dtype
        if h5py.check_string_dtype(dtype):
            return "str"
        return "float" if np.issubdtype(dtype, np.floating) else "int"


def store_fingerprint(path: str | Path) -> str:
    """The content fingerprint of the store at `path` (read from its attributes, no image is read)."""
    with Store(path) as store:
        return store.fingerprint


def store_record(path: str | Path) -> dict[str, Any]:
    """A finished store's record as --resume compares it with a request (jobs.Asked): its params with the shard it
    holds (sample records it beside them), and the sources of the job it holds; a store merged from shards names
    the shards as its sources, so their own sources are the job's."""
    with Store(path) as store:
        meta, shard = store.meta, store.shard
    params = meta.get("params")
    sources = meta.get("sources") or []
    if sources and isinstance(sources[0], dict) and sources[0].get("shard") and "sources" in sources[0]:
        sources = sources[0]["sources"]
    return {"params": {"shard": shard, **params} if isinstance(params, dict) else {}, "sources": sources}


_BLOCK_BYTES = 64 << 20
# a block is read whole when it holds at least 1 wanted row in 64: HDF5 point reads cost ~80x a row of a block read
_DENSE = 64


def _read_rows(ds: h5py.Dataset, index: Sequence[int] | np.ndarray | slice | None) -> np.ndarray:
    """Rows of a dataset in the order asked; reads go block by block (at most 64 MB at a time), whole
    blocks where the wanted rows are dense and row by row where they are sparse."""
    if index is None:
        return ds[...]
    if isinstance(index, slice):
        return ds[index]
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return np.zeros((0,) + ds.shape[1:], dtype=ds.dtype)
    if index.min() < 0 or index.max() >= ds.shape[0]:
        raise IndexError(f"row index out of range for {ds.shape[0]} rows")
    unique, inverse = np.unique(index, return_inverse=True)
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    block = max(1, _BLOCK_BYTES // row_bytes)
    out = np.empty((len(unique),) + ds.shape[1:], dtype=ds.dtype)
    blocks = unique // block
    for b in np.unique(blocks):
        at = np.flatnonzero(blocks == b)
        rows = unique[at]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if len(rows) * _DENSE >= hi - lo:
            out[at] = ds[lo:hi][rows - lo]
        else:
            out[at] = ds[rows]
    return out[inverse]


class StoreWriter:
    """Writes a store batch by batch into NAME.partial and renames it to NAME once complete (the lock, the
    overwrite and resume policy and the rename are outputs.resumable_output's; this class knows the HDF5 layout).

    With `resume=True` an existing .partial written with the same parameters is continued from
    its last flushed batch, so the finished file has the same content as an uninterrupted run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        classes: Sequence[str],
        image_shape: tuple[int, int],
        meta: dict[str, Any],
        columns: dict[str, str] | None = None,
        total: int | None = None,
        shard: str = "",
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.total = total
        self.complete = False
        self._file: h5py.File | None = None
        columns = dict(columns or {})
        for name, kind in columns.items():
            if kind not in COLUMN_KINDS:
                raise ValueError(f"column {name}: kind must be one of {sorted(COLUMN_KINDS)}")
        self._output = resumable_output(
            self.path,
            overwrite,
            resume,
            same_job=lambda partial: self._check_same_job(partial, meta, classes),
            verify=self._check_before_rename,
        )
        step = self._output.__enter__()
        try:
            if step.complete:
                self.complete = True
                self.done = total if total is not None else 0
            elif step.resuming:
                self._reopen()
            else:
                self._create(classes, image_shape, meta, columns, shard)
        except BaseException:
            self._output.__exit__(*sys.exc_info())
            raise

    def _create(self, classes, image_shape, meta, columns, shard) -> None:
        height, width = image_shape
        f = h5py.File(self.partial, "w")
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["classes"] = json.dumps(list(classes))
        f.attrs["meta"] = json.dumps(meta)
        f.attrs["shard"] = shard
        f.attrs["done"] = 0
        rows = _chunk_rows(height, width)
        f.create_dataset(
            "images",
            shape=(0, height, width, 3),
            maxshape=(None, height, width, 3),
            dtype=np.uint8,
            chunks=(rows, height, width, 3),
        )
        f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        group = f.create_group("columns")
        for name, kind in columns.items():
            group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=COLUMN_KINDS[kind], chunks=(4096,))
        f.flush()
        self._file = f
        self.done = 0

    @staticmethod
    def _check_same_job(partial: Path, meta: dict[str, Any], classes: Sequence[str]) -> None:
        """A .partial is continued only when it can be appended to and was started with the same parameters and
        classes."""
        try:
            with h5py.File(partial, "a") as f:
                saved = (f.attrs.get("format"), _json_attr(f, "meta", {}).get("params"), _json_attr(f, "classes"))
        except OSError:
            raise UserError(f"{partial} is damaged and cannot be resumed: start again with --overwrite") from None
        check_same_options(saved, (FORMAT, meta.get("params"), list(classes)), partial)

    def _reopen(self) -> None:
        f = h5py.File(self.partial, "a")
        self.done = int(f.attrs["done"])
        for ds in self._datasets(f):
            ds.resize(self.done, axis=0)
        self._file = f

    @staticmethod
    def _datasets(f: h5py.File) -> list[h5py.Dataset]:
        return [f["images"], f["labels"], *f["columns"].values()]

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._file is not None:
            try:
                self._seal()
            except BaseException:
                self._output.__exit__(*sys.exc_info())
                raise
        if self._file is not None:
            self._file.close()
            self._file = None
        self._output.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self.complete = True

    def append(self, images: np.ndarray, labels: Iterable[int], **columns: Any) -> None:
        """Append a batch of uint8 images (B, H, W, 3), their labels and every column's values."""
        f = self._file
        assert f is not None, "writer is closed"
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.shape[1:] != f["images"].shape[1:]:
            raise ValueError(f"images must be uint8 {f['images'].shape[1:]}, got {images.dtype} {images.shape[1:]}")
        expected = set(f["columns"].keys())
        if set(columns) != expected:
            raise ValueError(f"columns must be exactly {sorted(expected)}, got {sorted(columns)}")
        n = len(images)
        if len(labels) != n:
            raise ValueError("one label per image")
        start = self.done
        for ds, values in ((f["images"], images), (f["labels"], labels)):
            ds.resize(start + n, axis=0)
            ds[start:] = values
        for name, values in columns.items():
            ds = f["columns"][name]
            values = list(values) if h5py.check_string_dtype(ds.dtype) else np.asarray(values)
            if len(values) != n:
                raise ValueError(f"column {name}: one value per image")
            ds.resize(start + n, axis=0)
            ds[start:] = values
        self.done = start + n
        f.attrs["done"] = self.done
        f.flush()

    def _seal(self) -> None:
        """Check the row count, stamp the content fingerprint and close the file (resumable_output renames it)."""
        f = self._file
        assert f is not None
        self._file = None
        try:
            if self.total is not None and self.done != self.total:
                raise RuntimeError(f"store {self.path}: wrote {self.done} of {self.total} images")
            f.attrs["fingerprint"] = _fingerprint(f)
        finally:
            f.close()

    def _check_before_rename(self, partial: Path) -> None:
        """Reopen the finished .partial as a reader would: only a store that opens, passes every check of
        Store and holds the rows written gets the final name (a damaged one stays a .partial)."""
        try:
            with Store(partial) as check:
                rows = len(check)
        except UserError as err:
            raise UserError(f"{err}; it keeps its .partial name") from None
        if rows != self.done:
            raise UserError(f"{partial} holds {rows} images after writing {self.done}: it keeps its .partial name")


class DerivedWriter(StoreWriter):
    """A writer of a store made from `source` (a subset, a filtered part, the same images with captions): its
    classes, image size and columns, plus `extra` columns (replacing the source's of those names)."""

    def __init__(
        self,
        source: Store,
        out: str | Path,
        meta: dict[str, Any],
        extra: dict[str, str],
        total: int,
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.source = source
        self.copied = [name for name in source.column_names if name not in extra]
        super().__init__(
            out,
            classes=source.classes,
            image_shape=source.image_shape[:2],
            meta=meta,
            columns={name: source.column_kind(name) for name in self.copied} | extra,
            total=total,
            overwrite=overwrite,
            resume=resume,
        )

    def append_rows(self, rows: np.ndarray | slice, images: np.ndarray | None = None, **extra: Any) -> None:
        """The source's rows (their images unless given, labels and columns) with the extra columns' values."""
        images = self.source.images(rows) if images is None else images
        columns = {name: self.source.column(name, rows) for name in self.copied}
        self.append(images, self.source.labels[rows], **columns, **extra)


def _fingerprint(f: h5py.File) -> str:
    """sha256 over images and labels: two stores with the same pixels and labels share it."""
    digest = hashlib.sha256()
    images = f["images"]
    step = images.chunks[0] * max(1, 4096 // images.chunks[0])
    for start in range(0, images.shape[0], step):
        digest.update(np.ascontiguousarray(images[start : start + step]).tobytes())
    digest.update(f["labels"][...].astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def balanced_subset(
    labels: np.ndarray, per_class: int, seed: int, classes: int | Sequence[str] | None = None
) -> np.ndarray:
    """Sorted indices of a seeded, class-balanced subset: the first `per_class` images of a seeded permutation of
    every class. The permutations do not depend on `per_class`, so with one seed a smaller subset is inside a
    larger one (the sample-complexity sweep's nesting)."""
    labels = np.asarray(labels)
    names = list(classes) if classes is not None and not isinstance(classes, int) else None
    n_classes = len(names) if names is not None else classes or int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            name = f"class {names[c]}" if names is not None else f"class {c}"
            raise UserError(f"{name} has only {len(members)} images, fewer than --per-class {per_class}")
        picked.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _column_difference(store: Store, first: Store) -> str:
    """Which columns one store has that the first lacks, and the other way round (or that their order differs)."""
    extra = [c for c in store.column_names if c not in first.column_names]
    missing = [c for c in first.column_names if c not in store.column_names]
    parts = [f"it has column(s) {', '.join(extra)} that {first.path} lacks"] if extra else []
    parts += [f"it lacks column(s) {', '.join(missing)} of {first.path}"] if missing else []
    return "; ".join(parts) or f"its columns come in another order than those of {first.path}"


@locked_output("out")
def merge_stores(
    inputs: Sequence[str | Path], out: str | Path, meta: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Concatenate stores of the same classes into one; shards are put back in shard order.

    Without `meta`, the merged store keeps the first store's kind and, for shards, the job's parameters."""
    from ..core.meta import provenance

    check_output(Path(out), [partial_path(Path(out))], overwrite, resume=False, resumable=False, inputs=inputs)
    stores = [Store(p) for p in inputs]
    try:
        if not stores:
            raise UserError("merge needs at least one store")
        first = stores[0]
        for s in stores[1:]:
            if s.classes != first.classes:
                raise UserError(
                    f"cannot merge {s.path}: its classes {', '.join(s.classes)} are not those of {first.path}: "
                    f"{', '.join(first.classes)}"
                )
            if s.image_shape != first.image_shape:
                raise UserError(f"cannot merge {s.path}: images are {s.image_shape}, not {first.image_shape}")
            if s.column_names != first.column_names:
                raise UserError(f"cannot merge {s.path}: {_column_difference(s, first)}")
        if all(s.shard for s in stores):
            stores = [stores[k] for k in shard_order([s.shard for s in stores])]
        kinds = {name: first.column_kind(name) for name in first.column_names}
        if meta is None:
            params = {k: v for k, v in first.meta.get("params", {}).items() if k != "shard"} if first.shard else {}
            meta = provenance(first.meta.get("kind", "merged"), params)
        meta = dict(
            meta,
            sources=[
                {
                    "path": str(s.path),
                    "fingerprint": s.fingerprint,
                    "shard": s.shard,
                    "sources": s.meta.get("sources", []),
                }
                for s in stores
            ],
        )
        total = sum(len(s) for s in stores)
        with StoreWriter(
            out,
            classes=first.classes,
            image_shape=first.image_shape[:2],
            meta=meta,
            columns=kinds,
            total=total,
            overwrite=overwrite,
        ) as writer:
            for s in stores:
                for start in range(0, len(s), 4096):
                    rows = slice(start, min(start + 4096, len(s)))
                    writer.append(s.images(rows), s.labels[rows], **{name: s.column(name, rows) for name in kinds})
        return Path(out)
    finally:
        for s in stores:
            s.close()


@locked_output("out")
def subset_store(
    src: str | Path, out: str | Path, per_class: int | None = None, seed: int = 0, overwrite: bool = False
) -> Path:
    """A copy of a store, or a seeded class-balanced subset of `per_class` images of every class: how a user's own
    store enters the study (make reproduce REAL=...). Kind and columns are kept, the source is recorded, and each
    image's row in the source goes in the column `parent_row` (replacing one the source had), so that what was made
    from the source (its inversion) can be matched to the subset's images."""
    from ..core.meta import provenance

    check_output(Path(out), [partial_path(Path(out))], overwrite, resume=False, resumable=False, inputs=[src])
    with Store(src) as s:
        s.require_images()
        rows = np.arange(len(s)) if per_class is None else balanced_subset(s.labels, per_class, seed, s.classes)
        meta = provenance(
            s.meta.get("kind", "unknown"),
            {"per_class": per_class, "seed": seed},
            [{"path": str(src), "fingerprint": s.fingerprint, "count": len(s), "sources": s.meta.get("sources", [])}],
        )
        with DerivedWriter(s, out, meta, {"parent_row": "int"}, len(rows), overwrite=overwrite) as writer:
            for start in range(0, len(rows), 4096):
                part = rows[start : start + 4096]
                writer.append_rows(part, parent_row=part)
    return Path(out)
