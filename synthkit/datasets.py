"""Import real images into a store: CIFAR-10 (an image-folder tree or archive, the python batches, or a download),
or any image-folder tree or archive of <class>/<image> (`import_folder`). CIFAR-100 and STL-10: torchvision_sets.py."""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import CIFAR10_CLASSES
from .errors import UserError
from .jobs import check_output
from .locks import locked_output
from .meta import provenance
from .progress import progress
from .store import StoreWriter, balanced_subset, partial_path

SPLITS = ("train", "test")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass
class Source:
    """A split of CIFAR-10 in source order: labels, names, and a way to decode any subset."""

    labels: np.ndarray
    names: list[str]
    decode: Callable[[np.ndarray], np.ndarray]
    image_shape: tuple[int, int]


@locked_output("out")  # the whole job: a second import of the same --out is refused before it reads anything
def import_cifar10(
    out: str | Path,
    *,
    source: str | Path | None = None,
    split: str = "train",
    per_class: int | None = None,
    seed: int = 0,
    download: bool = False,
    download_root: str | Path = "data/downloads",
    batch_size: int = 2000,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write CIFAR-10's `split` (or a seeded class-balanced subset of it) to the store `out`."""
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got '{split}'")
    if source is None and not download:
        raise UserError("give --source (an image-folder tree, an archive or cifar-10-batches-py) or --download")
    if source is not None and download:
        raise UserError("give either --source or --download, not both")
    params = {"source": str(source) if source else "torchvision-download", "split": split,
              "per_class": per_class, "seed": seed}

    def open_split() -> tuple[Source, list[str], dict]:
        src = download_cifar10(download_root, split) if download else open_source(Path(source), split)
        return src, list(CIFAR10_CLASSES), _describe(Path(source)) if source else {"path": str(download_root)}

    return write_source(out, open_split, params, split, per_class, seed, batch_size, overwrite, resume)


def write_source(out: str | Path, open_split: Callable[[], tuple[Source, list[str], dict]], params: dict, split: str,
                 per_class: int | None, seed: int, batch_size: int = 2000, overwrite: bool = False,
                 resume: bool = False) -> Path:
    """Write a dataset split (or a seeded class-balanced subset) to the store `out`, opening the source only when
    there is work to do; each row keeps its index and name in the source."""
    out = Path(out)
    if check_output(out, [partial_path(out)], overwrite, resume):
        return out
    src, classes, described = open_split()
    index = np.arange(len(src.labels)) if per_class is None else balanced_subset(src.labels, per_class, seed, len(classes))
    meta = provenance("real", params, [described])
    with StoreWriter(out, classes=classes, image_shape=src.image_shape, meta=meta,
                     columns={"source_index": "int", "source_name": "str"}, total=len(index),
                     overwrite=overwrite, resume=resume) as writer, progress() as bar:
        task = bar.add_task(f"import {split}", total=len(index), completed=writer.done)
        for start in range(writer.done, len(index), batch_size):
            rows = index[start : start + batch_size]
            writer.append(src.decode(rows), src.labels[rows], source_index=rows,
                          source_name=[src.names[i] for i in rows])
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
    seed: int = 0,
    batch_size: int = 256,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write the images of an image-folder tree or archive laid out as [<split>/]<class>/<image> to the store `out`.

    Classes are the folder names (sorted naturally), or `class_name` for every image of a flat folder. With `size`
    each image is resized so that its shorter side is `size` (PIL bicubic), then centre-cropped to size x size;
    without it all images must share one size. Each image's file name is kept in the column source_name."""
    out = Path(out)
    if size is not None and size < 8:
        raise UserError(f"--size must be at least 8, got {size}")
    if check_output(out, [partial_path(out)], overwrite, resume):
        return out
    source = Path(source)
    if not source.exists():
        raise UserError(f"source {source} does not exist")
    files = ({str(p.relative_to(source)): p.read_bytes for p in source.rglob("*") if p.is_file()} if source.is_dir()
             else _archive_members(source))
    entries = []
    for name in files:
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]  # tar's ./class/img.jpg
        if not parts or not parts[-1].lower().endswith(_IMAGE_SUFFIXES) or any(p.startswith(".") for p in parts):
            continue
        if split is not None and (len(parts) < 3 or parts[-3] != split):
            continue
        if class_name is None and len(parts) < 2:
            raise UserError(f"{source}: {name} is not inside a class folder: lay images out as <class>/<image>, or give --class-name")
        entries.append((class_name or parts[-2], _natural_key(name), name))
    if not entries:
        where = f"<{split}>/<class>/" if split else "<class>/"
        raise UserError(f"{source}: no images in {where} folders")
    classes = sorted({e[0] for e in entries}, key=_natural_key)
    entries.sort(key=lambda e: (classes.index(e[0]), e[1]))
    names, labels = [e[2] for e in entries], np.array([classes.index(e[0]) for e in entries], dtype=np.int64)
    shape = (size, size) if size else _decode_image(files[names[0]](), names[0]).shape[:2]

    def decode(rows: np.ndarray) -> np.ndarray:
        images = [_decode_image(files[names[i]](), names[i]) for i in rows]
        if size:
            return np.stack([centre_crop(image, size) for image in images])
        for i, image in zip(rows, images):
            if image.shape[:2] != shape:
                raise UserError(f"{names[i]} is {image.shape[1]}x{image.shape[0]}, but {names[0]} is {shape[1]}x{shape[0]}: "
                                "give --size to resize and centre-crop them all")
        return np.stack(images)

    index = np.arange(len(labels)) if per_class is None else balanced_subset(labels, per_class, seed, len(classes))
    params = {"source": str(source), "size": size, "split": split, "class_name": class_name, "per_class": per_class, "seed": seed}
    meta = provenance("real", params, [_describe(source)])
    with StoreWriter(out, classes=classes, image_shape=shape, meta=meta, columns={"source_index": "int", "source_name": "str"},
                     total=len(index), overwrite=overwrite, resume=resume) as writer, progress() as bar:
        task = bar.add_task("import", total=len(index), completed=writer.done)
        for start in range(writer.done, len(index), batch_size):
            rows = index[start : start + batch_size]
            writer.append(decode(rows), labels[rows], source_index=rows, source_name=[names[i] for i in rows])
            bar.advance(task, len(rows))
    return out


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
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"path": str(path), "sha256": digest.hexdigest()}
    return {"path": str(path)}


