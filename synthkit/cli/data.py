"""`synthkit data ...`: real datasets imported into stores."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.config import (
    DATA,
    SEED,
)
from .app import Group, app, command, print_store_line
from .options import (
    ImportMemory,
    Overwrite,
    PerClass,
    Resume,
    Split,
    SubsetSeed,
)

data_app = typer.Typer(cls=Group, help="Import real datasets into stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _dataset_command(dataset: str, title: str, source_help: str) -> None:
    """`synthkit data cifar10|cifar100|stl10`: one command shape for the datasets torchvision downloads."""

    @command(data_app, dataset, help=f"Import {title} (train or test split) into a store.")
    def dataset_command(
        out: Path = typer.Option(..., help="Store to write, e.g. data/real.h5."),
        source: Path | None = typer.Option(None, help=source_help),
        download: bool = typer.Option(
            False, help=f"Download {title} with torchvision (needs internet) into --download-root."
        ),
        download_root: Path = typer.Option(Path(DATA.download_root), help="Where --download puts the files."),
        split: Split = typer.Option(Split(DATA.split), help="train or test."),
        per_class: PerClass = None,
        seed: SubsetSeed = SEED,
        memory_limit: ImportMemory = None,
        overwrite: Overwrite = False,
        resume: Resume = False,
    ) -> None:
        # the parsed options, as import_dataset names them (`dataset` is this command's own, passed first)
        options = {k: v for k, v in locals().items() if k != "dataset"}
        from ..io.torchvision_sets import import_dataset

        print_store_line(import_dataset(dataset, **options))


_dataset_command(
    "cifar10",
    "CIFAR-10",
    "Image-folder tree or .tar/.tar.gz/.zip of one (<split>/<class>/<image>), or cifar-10-batches-py/ or "
    "cifar-10-python.tar.gz.",
)
_dataset_command(
    "cifar100", "CIFAR-100 (100 classes, 32 px)", "The folder torchvision downloads, or cifar-100-python.tar.gz."
)
_dataset_command(
    "stl10", "STL-10's labelled images (10 classes, 96 px)", "The folder torchvision downloads, or stl10_binary.tar.gz."
)


@command(data_app, "folder")
def data_folder(
    source: Path = typer.Option(
        ..., help="An image-folder tree or .tar/.tar.gz/.zip of one: <class>/<image>, optionally under <split>/."
    ),
    out: Path = typer.Option(..., help="Store to write, e.g. data/scenes.h5."),
    size: int | None = typer.Option(
        None,
        min=8,
        help="Resize so that the shorter side is SIZE (PIL bicubic), then centre-crop to SIZE x SIZE. Without it all "
        "images must share one size.",
    ),
    split: str | None = typer.Option(None, help="Take only <split>/<class>/<image> (e.g. train)."),
    class_name: str | None = typer.Option(None, help='One class for every image (a flat folder), e.g. "urban scene".'),
    per_class: PerClass = None,
    seed: SubsetSeed = SEED,
    memory_limit: ImportMemory = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Import any image-folder tree or archive into a store: classes from the folder names, file names kept."""
    options = dict(locals())  # the parsed options, each a parameter of import_folder
    from ..io.datasets import import_folder

    print_store_line(import_folder(**options))


@command(data_app, "webdataset")
def data_webdataset(
    source: list[str] = typer.Option(
        ...,
        help="WebDataset shards: .tar files, a brace pattern such as 'shards-{000000..000009}.tar' (quote it), or a "
        "folder of shards (synthkit export's); repeatable. A sample is KEY.png (or .jpg, ...) with its class index "
        "in KEY.cls and, optionally, columns in KEY.json.",
    ),
    out: Path = typer.Option(..., help="Store to write, e.g. data/shards.h5."),
    size: int | None = typer.Option(
        None, min=8, help="Resize and centre-crop every image to SIZE x SIZE (as data folder --size)."
    ),
    per_class: PerClass = None,
    seed: SubsetSeed = SEED,
    memory_limit: ImportMemory = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Import WebDataset tar shards into a store: synthkit export's (the same store back), or anyone's with a class
    field."""
    options = dict(locals())  # the parsed options, each a parameter of import_webdataset
    from ..io.webdataset_shards import import_webdataset

    print_store_line(import_webdataset(**options))
