"""`synthkit export`: a store in the formats other tools read, and the conventions the importers read back.

- imagefolder: OUT/<class>/<row>.png (lossless) and OUT/metadata.jsonl, one line per image with its `file_name`,
  `label`, `class_name` and every per-image column: the layout of Hugging Face datasets' imagefolder loader, which
  torchvision's ImageFolder reads too (it numbers the class folders in sorted order).
- webdataset: tar shards OUT/<store>-000000.tar, ... (WebDataset's naming); each sample's key (its store row) holds
  KEY.png, KEY.cls (the label as text) and KEY.json (label, class name and the columns).

Both carry OUT/provenance.json: the store's record, its classes and column kinds, and how the export was made, so
that `synthkit data folder` and `synthkit data webdataset` give back the same store (pixels, labels, classes and
columns). The store is read in windows within the memory budget and OUT is written whole (OUT.partial, renamed).
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import EXPORT, EXPORT_FORMATS, SEED, check_choice
from ..core.errors import UserError
from ..core.jobs import check_fits, check_input_outside, check_output
from ..core.memory import human, parse_bytes, ram_budget
from ..core.meta import jsonable, provenance
from ..core.outputs import locked_output, written_whole
from ..core.progress import progress
from .store import Store, balanced_subset

METADATA_FILE = "metadata.jsonl"  # the name Hugging Face's imagefolder loader looks for
PROVENANCE_FILE = "provenance.json"  # beside the images or the shards
EXPORT_FORMAT, EXPORT_VERSION = "synthkit-export", 1
FILE_NAME, LABEL, CLASS_NAME = "file_name", "label", "class_name"
RESERVED = (FILE_NAME, "image", LABEL, CLASS_NAME)  # keys of a record that are not columns ("image": datasets' own)
SHARD_DIGITS = 6  # WebDataset's shard numbering: NAME-000000.tar
_TAR_RECORD = tarfile.RECORDSIZE  # a tar file's size is a multiple of it (10 KB)


@dataclass
class Exported:
    """What an export wrote: where, how many images of how many classes, its bytes, and its shards' pattern."""

    out: Path
    format: str
    images: int
    classes: int
    bytes: int
    shards: str | None = None
    shard_count: int = 0


def exported_line(done: Exported) -> str:
    """The line `synthkit export` prints."""
    shards = f" in {done.shard_count} shard(s) {done.out / done.shards}" if done.shards else ""
    return (
        f"wrote {done.out}: {done.images} images of {done.classes} classes as {done.format}{shards}, "
        f"{human(done.bytes)}"
    )


