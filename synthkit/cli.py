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


@app.command()
@user_errors
def train(
    data: List[str] = typer.Option(..., help="Stores to train on: names (data/NAME.h5) or paths, comma-separated or repeated, e.g. real,inv."),
    out: Path = typer.Option(..., help="Classifier to write, e.g. models/resnet18-real+inv.safetensors."),
    epochs: int = typer.Option(30, min=1, help="Epochs (passes over the data; with --mix balanced, over the larger part)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Train for exactly this many steps instead of --epochs."),
    batch_size: int = typer.Option(128, min=2, help="Batch size."),
    lr: float = typer.Option(0.1, help="Peak learning rate (SGD, momentum 0.9, linear warm-up then cosine decay)."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay."),
    warmup: float = typer.Option(0.05, min=0, max=1, help="Share of steps spent warming up the learning rate."),
    mix: str = typer.Option("concat", help="concat: the union of the stores; balanced: each batch half real, half synthetic."),
    per_class: Optional[int] = typer.Option(None, min=1, help="Use a seeded, class-balanced subset of N images per class of each store."),
    seed: int = typer.Option(0, help="Seed of the initialisation, the subsets, the order and the augmentation."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (faster on GPU after a warm-up)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(False, help="Replace an existing classifier."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished epoch."),
) -> None:
    """Train ResNet-18 (CIFAR stem) on any mix of real and synthetic stores."""
    from .paths import store_paths
    from .training import TrainConfig, train as train_model

    config = TrainConfig(epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup=warmup, mix=mix, per_class=per_class, seed=seed, compile=compile)
    meta = train_model(store_paths(data), out, config, device=device, overwrite=overwrite, resume=resume)
    typer.echo(f"{out}: {meta['epochs']} epochs, {meta['steps']} steps, final loss {meta['final_loss']:.4f}, "
               f"train accuracy {100 * meta['final_train_acc']:.1f}%, {meta['seconds']:.0f} s on {meta['device']}")


@app.command()
@user_errors
def evaluate(
    model: List[Path] = typer.Option(..., help="Classifier(s) to score (repeat --model)."),
    test: str = typer.Option("test", help="The real test store (name or path)."),
    results: Path = typer.Option(Path("results"), help="Folder for accuracy.csv, accuracy.md and confusion/*.png."),
    batch_size: int = typer.Option(1000, min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Score classifiers on the real test set: the study's accuracy table, per-class accuracy, confusion figures."""
    from rich.table import Table

    from .evaluation import evaluate as evaluate_models
    from .paths import store_path

    rows = evaluate_models(model, store_path(test), results, device=device, batch_size=batch_size)
    table = Table(title=f"test accuracy on {rows[0]['test_images']} real test images ({rows[0]['test']})")
    table.add_column("training data")
    table.add_column("accuracy %", justify="right")
    table.add_column("train images", justify="right")
    table.add_column("model")
    for row in rows:
        table.add_row(row["training_data"], f"{100 * row['accuracy']:.2f}", str(row["train_images"]), row["model"])
    Console().print(table)
    typer.echo(f"appended to {results / 'accuracy.csv'}; table in {results / 'accuracy.md'}; figures in {results / 'confusion'}/")


def main() -> None:
    """Console-script entry point."""
    app()
