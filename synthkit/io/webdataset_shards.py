"""`synthkit data webdataset`: WebDataset tar shards into a store, synthkit export's own or anyone's that follow the
convention: a sample is the members of a shard that share a key (the path up to the first dot of the file name),
with an image (KEY.png, KEY.jpg, ...), its class index as text (KEY.cls) and optionally KEY.json, whose numbers and
texts become columns. Shards are given as paths, brace patterns (shards-{000000..000009}.tar) or a folder of them.
Nothing in a shard is unpickled or executed: only images, integers and JSON are read."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.config import DATA, SEED
from ..core.errors import UserError
from ..core.jobs import check_distinct, check_outside
from ..core.outputs import locked_output
from .datasets import (
    Members,
    Source,
    _natural_key,
    decode_rows,
    finished_import,
    import_shape,
    resize_budget,
    source_columns,
    write_source,
)
from .export import (
    CLASS_NAME,
    LABEL,
    PROVENANCE_FILE,
    exported_from,
    read_export_record,
    record_classes,
    record_columns,
)

IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "tif", "tiff")  # in order of preference
CLASS_FIELDS = ("cls", "class")  # the class index as text, as WebDataset's own decoders read it
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_SHARDS = 100_000  # a brace pattern naming more is a typo, not a data set


@dataclass
class Sample:
    """A sample of shard number `shard`: its key and the members holding its image, class index and JSON."""

    shard: int
    key: str
    image: str | None = None
    label: str | None = None
    json: str | None = None


def expand_braces(pattern: str) -> list[str]:
    """The names of a brace pattern, as WebDataset (and the shell) expand it: {000..009} a range, zero-padded when
    its bounds are; {a,b} alternatives; several braces multiply."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds:
        low, high = bounds.groups()
        padded = any(len(b) > 1 and b.startswith("0") for b in (low, high))
        width = max(len(low), len(high)) if padded else 0
        step = 1 if int(high) >= int(low) else -1
        if abs(int(high) - int(low)) >= MAX_SHARDS:
            raise UserError(f"'{pattern}' names more than {MAX_SHARDS:,} shards")
        items = [f"{i:0{width}d}" for i in range(int(low), int(high) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise UserError(f"'{pattern}': {{{body}}} is neither a range (000..009) nor a list (a,b)")
    return [name for item in items for name in expand_braces(head + item + tail)]


def shard_paths(sources: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """The shards given, in order: each source a shard, a brace pattern of shards, or a folder (its shards in
    natural order); and the folders among the sources."""
    shards, folders = [], []
    for given in sources:
        text = str(given)
        path = Path(text)
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", text) and not path.exists():
            raise UserError(f"{text}: synthkit reads shards on this machine only: download them, then give their paths")
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES)), key=lambda p: _natural_key(p.name)
            )
            if not found:
                raise UserError(f"{path} holds no shards (.tar, .tar.gz or .tgz files)")
            folders.append(path)
            shards.extend(found)
            continue
        names = expand_braces(text)
        missing = [name for name in names if not Path(name).is_file()]
        if missing:
            of = f" ({len(missing)} of the {len(names)} shards that {text} names are missing)" if len(names) > 1 else ""
            raise UserError(f"shard {missing[0]} does not exist{of}")
        shards.extend(Path(name) for name in names)
    if not shards:
        raise UserError("give --source: shards, a brace pattern of them (shards-{000000..000009}.tar) or their folder")
    check_distinct(shards, "shard")
    return shards, folders


def key_and_field(name: str) -> tuple[str, str] | None:
    """WebDataset's split of a member name: the key is the path up to the first dot of the file name, the field what
    follows it (None for a name without one, or a hidden file)."""
    folder, _, file = name.rpartition("/")
    stem, dot, field = file.partition(".")
    if not dot or not stem:
        return None
    return (f"{folder}/" if folder else "") + stem, field.lower()


def index_shard(members: Members, shard: int) -> list[Sample]:
    """The samples of one shard, in the order their first member comes; other fields (text, other data) are not
    read."""
    samples: dict[str, Sample] = {}
    for name in members.names:
        split = key_and_field(name)
        if split is None:
            continue
        key, field = split
        sample = samples.setdefault(key, Sample(shard, key))
        if field in IMAGE_FIELDS:
            if sample.image is None or IMAGE_FIELDS.index(field) < IMAGE_FIELDS.index(key_and_field(sample.image)[1]):
                sample.image = name
        elif field in CLASS_FIELDS:
            sample.label = sample.label or name
        elif field == "json":
            sample.json = name
    return list(samples.values())