def open_source(path: Path, split: str) -> Source:
    """Recognise the layout at `path` and return the split's images in a fixed, documented order."""
    if not path.exists():
        raise UserError(f"source {path} does not exist")
    if path.is_dir():
        batches = _find_batch_dir(path)
        if batches is not None:
            return _batches_source({name: (batches / name).read_bytes for name in _BATCH_FILES[split]}, split)
        return _folder_source({str(p.relative_to(path)): p.read_bytes for p in path.rglob("*") if p.is_file()}, split, path)
    members = _archive_members(path)
    batch_names = {name.rsplit("/", 1)[-1]: name for name in members}
    if "data_batch_1" in batch_names or "test_batch" in batch_names:
        return _batches_source({name: members[batch_names[name]] for name in _BATCH_FILES[split] if name in batch_names}, split)
    return _folder_source(members, split, path)


def _find_batch_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").exists() or (candidate / "test_batch").exists():
            return candidate
    return None


def _archive_members(path: Path) -> dict[str, Callable[[], bytes]]:
    """Member name -> a function that returns its bytes, for .tar, .tar.gz, .tgz and .zip files."""
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            archive = zipfile.ZipFile(path)
            for info in archive.infolist():
                _check_member_name(path, info.filename)
            return {i.filename: (lambda i=i: archive.read(i)) for i in archive.infolist() if not i.is_dir()}
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            data: dict[str, bytes] = {}
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    _check_member_name(path, member.name)
                    if member.isfile():
                        data[member.name] = archive.extractfile(member).read()
            return {k: (lambda v=v: v) for k, v in data.items()}
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise UserError(f"cannot read archive {path}: {err}") from None
    raise UserError(f"{path}: unknown source type (expected a folder, .tar, .tar.gz, .tgz or .zip)")


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse an archive whose member names climb out of it (../) or are absolute: such an archive was not
    made from an image-folder tree, and quietly skipping those members would import a different data set."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        raise UserError(f"{archive}: member '{name}' points outside the archive (absolute or with ..): "
                        "refusing the archive; rebuild it from the image folder")


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _folder_source(files: dict[str, Callable[[], bytes]], split: str, where: Path) -> Source:
    """Images laid out as .../<split>/<class>/<image>, ordered by class (CIFAR-10 order) then file name."""
    entries = []
    unknown = set()
    for name in files:
        parts = name.replace("\\", "/").split("/")
        if len(parts) < 3 or parts[-3] != split or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
            continue
        cls = parts[-2]
        if cls not in CIFAR10_CLASSES:
            unknown.add(cls)
            continue
        entries.append((CIFAR10_CLASSES.index(cls), _natural_key(parts[-1]), name))
    if unknown:
        raise UserError(f"{where}: unknown class folder(s) {', '.join(sorted(unknown))}; CIFAR-10's classes are {', '.join(CIFAR10_CLASSES)}")
    if not entries:
        raise UserError(f"{where}: no images in <{split}>/<class>/ folders (expected e.g. cifar10/{split}/airplane/0000.jpg)")
    missing = set(range(len(CIFAR10_CLASSES))) - {e[0] for e in entries}
    if missing:
        raise UserError(f"{where}: no {split} images for class(es) {', '.join(CIFAR10_CLASSES[c] for c in sorted(missing))}")
    entries.sort()
    names = [e[2] for e in entries]
    first = _decode_image(files[names[0]](), names[0])

    def decode(rows: np.ndarray) -> np.ndarray:
        images = [_decode_image(files[names[i]](), names[i]) for i in rows]
        for i, image in zip(rows, images):
            if image.shape != first.shape:
                raise UserError(f"{names[i]} is {image.shape[1]}x{image.shape[0]}, but the images before it are {first.shape[1]}x{first.shape[0]}")
        return np.stack(images) if images else np.zeros((0, *first.shape), np.uint8)

    return Source(np.array([e[0] for e in entries], dtype=np.int64), names, decode, first.shape[:2])


def _decode_image(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"{name} is not a readable image: remove it or fix the archive") from None


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR-10's batches and CIFAR-100's files are pickles; this reader admits numpy arrays and plain data,
    nothing executable."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

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
            raise UserError(f"could not download {name} ({type(err).__name__}: {err}); on a machine without internet "
                            f"pass --source with a local copy (the folder or {cls.filename})") from None
    return folder


def download_cifar10(root: str | Path, split: str) -> Source:
    """Fetch CIFAR-10 with torchvision's downloader (needs internet) and read its batches."""
    return open_source(fetch_torchvision_archive("CIFAR10", root), split)
