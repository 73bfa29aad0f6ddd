"""Commands on stores and files themselves: info, show, export, merge, subset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.config import (
    EXPORT,
    SEED,
    SHOW,
)
from .app import app, command, note, print_store_line
from .options import (
    ExportFormat,
    Overwrite,
    PerClass,
    SubsetSeed,
    seed_option,
)


@command(app)
def info(
    path: str = typer.Argument(
        ...,
        help="A store (name: data/NAME.h5, or path), a safetensors file, a diffusers model folder, or mini (the "
        "miniature shipped with synthkit).",
    ),
    plot: Path | None = typer.Option(
        None, help="A classifier's test accuracy against step, from its file alone, drawn to this PNG."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Show what a store, safetensors file or model folder holds and how it was made."""
    from ..io.info import info_target, print_info

    target, ambiguous = info_target(path)
    if plot is not None:  # checked and drawn first, so that a refused --plot prints nothing else
        from ..io.figures import plot_evaluations

        plot_evaluations(target, plot, overwrite=overwrite)
    if ambiguous:
        note(ambiguous)
    print_info(target)
    if plot is not None:
        typer.echo(f"wrote {plot}")


@command(app)
def show(
    store: str = typer.Argument(..., help="Store name or path."),
    out: Path = typer.Option(..., help="PNG to write."),
    per_row: int = typer.Option(SHOW.per_row, min=1, help="Images per class."),
    seed: Annotated[int, seed_option("Seed of the random picks.")] = SEED,
    cell: int = typer.Option(SHOW.cell, min=8, help="Pixels per image in the grid."),
    overwrite: Overwrite = False,
) -> None:
    """Draw a grid of sample images, a row per class."""
    from ..core.paths import store_path
    from ..io.figures import show_store

    grid = show_store(store_path(store), out, per_row=per_row, seed=seed, cell=cell, overwrite=overwrite)
    typer.echo(f"wrote {grid}")


@command(app)
def export(
    store: str = typer.Argument(..., help="Store to export (name or path)."),
    format: ExportFormat = typer.Option(
        ...,
        "--format",
        help="imagefolder: OUT/<class>/<row>.png and OUT/metadata.jsonl (Hugging Face datasets' imagefolder "
        "loader, torchvision's ImageFolder); webdataset: tar shards OUT/<store>-000000.tar, ... of KEY.png, KEY.cls "
        "and KEY.json (the webdataset package).",
    ),
    out: Path = typer.Option(..., help="Folder to write, e.g. exports/inv (with provenance.json beside the images)."),
    classes: str | None = typer.Option(
        None, help="Export only these classes (comma-separated names), labelled 0..k-1 in the store's order."
    ),
    per_class: PerClass = None,
    seed: SubsetSeed = SEED,
    shard_size: str = typer.Option(
        EXPORT.shard_size, help="webdataset: samples per shard (a count, e.g. 10000) or bytes (a size, e.g. 1GB)."
    ),
    memory_limit: str | None = typer.Option(
        None,
        help="Memory for the images read at a time, e.g. 512MB (default $SYNTHKIT_MEMORY_LIMIT, else half the "
        "available RAM): the store is read in windows of that size.",
    ),
    overwrite: Overwrite = False,
) -> None:
    """Write a store in the formats other tools read: an image folder with metadata.jsonl, or WebDataset shards
    (synthkit data folder / data webdataset read them back)."""
    options = dict(locals(), format=str(format))  # the parsed options, each a parameter of export_store
    from ..core.paths import store_path
    from ..io.export import export_store, exported_line

    typer.echo(exported_line(export_store(**options | {"store": store_path(store)})))


@command(app)
def merge(
    inputs: list[str] = typer.Argument(
        ..., help="Stores (names or paths) of the same classes, or embeddings files of one inversion job."
    ),
    out: Path = typer.Option(..., help="Store or embeddings file to write."),
    overwrite: Overwrite = False,
) -> None:
    """Merge shards (or any stores of the same classes) into one; shards go back in shard order."""
    if all(name.endswith(".safetensors") for name in inputs):
        from ..generate.inversion import merge_embeddings

        merge_embeddings([Path(p) for p in inputs], out, overwrite=overwrite)
        typer.echo(f"wrote {out}")
        return
    from ..core.paths import store_paths
    from ..io.store import merge_stores

    merge_stores(store_paths(inputs), out, overwrite=overwrite)
    print_store_line(out)


@command(app)
def subset(
    store: str = typer.Argument(..., help="A store (name or path), e.g. your own real training images."),
    out: Path = typer.Option(..., help="Store to write, e.g. data/real.h5."),
    per_class: int | None = typer.Option(
        None, min=1, help="Keep a seeded, class-balanced N images per class (default: all)."
    ),
    seed: SubsetSeed = SEED,
    overwrite: Overwrite = False,
) -> None:
    """Copy a store, or a seeded class-balanced subset of it, keeping its kind, classes and columns."""
    from ..core.paths import store_path
    from ..io.store import subset_store

    subset_store(store_path(store), out, per_class=per_class, seed=seed, overwrite=overwrite)
    print_store_line(out)