@locked_output("out")
def import_webdataset(
    out: str | Path,
    *,
    source: str | Path | Sequence[str | Path],
    size: int | None = None,
    per_class: int | None = None,
    seed: int = SEED,
    batch_size: int = DATA.folder_batch_size,
    memory_limit: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Write the samples of WebDataset shards (`source`: shards, brace patterns or folders) to the store `out`, in
    shard order, or a seeded class-balanced subset of `per_class` per class.

    Labels are the samples' KEY.cls; classes are synthkit export's (its provenance.json beside the shards), else each
    label's class_name in KEY.json where every label has one, else the labels as text. KEY.json's numbers and texts
    become columns (a synthkit export's are its store's columns exactly), besides each sample's index and shard/key
    (source_index, source_name). With `size` images are resized and centre-cropped as `data folder --size` does;
    without it all must share one size. Shards are indexed first and read a file at a time within the memory budget."""
    out = Path(out)
    budget = resize_budget(size, memory_limit)
    sources = [source] if isinstance(source, str | Path) else list(source)
    shards, folders = shard_paths(sources)
    params = {"source": [str(s) for s in sources], "size": size, "per_class": per_class, "seed": seed}
    if finished_import(out, params, None, overwrite, resume, shards):
        return out
    for folder in folders:
        check_outside(out, folder)
    members = [Members(shard, budget) for shard in shards]
    samples = _indexed_samples(members, shards, sources[0])
    labels, records = _read_fields(members, shards, samples)
    export = _shards_export(shards)
    where = str(sources[0]) if len(sources) == 1 else f"{sources[0]} and the other shards"
    classes = record_classes(labels, [r.get(CLASS_NAME) for r in records], export and export["classes"], where)
    columns = record_columns(records, export and export["columns"], where)
    src = _shards_source(members, shards, samples, labels, columns, export, size, budget)
    described = {"shards": [str(shard) for shard in shards]} | exported_from(export)
    return write_source(
        out,
        lambda: (src, classes, described),
        params,
        "shards",
        per_class,
        seed,
        batch_size,
        overwrite=overwrite,
        resume=resume,
        inputs=shards,
        budget=budget,
    )


def _indexed_samples(members: list[Members], shards: list[Path], first_source: str | Path) -> list[Sample]:
    """Every shard's samples in shard order, each checked to have a class field and an image before any member's
    bytes are read, so that a shard without the convention's fields is one error naming the sample."""
    samples = [sample for k, m in enumerate(members) for sample in index_shard(m, k)]
    if not samples:
        raise UserError(f"{first_source}: no samples in the shards (members named KEY.png, KEY.cls, ...)")
    for sample in samples:
        where = f"{shards[sample.shard]}: sample '{sample.key}'"
        if sample.label is None:
            raise UserError(
                f"{where} has no class field (KEY.cls): synthkit reads shards whose samples carry their class index"
            )
        if sample.image is None:
            raise UserError(f"{where} has no image ({', '.join('.' + f for f in IMAGE_FIELDS)})")
    return samples


def _shards_export(shards: list[Path]) -> dict | None:
    """The record of synthkit export's WebDataset layout (its provenance.json) when all shards lie in one folder
    beside one, else None: it gives the classes and columns of the store the shards were exported from."""
    beside = {shard.parent for shard in shards}
    export = read_export_record(next(iter(beside)) / PROVENANCE_FILE) if len(beside) == 1 else None
    return export if export and export.get("layout") == "webdataset" else None


def _shards_source(
    members: list[Members],
    shards: list[Path],
    samples: list[Sample],
    labels: np.ndarray,
    columns: dict[str, tuple[str, np.ndarray]],
    export: dict | None,
    size: int | None,
    budget: int,
) -> Source:
    """The samples as a Source named shard/key, decoded a shard at a time (resized to `size`, else all the size of
    the first image); the export's columns and record, or each sample's index and name besides the JSON columns."""
    names = [f"{shards[s.shard].name}/{s.key}" for s in samples]
    shape, hint = import_shape(members[samples[0].shard], samples[0].image, size, budget)
    shard_of = np.array([s.shard for s in samples])

    def decode(rows: np.ndarray) -> np.ndarray:
        pixels = np.empty((len(rows), *shape, 3), dtype=np.uint8)
        for shard in np.unique(shard_of[rows]):
            at = np.flatnonzero(shard_of[rows] == shard)
            pixels[at] = decode_rows(members[shard], [samples[rows[i]].image for i in at], shape, size, hint)
        return pixels

    return Source(
        labels,
        names,
        decode,
        shape,
        columns if export else source_columns(names) | columns,
        export["store"] if export else None,
    )


def _read_fields(members: list[Members], shards: list[Path], samples: list[Sample]) -> tuple[np.ndarray, list[dict]]:
    """Every sample's class index (KEY.cls) and JSON record (KEY.json, or {}), read a shard at a time; a class
    index that is not a whole number from 0, a record that is not a JSON object, or one whose label disagrees with
    KEY.cls, is one error naming the sample."""
    labels, records = [], []
    by_shard: dict[int, list[Sample]] = {}
    for sample in samples:
        by_shard.setdefault(sample.shard, []).append(sample)
    for k, mine in by_shard.items():
        data = dict(members[k].read([name for s in mine for name in (s.label, s.json) if name]))
        for sample in mine:
            text = data[sample.label].decode("utf-8", "replace").strip()
            if not re.fullmatch(r"[0-9]+", text):
                raise UserError(f"{shards[k]}: {sample.label} holds '{text[:20]}', not a class index (a whole number)")
            record = {}
            if sample.json:
                try:
                    record = json.loads(data[sample.json])
                except ValueError as err:
                    raise UserError(f"{shards[k]}: {sample.json} is not JSON ({err})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{shards[k]}: {sample.json} is not a JSON object")
                if LABEL in record and record[LABEL] != int(text):
                    raise UserError(
                        f"{shards[k]}: {sample.json} gives label {record[LABEL]!r}, but {sample.label} says {text}"
                    )
            labels.append(int(text))
            records.append(record)
    return np.array(labels, dtype=np.int64), records
