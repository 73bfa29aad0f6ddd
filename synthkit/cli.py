"""The synthkit command line: parses options and calls the library; nothing else lives here.

Heavy libraries (torch, diffusers, grad-cam) are imported inside the commands, so that
`synthkit --help` and argument errors answer at once.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

from .errors import UserError

HELP = """Make synthetic training images useful: Diffusion Inversion and the study around it.

Pipeline: real images (data cifar10) -> invert (learn an embedding per real image) -> sample (new images from perturbed embeddings, or from prompts) -> train (ResNet-18 on any mix of stores) -> evaluate (on the real test set). gradcam and vanish analyse where models look and the geometry of the images.

Stores live in data/ (a bare name NAME means data/NAME.h5), models in models/, tables and figures in results/.
"""

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
data_app = typer.Typer(help="Import real datasets into stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")
err_console = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Show a UserError as one line on stderr and exit with code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@data_app.command("cifar10")
@user_errors
def data_cifar10(
    out: Path = typer.Option(..., help="Store to write, e.g. data/real.h5."),
    source: Optional[Path] = typer.Option(None, help="Image-folder tree or .tar/.tar.gz/.zip of one (<split>/<class>/<image>), or cifar-10-batches-py/ or cifar-10-python.tar.gz."),
    download: bool = typer.Option(False, help="Download CIFAR-10 with torchvision (needs internet)."),
    split: str = typer.Option("train", help="train or test."),
    per_class: Optional[int] = typer.Option(None, min=1, help="Take a seeded, class-balanced subset of N images per class."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
    resume: bool = typer.Option(False, help="Continue an interrupted import."),
) -> None:
    """Import CIFAR-10 (train or test split) into a store."""
    from .datasets import import_cifar10

    path = import_cifar10(out, source=source, split=split, per_class=per_class, seed=seed,
                          download=download, overwrite=overwrite, resume=resume)
    _print_store_line(path)


def _print_store_line(path: Path) -> None:
    from .store import Store

    with Store(path) as store:
        counts = store.counts()
        typer.echo(f"{path}: {len(store)} images, {counts.min()}-{counts.max()} per class, "
                   f"{'x'.join(map(str, store.image_shape))}")


@app.command()
@user_errors
def info(path: Path = typer.Argument(..., help="A store (.h5) or safetensors file.")) -> None:
    """Show what a store or safetensors file holds and how it was made."""
    from .info import print_info

    print_info(path)


@app.command()
@user_errors
def show(
    store: str = typer.Argument(..., help="Store name or path."),
    out: Path = typer.Option(..., help="PNG to write."),
    per_row: int = typer.Option(10, min=1, help="Images per class."),
    seed: int = typer.Option(0, help="Seed of the random picks."),
    cell: int = typer.Option(64, min=8, help="Pixels per image in the grid."),
) -> None:
    """Draw a grid of sample images, a row per class."""
    from .figures import save_image, store_grid
    from .paths import store_path
    from .store import Store

    with Store(store_path(store)) as s:
        save_image(store_grid(s, per_row=per_row, seed=seed, cell=cell), out)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def merge(
    stores: List[str] = typer.Argument(..., help="Stores (names or paths) of the same classes, e.g. shards."),
    out: Path = typer.Option(..., help="Store to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
) -> None:
    """Merge stores of the same classes into one (shards go back in shard order)."""
    from .meta import provenance
    from .paths import store_paths
    from .store import merge_stores

    inputs = store_paths(stores)
    from .store import Store

    with Store(inputs[0]) as first:
        kind = first.meta.get("kind", "merged")
        params = first.meta.get("params", {}) if first.shard else {}
    merge_stores(inputs, out, provenance(kind, params), overwrite=overwrite)
    _print_store_line(out)


def main() -> None:
    """Console-script entry point."""
    app()
