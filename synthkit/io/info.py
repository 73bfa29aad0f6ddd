"""`synthkit info`: what a store or safetensors file holds and how it was made, as rich tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from ..core.errors import UserError
from ..core.locks import holder
from ..core.paths import MINI, MINI_ASSET, partial_path, store_path
from .checkpoint import HDF5_MAGIC, read_meta, tensor_shapes
from .store import Store, missing_store_message, unfinished_message


def info_target(name: str) -> tuple[Path, str | None]:
    """What `synthkit info NAME` describes, with a note when the name could mean two things: a bare name is a store
    (data/NAME.h5), except `mini` where there is no data/mini.h5: the miniature shipped with synthkit."""
    path = store_path(name)
    if str(name) != MINI:
        return path, None
    if path.exists():
        return path, f"the store {path} is shown; the miniature shipped with synthkit is: synthkit info {MINI_ASSET}"
    return MINI_ASSET, None


def describe(path: str | Path) -> Group:
    """Tables for a store (.h5), a safetensors file or a diffusers model folder, chosen by content, not by name."""
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists() or holder(path) is not None:
            raise UserError(missing_store_message(path))
        raise UserError(f"{path} does not exist")
    busy = unfinished_message(path)
    if busy:
        raise UserError(busy)
    if path.is_dir():
        return _describe_model_folder(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic == HDF5_MAGIC:
        return _describe_store(path)
    return _describe_safetensors(path)


def _provenance_table(meta: dict[str, Any]) -> Table:
    table = Table(title="how it was made", show_header=False)
    for key in ("kind", "command", "synthkit_version", "created"):
        if key in meta:
            table.add_row(key, str(meta[key]))
    for key, value in meta.get("params", {}).items():
        table.add_row(f"param {key}", json.dumps(value))
    for source in meta.get("sources", []):
        table.add_row("from", json.dumps(source))
    for key, value in meta.items():
        if key not in ("kind", "command", "synthkit_version", "created", "params", "sources"):
            text = json.dumps(value)
            table.add_row(key, text if len(text) < 200 else text[:197] + "...")
    return table


def _describe_store(path: Path) -> Group:
    with Store(path) as store:
        counts = store.counts()
        summary = Table(
            title=f"{path}: {len(store)} images of {'x'.join(map(str, store.image_shape))}", show_header=True
        )
        summary.add_column("label", justify="right")
        summary.add_column("class")
        summary.add_column("images", justify="right")
        for i, (name, n) in enumerate(zip(store.classes, counts)):
            summary.add_row(str(i), name, str(n))
        summary.add_row("", "[bold]total", f"[bold]{len(store)}")
        extra = Table(show_header=False)
        extra.add_row("columns", ", ".join(store.column_names) or "none")
        extra.add_row("fingerprint", store.fingerprint)
        if store.shard:
            extra.add_row("shard", store.shard)
        parts = [summary, extra]
        for column in ("caption", "prompt"):  # what the images say they show: captions, or the prompts that made them
            if column in store.column_names and store.column_kind(column) == "str":
                shown = min(5, len(store))
                table = Table(title=f"the first {shown} {column}s")
                for name in ("row", "class", column):
                    table.add_column(name)
                for row, label, text in zip(range(shown), store.labels[:shown], store.column(column, slice(0, shown))):
                    table.add_row(str(row), store.classes[label], str(text))
                parts.append(table)
                break
        return Group(*parts, _provenance_table(store.meta))


def _describe_safetensors(path: Path) -> Group:
    meta = read_meta(path)
    if meta.get("kind") == "classifier":
        return _describe_classifier(path, meta)
    tensors = Table(title=f"{path}: tensors")
    tensors.add_column("name")
    tensors.add_column("shape")
    tensors.add_column("dtype")
    shapes = tensor_shapes(path)
    for name, (shape, dtype) in list(shapes.items())[:40]:
        tensors.add_row(name, "x".join(map(str, shape)) or "scalar", dtype)
    if len(shapes) > 40:
        tensors.add_row(f"... {len(shapes) - 40} more", "", "")
    return Group(tensors, _provenance_table(meta))


def _describe_classifier(path: Path, meta: dict[str, Any]) -> Group:
    """A classifier: how it was made, then its evaluations, then its tensors in one line (not 122 rows)."""
    parts: list[Any] = [_provenance_table({k: v for k, v in meta.items() if k != "evals"})]
    evals = meta.get("evals") or []
    if evals:
        table = Table(title="test accuracy during training", min_width=40)
        table.add_column("step", justify="right")
        table.add_column("accuracy %", justify="right")
        for e in evals:
            table.add_row(str(e["step"]), f"{100 * e['accuracy']:.2f}")
        parts.append(table)
    else:
        parts.append("no evaluations during training (no test store)")
    shapes = tensor_shapes(path)
    count = sum(_numel(shape) for shape, _ in shapes.values())
    dtypes = ", ".join(sorted({dtype for _, dtype in shapes.values()}))
    curve = "; info --plot PNG draws the curve" if evals else ""
    parts.append(f"tensors: {len(shapes)}, {count:,} values ({dtypes}){curve}")
    return Group(*parts)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _describe_model_folder(path: Path) -> Group:
    index = path / "model_index.json"
    if not index.exists():
        raise UserError(
            f"{path} is a folder but not a diffusers model: give a store (.h5), a safetensors file or a model folder"
        )
    table = Table(title=f"{path}: diffusers pipeline", show_header=False)
    for key, value in json.loads(index.read_text()).items():
        table.add_row(key, json.dumps(value))
    note = path / "synthkit.json"
    if note.exists():
        for key, value in json.loads(note.read_text()).items():
            table.add_row(f"synthkit {key}", str(value))
    return Group(table)


def print_info(path: str | Path, console: Console | None = None) -> None:
    """Print `describe(path)`."""
    (console or Console()).print(describe(path))