@locked_output("out", folder=True, inputs=["store"])
def export_store(
    store: str | Path,
    out: str | Path,
    format: str = "imagefolder",
    *,
    classes: str | Sequence[str] | None = None,
    per_class: int | None = None,
    seed: int = SEED,
    shard_size: str = EXPORT.shard_size,
    memory_limit: str | None = None,
    overwrite: bool = False,
) -> Exported:
    """Write the store (or its `classes`, or a seeded `per_class` subset) to the folder `out` as `format`
    (imagefolder or webdataset, see the module's docstring), reading it in windows within the memory budget
    (`memory_limit`, else half the available RAM)."""
    check_choice(format, EXPORT_FORMATS, "--format")
    limit = parse_shard_size(shard_size) if format == "webdataset" else None
    out, store = Path(out), Path(store)
    check_export_output(out, store, overwrite)
    budget = ram_budget(memory_limit)
    with Store(store) as s:
        s.require_images(": nothing to export")
        rows, labels, names = select_rows(s, classes, per_class, seed)
        height, width, _ = s.image_shape
        check_fits(3 * height * width, budget, f"one {width}x{height} image")
        kinds = {name: s.column_kind(name) for name in s.column_names}
        clash = [name for name in kinds if name in RESERVED]
        if clash:
            raise UserError(
                f"store {store} has a column named '{clash[0]}', which the export's records use for "
                f"{'the image' if clash[0] in (FILE_NAME, 'image') else 'the class'}: it cannot be exported as it is"
            )
        window = max(1, budget // (3 * height * width))
        digits = max(SHARD_DIGITS, len(str(len(s) - 1)))
        with written_whole(out, folder=True) as tmp, progress() as bar:
            tmp.mkdir()
            sink = (
                ImageFolderSink(tmp, names) if format == "imagefolder" else ShardSink(tmp, shard_prefix(store), limit)
            )
            task = bar.add_task(f"export {format}", total=len(rows))
            for start in range(0, len(rows), window):
                part = rows[start : start + window]
                records = row_records(s, kinds, part, labels[start : start + window], names)
                for row, image, record in zip(part, s.images(part), records):
                    sink.add(f"{row:0{digits}d}", image, record)
                bar.advance(task, len(part))
            shards = sink.close()
            params = {"format": format, "classes": classes, "per_class": per_class, "seed": seed}
            params |= {"shard_size": shard_size} if limit else {}
            record = export_record(s, params, len(rows), names, kinds, shards)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
            size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return Exported(out, format, len(rows), len(names), size, shards.get("shards"), shards.get("shard_count", 0))


def check_export_output(out: Path, store: Path, overwrite: bool) -> None:
    """The folder to write: not the store nor a folder holding it (--overwrite would delete it), not there already
    unless --overwrite, and then only a folder synthkit exported (or an empty one), never a folder of anything else."""
    check_output(out, [], overwrite, resume=False, resumable=False, inputs=[store], folder=True)
    check_input_outside(store, out)
    if out.is_dir() and any(out.iterdir()) and read_export_record(out / PROVENANCE_FILE) is None:
        raise UserError(
            f"{out} is not a folder synthkit exported (no {PROVENANCE_FILE} of synthkit's): --overwrite replaces only "
            "those; choose another --out, or remove the folder yourself"
        )


def parse_shard_size(text: str) -> tuple[str, int]:
    """--shard-size: ('count', samples) for a plain number, ('bytes', size) for a size such as 500MB."""
    text = str(text).strip()
    try:
        if text.isdigit():
            if int(text) < 1:
                raise UserError("zero")
            return "count", int(text)
        return "bytes", parse_bytes(text)
    except UserError:
        raise UserError(
            f"--shard-size must be a count of samples (e.g. 10000) or a size (e.g. 500MB), got '{text}'"
        ) from None


def select_rows(
    store: Store, classes: str | Sequence[str] | None = None, per_class: int | None = None, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The store rows to export (in store order), their labels and the class list: every class with its store
    label, or only `classes` (comma-separated names), relabelled 0..k-1 in the store's order; with `per_class` a
    seeded class-balanced subset (store.balanced_subset)."""
    names, labels = list(store.classes), store.labels
    rows = np.arange(len(labels))
    if classes:
        wanted = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
        if not all(wanted):
            raise UserError(f"--classes '{classes}' has an empty class name (a stray comma?)")
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise UserError(f"store {store.path} has no class '{unknown[0]}' (it has: {', '.join(names)})")
        names = [c for c in names if c in wanted]
        relabel = np.full(len(store.classes), -1)
        relabel[[store.classes.index(c) for c in names]] = np.arange(len(names))
        rows = np.flatnonzero(relabel[labels] >= 0)
        labels = relabel[labels[rows]]
    if per_class is not None:
        picked = balanced_subset(labels, per_class, seed, names)
        rows, labels = rows[picked], labels[picked]
    return rows, np.asarray(labels, dtype=np.int64), names


def row_records(
    store: Store, kinds: dict[str, str], rows: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Each row's JSON record: label, class name and every column's value (a float NaN as null; ±inf has no JSON
    form and is refused)."""
    columns = {name: store.column(name, rows) for name in kinds}
    records = []
    for k, (row, label) in enumerate(zip(rows, labels)):
        record: dict[str, Any] = {LABEL: int(label), CLASS_NAME: names[label]}
        for name, kind in kinds.items():
            value = columns[name][k]
            if kind == "float":
                value = float(value)
                if math.isinf(value):
                    raise UserError(
                        f"store {store.path}: column '{name}' holds {value} at row {row}, which JSON cannot hold"
                    )
                value = None if math.isnan(value) else value
            record[name] = int(value) if kind == "int" else value
        records.append(record)
    return records


def export_record(
    store: Store, params: dict[str, Any], images: int, classes: list[str], kinds: dict[str, str], shards: dict[str, Any]
) -> dict[str, Any]:
    """provenance.json: the format tag, what the importers need (classes, column kinds), the store's own record and
    how the export was made (`params`: the options asked)."""
    source = {"path": str(store.path), "fingerprint": store.fingerprint, "count": len(store)}
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "layout": params["format"],
        "images": images,
        "image_shape": list(store.image_shape),
        "classes": classes,
        "columns": kinds,
        **shards,
        "export": provenance("export", jsonable(params), [source]),
        "store": store.meta,
    }


def read_export_record(path: Path | None = None, data: bytes | None = None) -> dict[str, Any] | None:
    """The provenance.json of a synthkit export (read from `path` or given as `data`), or None where there is none or
    it is not synthkit's; one that says it is but lacks its classes or column kinds is refused."""
    try:
        if data is None:
            if path is None or not path.is_file():
                return None
            data = path.read_bytes()
        record = json.loads(data)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        return None
    classes, kinds = record.get("classes"), record.get("columns")
    if not (
        isinstance(classes, list)
        and all(isinstance(c, str) and c for c in classes)
        and len(set(classes)) == len(classes)
        and isinstance(kinds, dict)
        and all(kind in ("int", "float", "str") for kind in kinds.values())
        and isinstance(record.get("store"), dict)
        and isinstance(record.get("export", {}), dict)
    ):
        raise UserError(f"{path or PROVENANCE_FILE} is damaged: it lacks the export's classes, columns or record")
    return record


def exported_from(export: dict[str, Any] | None) -> dict[str, Any]:
    """What a store imported from a synthkit export records of its origin (beside the source's own description):
    the store exported (path, fingerprint, count, and that store's own sources)."""
    if export is None:
        return {}
    sources = export.get("export", {}).get("sources", [])
    return {"exported_from": [dict(s, sources=export["store"].get("sources", [])) for s in sources]}


def folder_name(name: str) -> str:
    """A class name as a folder name: characters no folder name can hold (/, \\, control characters), % itself and a
    leading dot (., .., hidden folders) are written %XX, as in URLs; every other name is itself. metadata.jsonl keeps
    the name as it is."""
    text = re.sub(r"[%/\\\x00-\x1f\x7f]", lambda m: f"%{ord(m.group()):02X}", name)
    text = "%2E" + text[1:] if text.startswith(".") else text
    if len(text.encode()) > 255:
        raise UserError(f"class name '{name[:40]}...' is too long for a folder name (over 255 bytes)")
    return text


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 RGB image as PNG (lossless)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def shard_prefix(store: Path) -> str:
    """Shards are named after the store (data/inv.h5: inv-000000.tar), in characters a brace pattern takes as is."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", store.stem) or "shard"


class ImageFolderSink:
    """Writes <class>/<key>.png and a metadata.jsonl line per image, in the order given."""

    def __init__(self, root: Path, classes: Sequence[str]):
        self.root, self.folders = root, [folder_name(c) for c in classes]
        self.metadata = open(root / METADATA_FILE, "w", encoding="utf-8")

    def add(self, key: str, image: np.ndarray, record: dict[str, Any]) -> None:
        folder = self.root / self.folders[record[LABEL]]
        folder.mkdir(exist_ok=True)  # only classes with images get a folder: torchvision refuses an empty one
        (folder / f"{key}.png").write_bytes(png_bytes(image))
        line = {FILE_NAME: f"{folder.name}/{key}.png", **record}
        self.metadata.write(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self) -> dict[str, Any]:
        self.metadata.close()
        return {}


class ShardSink:
    """Writes samples (KEY.png, KEY.cls, KEY.json) into PREFIX-000000.tar, PREFIX-000001.tar, ...: a new shard when
    the next sample would take the shard over `limit` (('count', samples) or ('bytes', size)); a shard holds at least
    one sample. Members carry a fixed time and owner, so one store exports to the same bytes every time."""

    def __init__(self, root: Path, prefix: str, limit: tuple[str, int]):
        self.root, self.prefix, (self.unit, self.limit) = root, prefix, limit
        self.count, self.samples, self.tar = 0, 0, None

    def add(self, key: str, image: np.ndarray, record: dict[str, Any]) -> None:
        members = [
            (f"{key}.png", png_bytes(image)),
            (f"{key}.cls", str(record[LABEL]).encode()),
            (f"{key}.json", json.dumps(record, ensure_ascii=False).encode()),
        ]
        if self.tar is None or self._full(members):
            self._next()
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self.tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def _full(self, members: list[tuple[str, bytes]]) -> bool:
        if self.samples == 0:
            return False
        if self.unit == "count":
            return self.samples >= self.limit
        blocks = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        closed = -(-(self.tar.offset + blocks + 1024) // _TAR_RECORD) * _TAR_RECORD  # end blocks, record padding
        return closed > self.limit

    def _next(self) -> None:
        if self.tar is not None:
            self.tar.close()
        self.tar = tarfile.open(
            self.root / f"{self.prefix}-{self.count:0{SHARD_DIGITS}d}.tar", "w", format=tarfile.USTAR_FORMAT
        )
        self.count, self.samples = self.count + 1, 0

    def close(self) -> dict[str, Any]:
        if self.tar is not None:
            self.tar.close()
        last = f"{self.count - 1:0{SHARD_DIGITS}d}"
        pattern = f"{self.prefix}-{{{'0' * SHARD_DIGITS}..{last}}}.tar"
        return {"shards": pattern, "shard_count": self.count}


# ---- reading the records back (synthkit data folder, synthkit data webdataset)


def record_classes(labels: np.ndarray, names: Sequence[Any], declared: list[str] | None, where: str) -> list[str]:
    """The class list of labelled rows: the export's own (`declared`, each row's name checked against it); else each
    label's name from the rows' `names` where every label has one name and every name one label; else the labels as
    text ("0", "1", ...)."""
    count = int(labels.max()) + 1 if len(labels) else 0
    if declared is not None:
        if count > len(declared):
            raise UserError(f"{where}: label {count - 1} is beyond its {len(declared)} classes")
        wrong = next((k for k, name in enumerate(names) if name is not None and name != declared[labels[k]]), None)
        if wrong is not None:
            raise UserError(
                f"{where}: row {wrong} has label {labels[wrong]} ({declared[labels[wrong]]}) but class name "
                f"'{names[wrong]}'"
            )
        return list(declared)
    pairs = sorted({(int(label), name) for label, name in zip(labels, names) if isinstance(name, str) and name})
    if (
        len(pairs) == count
        and [label for label, _ in pairs] == list(range(count))
        and len({name for _, name in pairs}) == count
        and all(isinstance(name, str) and name for name in names)
    ):
        return [name for _, name in pairs]
    return [str(c) for c in range(count)]


def record_columns(
    records: Sequence[dict[str, Any]], declared: dict[str, str] | None, where: str
) -> dict[str, tuple[str, np.ndarray]]:
    """The per-image columns of the rows' records (every key but RESERVED) as (kind, values): of the kinds the export
    declared, or else inferred (int; float where the numbers include a fraction or null, null read as NaN; str); a key
    that fits no kind, or that some rows lack, is left out and named in a note."""
    if declared is not None:
        kinds = dict(declared)
    else:
        keys = list(dict.fromkeys(key for record in records for key in record if key not in RESERVED))
        kinds, skipped = {}, []
        for key in keys:
            kind = _kind([record.get(key, _MISSING) for record in records])
            if kind:
                kinds[key] = kind
            else:
                skipped.append(key)
        if skipped:
            from ..core.progress import console

            console.print(
                f"note: {where}: left out key(s) {', '.join(skipped)}: not numbers or text in every row",
                highlight=False,
            )
    columns = {}
    for name, kind in kinds.items():
        values = [record.get(name, _MISSING) for record in records]
        if _kind(values, kind) != kind:
            row = next(k for k, v in enumerate(values) if _kind([v], kind) != kind)
            raise UserError(f"{where}: row {row}'s '{name}' is {values[row]!r}, not of its column's kind ({kind})")
        if kind == "float":
            values = [math.nan if v is None else v for v in values]
        try:
            columns[name] = (kind, np.array(values, dtype={"int": np.int64, "float": np.float64, "str": object}[kind]))
        except OverflowError:
            raise UserError(f"{where}: column '{name}' holds an integer beyond 64 bits") from None
    return columns


_MISSING = object()


def _kind(values: Sequence[Any], expected: str | None = None) -> str | None:
    """The column kind all `values` fit (int before float), or None; with `expected`, whether they fit it."""
    is_int = [isinstance(v, int) and not isinstance(v, bool) for v in values]
    if expected in (None, "int") and all(is_int):
        return "int"
    if expected in (None, "float") and all(ok or isinstance(v, float) or v is None for ok, v in zip(is_int, values)):
        return "float"
    if expected in (None, "str") and all(isinstance(v, str) for v in values):
        return "str"
    return None
