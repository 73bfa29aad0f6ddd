"""Import real images into a store: CIFAR-10 (an image-folder tree or archive, the python batches, or a download),
or any image-folder tree or archive of <class>/<image> (`import_folder`). CIFAR-100 and STL-10: torchvision_sets.py."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import CIFAR10_CLASSES, DATA, SEED, SPLITS, check_choice
from ..core.errors import UserError
from ..core.jobs import Asked, check_fits, check_output, check_outside
from ..core.memory import human, image_bytes, ram_budget
from ..core.meta import Kind, Provenance, provenance
from ..core.outputs import locked_output
from ..core.paths import partial_path
from ..core.progress import console, progress
from .export import (
    CLASS_NAME,
    FILE_NAME,
    LABEL,
    METADATA_FILE,
    PROVENANCE_FILE,
    exported_from,
    read_export_record,
    record_classes,
    record_columns,
)
from .store import StoreWriter, balanced_subset, store_record

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass
class Source:
    """A data set split in source order: labels, names, and a way to decode any subset; its per-image columns as
    (kind, values) (by default each image's index and name in the source, source_index and source_name), and the
    record of the store it was exported from (synthkit export's provenance), whose kind and fields it keeps."""

    labels: np.ndarray
    names: list[str]
    decode: Callable[[np.ndarray], np.ndarray]
    image_shape: tuple[int, int]
    columns: dict[str, tuple[str, np.ndarray]] | None = None
    record: dict | None = None


def source_columns(names: Sequence[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Every import's columns: each image's index and name in the source."""
    return {"source_index": ("int", np.arange(len(names))), "source_name": ("str", np.array(names, dtype=object))}


@locked_output("out")  # the whole job: a second import of the same --out is refused before it reads anything
def import_cifar10(
    out: str | Path,
    *,
    source: str | Path | None = None,
    split: str = DATA.split,
    per_class: int | None = None,
    seed: int = SEED,
    download: bool = False,
    download_root: str | Path = DATA.download_root,
    batch_size: int = DATA.batch_size,
    memory_limit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write CIFAR-10's `split` (or a seeded class-balanced subset of it) to the store `out`, reading the source a
    file at a time within the memory budget (`memory_limit`, else half the available RAM)."""
    check_choice(split, SPLITS, "--split")
    if source is None and not download:
        raise UserError("give --source (an image-folder tree, an archive or cifar-10-batches-py) or --download")
    if source is not None and download:
        raise UserError("give either --source or --download, not both")
    params = {
        "source": str(source) if source else "torchvision-download",
        "split": split,
        "per_class": per_class,
        "seed": seed,
    }

    budget = ram_budget(memory_limit)

    def open_split() -> tuple[Source, list[str], dict]:
        src = download_cifar10(download_root, split) if download else open_source(Path(source), split, budget)
        return src, list(CIFAR10_CLASSES), _describe(Path(source)) if source else {"path": str(download_root)}

    return write_source(
        out,
        open_split,
        params,
        split,
        per_class,
        seed,
        batch_size,
        overwrite,
        resume,
        inputs=[source],
        budget=budget,
        source=source,
    )


def write_source(
    out: str | Path,
    open_split: Callable[[], tuple[Source, list[str], dict]],
    params: dict,
    split: str,
    per_class: int | None,
    seed: int,
    batch_size: int = DATA.batch_size,
    overwrite: bool = False,
    resume: bool = False,
    inputs: Sequence[str | Path | None] = (),
    budget: int | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write a dataset split (or a seeded class-balanced subset) to the store `out`, opening the source only when
    there is work to do (`source`: the file or folder read, None for a download; see finished_import); each row keeps
    its index and name in the source, or the source's own columns (and an exported store's record its kind and
    fields). Rows are decoded a window at a time, as many as `budget` bytes hold (one pass over an archive per
    window)."""
    out = Path(out)
    if finished_import(out, params, source, overwrite, resume, inputs):
        return out
    src, classes, described = open_split()
    index = np.arange(len(src.labels)) if per_class is None else balanced_subset(src.labels, per_class, seed, classes)
    record = src.record or {}
    kept = {k: v for k, v in record.items() if k not in Provenance.__annotations__ and k != "shard"}
    meta = kept | provenance(record.get("kind", Kind.REAL), params, [described])
    columns = src.columns if src.columns is not None else source_columns(src.names)
    window = max(1, (budget or ram_budget()) // (3 * src.image_shape[0] * src.image_shape[1]))
    with (
        StoreWriter(
            out,
            classes=classes,
            image_shape=src.image_shape,
            meta=meta,
            columns={name: kind for name, (kind, _) in columns.items()},
            total=len(index),
            overwrite=overwrite,
            resume=resume,
        ) as writer,
        progress() as bar,
    ):
        task = bar.add_task(f"import {split}", total=len(index), completed=writer.done)
        for first in range(writer.done, len(index), window):
            rows_of_window = index[first : first + window]
            pixels = src.decode(rows_of_window)
            for start in range(0, len(rows_of_window), batch_size):
                rows = rows_of_window[start : start + batch_size]
                writer.append(
                    pixels[start : start + batch_size],
                    src.labels[rows],
                    **{name: values[rows] for name, (_, values) in columns.items()},
                )
                bar.advance(task, len(rows))
    return out


@locked_output("out")
def import_folder(
    out: str | Path,
    *,
    source: str | Path,
    size: int | None = None,
    split: str | None = None,
    class_name: str | None = None,
    per_class: int | None = None,
    seed: int = SEED,
    batch_size: int = DATA.folder_batch_size,
    memory_limit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write the images of an image-folder tree or archive laid out as [<split>/]<class>/<image> to the store `out`.

    Classes are the folder names (sorted naturally), or `class_name` for every image of a flat folder. With a
    metadata.jsonl (Hugging Face's imagefolder layout, which `synthkit export` writes) the images are those it lists,
    in its order, its other keys become columns, and its labels (or class names) the classes: a synthkit export
    comes back as the store it was made from (pixels, labels, classes, columns and kind). With `size` each image is
    resized so that its shorter side is `size` (PIL bicubic), then centre-cropped to size x size; without it all
    images must share one size. Each image's file name is kept in the column source_name (not for a synthkit
    export, whose columns are the store's). The source is read a file at a time within the memory budget
    (`memory_limit`, else half the available RAM)."""
    out = Path(out)
    if class_name is not None and not class_name.strip():
        raise UserError('--class-name is empty: give the class\'s name, e.g. "urban scene"')
    budget = resize_budget(size, memory_limit)
    params = {
        "source": str(source),
        "size": size,
        "split": split,
        "class_name": class_name,
        "per_class": per_class,
        "seed": seed,
    }
    if finished_import(out, params, source, overwrite, resume, [source]):
        return out
    source = Path(source)
    if not source.exists():
        raise UserError(f"source {source} does not exist")
    check_outside(out, source)
    members = Members(source, budget)
    listed = _metadata_entries(members, source, split, class_name)
    if listed is None:
        names, labels, classes = _folder_entries(members, source, split, class_name)
        columns, export = None, None
    else:
        names, labels, classes, columns, export = listed
    shape, hint = import_shape(members, names[0], size, budget)
    source_of = Source(
        labels,
        names,
        lambda rows: decode_rows(members, [names[i] for i in rows], shape, size, hint),
        shape,
        columns,
        export["store"] if export else None,
    )
    return write_source(
        out,
        lambda: (source_of, classes, _describe(source) | exported_from(export)),
        params,
        split or "all",
        per_class,
        seed,
        batch_size,
        overwrite=overwrite,
        resume=resume,
        inputs=[source],
        budget=budget,
        source=source,
    )


def finished_import(
    out: Path,
    params: dict,
    source: str | Path | None,
    overwrite: bool,
    resume: bool,
    inputs: Sequence[str | Path | None],
) -> bool:
    """jobs.check_output for an import: whether `out` is finished and kept by --resume, which keeps it only if it
    was imported with `params` from the same `source` (a source file's sha256, as its record holds it; a folder, a
    download or shards have none)."""

    def asked() -> Asked:
        sha = _describe(Path(source)).get("sha256") if source is not None and Path(source).exists() else None
        return Asked(params, [(str(source) if source is not None else "source", sha)], store_record)

    return check_output(out, [partial_path(out)], overwrite, resume, inputs=inputs, asked=asked)


def resize_budget(size: int | None, memory_limit: str | None) -> int:
    """The memory budget of an import that may resize (`memory_limit`, else half the available RAM), once --size is
    checked: at least 8, and one image of that size within the budget."""
    if size is not None and size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    budget = ram_budget(memory_limit)
    if size is not None:
        check_fits(image_bytes(1, size), budget, f"one image at --size {size}")
    return budget


def _parts(name: str) -> list[str]:
    """A member's path as its folders and file name (tar's ./class/img.jpg and Windows' separators alike)."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _folder_entries(
    members: Members, source: Path, split: str | None, class_name: str | None
) -> tuple[list[str], np.ndarray, list[str]]:
    """The images of [<split>/]<class>/<image> ordered by class (natural order) then name, their labels and the
    classes; other files in the class folders are named in a note, a class folder without images is an error."""
    entries, folders, skipped = [], {}, []
    for name in members.names:
        parts = _parts(name)
        if not parts or any(p.startswith(".") for p in parts):
            continue
        if split is not None and (len(parts) < 3 or parts[-3] != split):
            continue
        if class_name is None and len(parts) >= 2:
            folders.setdefault(parts[-2], []).append(name)
        if not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            skipped.append(name)
            continue
        if class_name is None and len(parts) < 2:
            raise UserError(
                f"{source}: {name} is not inside a class folder: lay images out as <class>/<image>, or give "
                "--class-name"
            )
        entries.append((class_name if class_name is not None else parts[-2], _natural_key(name), name))
    if not entries:
        where = f"<{split}>/<class>/" if split else "<class>/"
        raise UserError(f"{source}: no images in {where} folders")
    empty = sorted(c for c in folders if c not in {e[0] for e in entries})
    if empty:
        raise UserError(
            f"{source}: class folder(s) {', '.join(empty)} hold no image (only {', '.join(folders[empty[0]][:3])}): "
            "add images or remove the folder"
        )
    note_skipped(skipped)
    classes = sorted({e[0] for e in entries}, key=_natural_key)
    entries.sort(key=lambda e: (classes.index(e[0]), e[1]))
    return [e[2] for e in entries], np.array([classes.index(e[0]) for e in entries], dtype=np.int64), classes


def _metadata_entries(
    members: Members, source: Path, split: str | None, class_name: str | None
) -> tuple[list[str], np.ndarray, list[str], dict, dict | None] | None:
    """With a metadata.jsonl (of `split`, when given): the images it lists, in its order, their labels, the classes,
    its other keys as columns and the export's provenance.json (or None); None where the source has none.

    The classes are `class_name`; else the export's labels and classes, or integer labels (named by class_name
    where every label has one name); else each image's class name (class_name, or a label that is text); else its
    folder. Every image under the metadata's folder must be listed, and every file listed must be there."""
    paths = {"/".join(_parts(name)): name for name in members.names}
    metadata = _metadata_file(paths, source, split)
    if metadata is None:
        return None
    base, where = metadata[: -len(METADATA_FILE)], f"{source}: {metadata}"
    records = _json_lines(members.read_one(paths[metadata]), where)
    beside = paths.get(base + PROVENANCE_FILE)
    export = read_export_record(Path(beside), members.read_one(beside)) if beside else None
    names, files = _listed_images(records, paths, base, where, source)
    _check_all_listed(paths, base, names, source, metadata)
    if not records:
        raise UserError(f"{where} lists no image")
    if class_name is None and (export is not None or all(_is_label(r.get(LABEL)) for r in records)):
        labels, classes = _indexed_labels(records, export, where)
    else:
        labels, classes = _named_labels(records, files, class_name, where, source)
    columns = record_columns(records, export and export["columns"], where)
    return names, labels, classes, columns if export else source_columns(names) | columns, export


def _metadata_file(paths: dict[str, str], source: Path, split: str | None) -> str | None:
    """The path of the source's one metadata.jsonl (in a folder named `split`, when given), or None where it has
    none; several are refused, since which one is meant is not known."""
    found = sorted(
        p for p in paths if p.split("/")[-1] == METADATA_FILE and (split is None or p.split("/")[-2:-1] == [split])
    )
    if not found:
        return None
    if len(found) > 1:
        raise UserError(
            f"{source}: {len(found)} {METADATA_FILE} files ({', '.join(found[:3])}): give --split to take one"
        )
    return found[0]


def _listed_images(
    records: list[dict], paths: dict[str, str], base: str, where: str, source: Path
) -> tuple[list[str], list[list[str]]]:
    """The member names of the images the metadata lists, in its order, and each one's path parts below `base`;
    a line without a file name, one pointing outside the folder or at a file not there, or a repeat, is refused."""
    names, files = [], []
    for line, record in enumerate(records, 1):
        file = record.get(FILE_NAME)
        if not isinstance(file, str) or not _parts(file):
            raise UserError(f"{where}: line {line} has no {FILE_NAME}")
        if file.startswith(("/", "\\")) or ".." in _parts(file):
            raise UserError(f"{where}: line {line}'s {FILE_NAME} '{file}' points outside its folder")
        key = base + "/".join(_parts(file))
        if key not in paths:
            raise UserError(f"{where}: line {line} names {file}, which {source} does not hold")
        names.append(paths[key])
        files.append(_parts(file))
    if len(set(names)) < len(names):
        raise UserError(f"{where}: an image is listed twice")
    return names, files


def _check_all_listed(paths: dict[str, str], base: str, names: list[str], source: Path, metadata: str) -> None:
    """Refuse an image under the metadata's folder that it does not list (hidden files aside): importing fewer
    images than the folder holds, without a word, would import a different data set."""
    listed = set(names)
    unlisted = [
        name
        for p, name in paths.items()
        if p.startswith(base)
        and p.lower().endswith(_IMAGE_SUFFIXES)
        and name not in listed
        and not any(part.startswith(".") for part in p.split("/"))
    ]
    if unlisted:
        raise UserError(f"{source}: {unlisted[0]} is not listed in {metadata}: list every image there, or remove it")


def _indexed_labels(records: list[dict], export: dict | None, where: str) -> tuple[np.ndarray, list[str]]:
    """The labels of records that give each a class index (every one must), and the classes: the export's, else
    named by the records' class names (see record_classes)."""
    bad = next((line for line, r in enumerate(records, 1) if not _is_label(r.get(LABEL))), None)
    if bad is not None:
        raise UserError(f"{where}: line {bad}'s {LABEL} is not a class index (an integer from 0)")
    labels = np.array([r[LABEL] for r in records], dtype=np.int64)
    return labels, record_classes(labels, [r.get(CLASS_NAME) for r in records], export and export["classes"], where)


def _named_labels(
    records: list[dict], files: list[list[str]], class_name: str | None, where: str, source: Path
) -> tuple[np.ndarray, list[str]]:
    """The labels and classes (sorted naturally) of records named by `class_name`, else by each record's class name
    or text label, else by each image's folder (an image outside a class folder is refused)."""
    named = [r.get(CLASS_NAME, r.get(LABEL)) for r in records]
    if class_name is not None:
        named = [class_name] * len(records)
    elif not all(isinstance(n, str) and n for n in named):
        flat = next((file for file in files if len(file) < 2), None)
        if flat is not None:
            raise UserError(
                f"{source}: {'/'.join(flat)} is not inside a class folder and {where} gives it no class: lay "
                "images out as <class>/<image>, give each a label, or give --class-name"
            )
        named = [file[-2] for file in files]
    classes = sorted(set(named), key=_natural_key)
    return np.array([classes.index(n) for n in named], dtype=np.int64), classes


def _is_label(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_lines(data: bytes, where: str) -> list[dict]:
    """The objects of a JSON-lines file, one a line (blank lines skipped)."""
    records = []
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text") from None
    for line, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as err:
            raise UserError(f"{where}: line {line} is not JSON ({err})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: line {line} is not a JSON object")
        records.append(record)
    return records


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (PIL bicubic) so that the shorter side is `size`, then cut the centre size x size square."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def _describe(path: Path) -> dict:
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):  # small blocks: an import stays within its memory budget
                digest.update(block)
        return {"path": str(path), "sha256": digest.hexdigest()}
    return {"path": str(path)}


def open_source(path: Path, split: str, budget: int | None = None) -> Source:
    """Recognise the layout at `path` and return the split's images in a fixed, documented order."""
    if not path.exists():
        raise UserError(f"source {path} does not exist")
    if path.is_dir():
        batches = _find_batch_dir(path)
        if batches is not None:
            return _batches_source({name: (batches / name).read_bytes for name in _BATCH_FILES[split]}, split)
    members = Members(path, budget)
    batch_names = {name.rsplit("/", 1)[-1]: name for name in members.names}
    if "data_batch_1" in batch_names or "test_batch" in batch_names:
        return _batches_source(
            {
                name: (lambda full=batch_names[name]: members.read_one(full))
                for name in _BATCH_FILES[split]
                if name in batch_names
            },
            split,
        )
    return _folder_source(members, split, path)


def _find_batch_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").exists() or (candidate / "test_batch").exists():
            return candidate
    return None


class Members:
    """The files of an image-folder tree or of a .tar, .tar.gz, .tgz or .zip archive: their names up front (an index
    made without holding any file's bytes), and their bytes one file at a time when asked, so that an archive
    larger than memory can be imported. Every archive opened is closed again."""

    def __init__(self, path: Path, budget: int | None = None):
        self.path, self.budget = Path(path), budget
        name = self.path.name.lower()
        self.sizes: dict[str, int] = {}
        try:
            if self.path.is_dir():
                self.kind = "folder"
                self.sizes = {
                    str(p.relative_to(self.path)): p.stat().st_size for p in self.path.rglob("*") if p.is_file()
                }
            elif name.endswith(".zip"):
                self.kind = "zip"
                with zipfile.ZipFile(self.path) as archive:
                    for info in archive.infolist():
                        _check_member_name(self.path, info.filename)
                        if not info.is_dir():
                            self.sizes[info.filename] = info.file_size
            elif name.endswith((".tar", ".tar.gz", ".tgz")):
                self.kind = "tar"
                with tarfile.open(self.path, "r:*") as archive:
                    for member in archive:
                        _check_member_name(self.path, member.name)
                        if member.isfile():
                            self.sizes[member.name] = member.size
            else:
                raise UserError(f"{self.path}: unknown source type (expected a folder, .tar, .tar.gz, .tgz or .zip)")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise UserError(f"cannot read archive {self.path}: {_first_line(err)}") from None

    @property
    def names(self) -> list[str]:
        return list(self.sizes)

    def read(self, wanted: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every wanted file, one file in memory at a time: in the order asked for a folder or a
        zip (random access), in the archive's own order for a tar (one pass over it)."""
        for name in wanted:
            if name not in self.sizes:
                raise KeyError(name)
            if self.budget is not None and self.sizes[name] > self.budget:
                raise UserError(
                    f"{name} in {self.path} is {human(self.sizes[name])}, over the memory budget of "
                    f"{human(self.budget)} (--memory-limit)"
                )
        try:
            if self.kind == "folder":
                for name in wanted:
                    yield name, (self.path / name).read_bytes()
            elif self.kind == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    for name in wanted:
                        yield name, archive.read(name)
            else:
                left = set(wanted)
                with tarfile.open(self.path, "r:*") as archive:
                    for member in archive:
                        if member.name in left:
                            left.discard(member.name)
                            yield member.name, archive.extractfile(member).read()
                            if not left:
                                break
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise UserError(f"cannot read archive {self.path}: {_first_line(err)}") from None

    def read_one(self, name: str) -> bytes:
        """The bytes of one file (the archive closed again at once)."""
        files = self.read([name])
        try:
            return next(files)[1]
        finally:
            files.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0].rstrip(":") if text else type(err).__name__


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse an archive whose member names climb out of it (../) or are absolute: such an archive was not
    made from an image-folder tree, and quietly skipping those members would import a different data set."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise UserError(
            f"{archive}: member '{name}' points outside the archive (absolute or with ..): "
            "refusing the archive; rebuild it from the image folder"
        )


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _folder_source(members: Members, split: str, where: Path) -> Source:
    """Images laid out as .../<split>/<class>/<image>, ordered by class (CIFAR-10 order) then file name; other
    files in the class folders are named in a note."""
    entries = []
    unknown, skipped = set(), []
    for name in members.names:
        parts = name.replace("\\", "/").split("/")
        if len(parts) < 3 or parts[-3] != split:
            continue
        if not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            if not parts[-1].startswith("."):
                skipped.append(name)
            continue
        cls = parts[-2]
        if cls not in CIFAR10_CLASSES:
            unknown.add(cls)
            continue
        entries.append((CIFAR10_CLASSES.index(cls), _natural_key(parts[-1]), name))
    if unknown:
        raise UserError(
            f"{where}: unknown class folder(s) {', '.join(sorted(unknown))}; CIFAR-10's classes are "
            f"{', '.join(CIFAR10_CLASSES)}"
        )
    if not entries:
        raise UserError(
            f"{where}: no images in <{split}>/<class>/ folders (expected e.g. cifar10/{split}/airplane/0000.jpg)"
        )
    missing = set(range(len(CIFAR10_CLASSES))) - {e[0] for e in entries}
    if missing:
        raise UserError(
            f"{where}: no {split} images for class(es) {', '.join(CIFAR10_CLASSES[c] for c in sorted(missing))}"
        )
    note_skipped(skipped)
    entries.sort()
    names = [e[2] for e in entries]
    first = _decode_image(members.read_one(names[0]), names[0], members.budget)
    return Source(
        np.array([e[0] for e in entries], dtype=np.int64),
        names,
        lambda rows: decode_rows(members, [names[i] for i in rows], first.shape[:2], None),
        first.shape[:2],
    )


def note_skipped(skipped: Sequence[str]) -> None:
    """Name the files that are not images (a note, not an error: a README or a labels file is common)."""
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        console.print(f"note: skipped {len(skipped)} file(s) that are not images: {shown}", highlight=False)


def import_shape(members: Members, first: str, size: int | None, budget: int | None) -> tuple[tuple[int, int], str]:
    """The shape every imported image gets: `size` square when given, else the first image's, which all must then
    share; and the hint an image of another size is refused with."""
    if size:
        return (size, size), ""
    shape = _decode_image(members.read_one(first), first, budget).shape[:2]
    return shape, ": give --size to resize and centre-crop them all"


def decode_rows(
    members: Members, names: Sequence[str], shape: tuple[int, int], size: int | None, hint: str = ""
) -> np.ndarray:
    """The images of `names`, in that order, as uint8 (len, H, W, 3): decoded one file at a time as the source
    gives them, resized and centre-cropped to `size` when given, else all of `shape`."""
    out = np.empty((len(names), *((size, size) if size else shape), 3), dtype=np.uint8)
    position: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        position.setdefault(name, []).append(k)
    for name, data in members.read(list(position)):
        image = _decode_image(data, name, members.budget)
        if size:
            image = centre_crop(image, size)
        elif image.shape[:2] != tuple(shape):
            raise UserError(
                f"{name} is {image.shape[1]}x{image.shape[0]}, but the images before it are {shape[1]}x{shape[0]}{hint}"
            )
        out[position[name]] = image
    return out


def _decode_image(data: bytes, name: str, budget: int | None = None) -> np.ndarray:
    """An RGB uint8 image; any decoding failure (not an image, truncated, unsupported, a decompression bomb, larger
    than the memory budget once decoded) is one error naming the file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the budget below decides
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if budget is not None and 3 * width * height > budget:
                    raise UserError(
                        f"{name} is {width}x{height} pixels: decoded it takes {human(3 * width * height)}, over "
                        f"the memory budget of {human(budget)} (--memory-limit); remove it or shrink it"
                    )
                return np.asarray(image.convert("RGB"))
    except UserError:
        raise
    except Image.DecompressionBombError as err:
        raise UserError(f"{name} is not a safe image to decode ({err})") from None
    except UnidentifiedImageError:
        raise UserError(
            f"{name} is not a readable image (not a format PIL reads): remove it or fix the source"
        ) from None
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, struct.error, ... for broken files
        raise UserError(
            f"{name} is not a readable image ({type(err).__name__}: {_first_line(err)}): remove it or fix the source"
        ) from None


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR-10's batches and CIFAR-100's files are pickles; this reader admits numpy arrays and plain data,
    nothing executable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def _batches_source(files: dict[str, Callable[[], bytes]], split: str) -> Source:
    """CIFAR-10's python batches (as torchvision downloads them), in their original order."""
    missing = [name for name in _BATCH_FILES[split] if name not in files]
    if missing:
        raise UserError(f"the CIFAR-10 batches lack {', '.join(missing)} for the {split} split")
    images, labels, names = [], [], []
    for name in _BATCH_FILES[split]:
        try:
            batch = _BatchUnpickler(io.BytesIO(files[name]()), encoding="bytes").load()
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            batch_labels = np.asarray(batch["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, AttributeError) as err:
            raise UserError(f"{name} is not a CIFAR-10 batch: {err}") from None
        images.append(data)
        labels.append(batch_labels)
        names.extend(f"{name}:{i}" for i in range(len(data)))
    all_images = np.ascontiguousarray(np.concatenate(images))
    return Source(np.concatenate(labels), names, lambda rows: all_images[rows], (32, 32))


def fetch_torchvision_archive(name: str, root: str | Path) -> Path:
    """Download and unpack torchvision's archive of dataset `name` (CIFAR10, CIFAR100, STL10) into `root`, checked
    by its MD5 (needs internet), and return the unpacked folder. Only torchvision's downloader is used, not its
    dataset class, which would unpickle the files without our restricted loader."""
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(torchvision.datasets, name)
    root = Path(root)
    folder = root / cls.base_folder
    if not folder.is_dir():
        try:
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as err:  # URLError, RuntimeError (bad checksum), ... when offline or interrupted
            raise UserError(
                f"could not download {name} ({type(err).__name__}: {err}); on a machine without internet "
                f"pass --source with a local copy (the folder or {cls.filename})"
            ) from None
    return folder


def download_cifar10(root: str | Path, split: str) -> Source:
    """Fetch CIFAR-10 with torchvision's downloader (needs internet) and read its batches."""
    return open_source(fetch_torchvision_archive("CIFAR10", root), split)
