"""The synthkit command line: parses options and calls the library; nothing else lives here.

Heavy libraries (torch, diffusers, grad-cam) are imported inside the commands, so that
`synthkit --help` and argument errors answer at once.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from . import DEFAULT_CAPTIONER, DEFAULT_MODEL
from .classifiers import CLASSIFIERS
from .config import (
    AUGMENTS,
    CAPTION,
    DATA,
    DEFAULT_RECIPE,
    DTYPES,
    EVAL,
    EXPORT,
    EXPORT_FORMATS,
    FIDELITY,
    FIDELITY_METRICS,
    FILTER,
    FILTER_CRITERIA,
    GRADCAM,
    GRADCAM_TARGETS,
    INVERT_JOB,
    JUDGE,
    LIKES,
    MINI,
    MIXES,
    PRECISIONS,
    PROMPT,
    REAL_STORE,
    RECIPES,
    SAMPLING,
    SCHEDULERS,
    SEED,
    SEED_MAX,
    SHOW,
    SPLITS,
    TEST_STORE,
    UNCONDS,
    VANISH,
    DIConfig,
    InversionConfig,
)
from .errors import UserError
from .paths import DATA_DIR, FIDELITY_DIR, GRADCAM_DIR, MODELS_DIR, RESULTS_DIR, VANISH_DIR, VANISH_GT_DIR

# Options many commands share, declared once.
AUTO = "auto"
SEED_RANGE = f"(0 to {SEED_MAX:,}, 2**32 - 1.)"
Device = Annotated[
    str, typer.Option(help="auto, cpu, cuda or cuda:N (auto: CUDA when there is a GPU; $SYNTHKIT_DEVICE sets it).")
]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output.")]
Shard = Annotated[
    str,
    typer.Option(
        help="Do shard i/n of the work, e.g. 0/4, and merge the outputs with synthkit merge; or auto: the shard "
        "torchrun or SLURM gives (under torchrun rank 0 merges into --out)."
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        help="Continue an interrupted run. A finished output is kept only if it was made the same way: its options "
        "and its inputs' fingerprints are compared with its record; if they differ, one error line names what "
        "differs, and --overwrite redoes the work."
    ),
]
ResultsAlias = Annotated[Path | None, typer.Option("--results", hidden=True, help="The old name of --out.")]


def results_folder(help: str) -> typer.models.OptionInfo:
    """--out of a command that also takes its old name --results: no value of its own, so that giving both is seen
    (check_common) and the default applies only when neither is given (`results or out or RESULTS_DIR`). The help
    says the default itself, its bracket escaped (rich would read it as markup)."""
    return typer.Option(None, help=f"{help} \\[default: {RESULTS_DIR}]", show_default=False)


def choice_type(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """The type of an option with a few values: the CLI offers exactly `values` (declared in config.py)."""
    return StrEnum(name, {value: value for value in values})


Split, Recipe, Mix, Augment, Arch = (
    choice_type(n, v)
    for n, v in (
        ("Split", SPLITS),
        ("Recipe", tuple(RECIPES)),
        ("Mix", MIXES),
        ("Augment", AUGMENTS),
        ("Arch", tuple(CLASSIFIERS)),
    )
)
Like, Precision, Uncond, Scheduler, Dtype = (
    choice_type(n, v)
    for n, v in (
        ("Like", LIKES),
        ("Precision", PRECISIONS),
        ("Uncond", UNCONDS),
        ("Scheduler", SCHEDULERS),
        ("Dtype", DTYPES),
    )
)
Target, Metric, Criterion = (
    choice_type(n, v)
    for n, v in (
        ("Target", GRADCAM_TARGETS),
        ("Metric", FIDELITY_METRICS),
        ("Criterion", FILTER_CRITERIA),
    )
)
ExportFormat = choice_type("ExportFormat", EXPORT_FORMATS)


def seed_option(what: str) -> typer.models.OptionInfo:
    """--seed: an integer from 0 to SEED_MAX; `what` says what it seeds."""
    return typer.Option(min=0, help=f"{what} {SEED_RANGE}")


MODEL_KINDS = (
    "mini (the miniature trained on CIFAR-10 and shipped with synthkit; a folder named mini is ./mini), a hub id, "
    "or a local diffusers folder"
)
SubsetSeed = Annotated[int, seed_option("Seed of the subset.")]
PerClass = Annotated[
    int | None, typer.Option(min=1, help="Take a seeded, class-balanced subset of N images per class.")
]


HELP = """Make synthetic training images useful: Diffusion Inversion and the study around it.

Pipeline: real images (data cifar10) -> invert (learn an embedding per real image) -> sample (new images from perturbed
embeddings, or from prompts) -> train (a classifier, ResNet-18 by default, on any mix of stores) -> evaluate (on the
real test set). gradcam and vanish analyse where models look and the geometry of the images.

Stores live in data/ (a bare name NAME means data/NAME.h5), models in models/, tables and figures in results/.
"""


class ClickStyleHelp:
    """typer 0.29 shows a flag's type as `<bool>` (so `--show true` looks valid, and fails) and a required argument
    as `{path}` in the usage line; synthkit's help shows them as click always has: a flag with no value, and an
    argument as PATH (optional ones in brackets, repeated ones with `...`)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""
            elif isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Command(ClickStyleHelp, TyperCommand):
    """Every synthkit subcommand: its help in click's words (ClickStyleHelp)."""


class Group(ClickStyleHelp, TyperGroup):
    """Every command group below the top: its help in click's words (ClickStyleHelp)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]


class ShortUsageErrors(Group):
    """Malformed options answered as click words them (usage, a hint, one `Error:` line), not in a rich panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except Exception as err:
            if not (hasattr(err, "show") and hasattr(err, "exit_code")):  # not a usage error: not ours to word
                raise
            if type(err).__name__ != "NoArgsIsHelpError":  # for that one the help is already printed
                err.show()
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=ShortUsageErrors, help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"synthkit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print synthkit's version and exit."
    ),
) -> None:
    """Make synthetic training images useful: Diffusion Inversion and the study around it."""


data_app = typer.Typer(cls=Group, help="Import real datasets into stores.", no_args_is_help=True)
app.add_typer(data_app, name="data")
err_console = Console(stderr=True)
INV, DI = InversionConfig(), DIConfig()


MEMORY_HELP = (
    "Memory for decoded images, e.g. 512MB (default $SYNTHKIT_MEMORY_LIMIT, else half the available RAM): the "
    "source is read a file at a time, and decoded in windows of that size (an archive is read once per window)."
)
ImportMemory = Annotated[str | None, typer.Option(help=MEMORY_HELP)]


def user_errors(fn: Callable) -> Callable:
    """Show a UserError as one line on stderr and exit with code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_common(kwargs)
            return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def command(group: typer.Typer, name: str | None = None, **options: object) -> Callable:
    """Decorator: a subcommand of `group` whose UserErrors are one line and exit code 2 (user_errors)."""
    return lambda fn: group.command(name, cls=Command, **options)(user_errors(fn))


def check_common(options: dict) -> None:
    """Options many commands share, checked before the command starts: every seed within SEED_MAX, not both
    --resume (keep or continue) and --overwrite (start again), and not both --out and its old name --results."""
    if options.get("results") is not None and options.get("out") is not None:
        raise UserError(
            f"--out {options['out']} and --results {options['results']} both name the output folder (--results is "
            "the old name of --out): give --out alone"
        )
    seeds = options.get("seed")
    for seed in seeds if isinstance(seeds, list) else [seeds] if seeds is not None else []:
        if seed > SEED_MAX:
            raise UserError(f"--seed must be at most {SEED_MAX:,} (2**32 - 1), got {seed}")
    if options.get("resume") and options.get("overwrite"):
        raise UserError("--resume keeps or continues an output and --overwrite starts it again: pass one of them")


def config_of(cls: type, options: dict) -> Any:
    """A settings dataclass from the command's options of the same names (each field is an option)."""
    return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls)})


def note(message: str) -> None:
    """A one-line note on stderr of what will actually be done."""
    err_console.print(f"note: {message}", highlight=False, soft_wrap=True)


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
        from .torchvision_sets import import_dataset

        _print_store_line(import_dataset(dataset, **options))


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
    from .datasets import import_folder

    _print_store_line(import_folder(**options))


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
    from .webdataset_shards import import_webdataset

    _print_store_line(import_webdataset(**options))


def _print_store_line(path: Path) -> None:
    from .store import Store

    with Store(path) as store:
        counts = store.counts()
        typer.echo(
            f"{path}: {len(store)} images, {counts.min()}-{counts.max()} per class, "
            f"{'x'.join(map(str, store.image_shape))}"
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
    from .info import info_target, print_info

    target, ambiguous = info_target(path)
    if plot is not None:  # checked and drawn first, so that a refused --plot prints nothing else
        from .figures import plot_evaluations

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
    from .figures import show_store
    from .paths import store_path

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
    from .export import export_store, exported_line
    from .paths import store_path

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
        from .inversion import merge_embeddings

        merge_embeddings([Path(p) for p in inputs], out, overwrite=overwrite)
        typer.echo(f"wrote {out}")
        return
    from .paths import store_paths
    from .store import merge_stores

    merge_stores(store_paths(inputs), out, overwrite=overwrite)
    _print_store_line(out)


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
    from .paths import store_path
    from .store import subset_store

    subset_store(store_path(store), out, per_class=per_class, seed=seed, overwrite=overwrite)
    _print_store_line(out)


@command(app)
def caption(
    data: str = typer.Option(REAL_STORE, help="Store to caption (name or path)."),
    out: Path = typer.Option(
        ..., help="Store to write: the same images with a caption column, e.g. data/real-captions.h5."
    ),
    model: str = typer.Option(
        DEFAULT_CAPTIONER,
        help="BLIP captioning model: hub id or local folder (synthkit model tiny-blip makes a test one).",
    ),
    batch_size: int = typer.Option(CAPTION.batch_size, min=1, help="Images per batch."),
    seed: Annotated[int, seed_option("Seed of torch before each batch (BLIP's default generation is greedy).")] = SEED,
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Caption every image of a store with BLIP, as the original study made its Stable Diffusion prompts."""
    from .captions import caption_store
    from .paths import store_path

    path = caption_store(
        store_path(data),
        out,
        model=model,
        batch_size=batch_size,
        seed=seed,
        device=device,
        overwrite=overwrite,
        resume=resume,
    )
    _print_store_line(path)


@command(app)
def train(
    ctx: typer.Context,
    data: list[str] = typer.Option(
        [],
        help="Required. Stores of one classifier: names (data/NAME.h5) or paths, comma-separated, e.g. real,inv. "
        "Repeat --data to train several classifiers in one job.",
        show_default=False,
    ),
    out: str | None = typer.Option(
        None,
        help="Required. Classifier to write, e.g. models/resnet18-real+inv.safetensors; for several, a pattern with "
        "{data} (store names joined by +) and {seed}.",
    ),
    recipe: Recipe = typer.Option(
        Recipe(DEFAULT_RECIPE),
        help=f"Training recipe (synthkit/config.py): {', '.join(RECIPES)}. di: the official evaluation (50,000 steps "
        "at batch 128); study: the original study's; quick: a few hundred steps for CPUs. Every option below "
        "overrides the recipe's value; --show prints the values. A --steps shorter than the recipe's scales its "
        "warm-up to the same share.",
    ),
    show: bool = typer.Option(
        False, "--show", help="Print the resolved settings (the recipe's, with the options given) and train nothing."
    ),
    arch: Arch | None = typer.Option(
        None,
        help=f"Classifier, a torchvision network: {', '.join(CLASSIFIERS)} (every recipe's is resnet18, the study's).",
    ),
    steps: int | None = typer.Option(
        None, min=1, help="Optimiser steps: the same for every classifier, whatever its stores' sizes."
    ),
    batch_size: int | None = typer.Option(None, min=2, help="Images per step."),
    real_batch: int | None = typer.Option(None, min=1, help="Mixed rows: real images per step, the rest synthetic."),
    mix: Mix | None = typer.Option(
        None,
        help=f"{', '.join(MIXES)}: auto mixes --real-batch real images (default half) and the rest synthetic when "
        "the stores hold both kinds; balanced insists; concat draws from the union.",
    ),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    weight_decay: float | None = typer.Option(None, min=0, help="Weight decay."),
    warmup_steps: int | None = typer.Option(None, min=0, help="Linear warm-up steps (schedule warmup-cosine)."),
    step_every: int | None = typer.Option(
        None, min=1, help="Steps between the learning rate's drops (schedule step, the study's recipe)."
    ),
    evals: int | None = typer.Option(
        None, min=0, help="Times to score the --test store during training (evenly spaced, the last at the end)."
    ),
    augment: Augment | None = typer.Option(None, help=f"{', '.join(AUGMENTS)}."),
    per_class: int | None = typer.Option(
        None, min=1, help="Use a seeded, class-balanced subset of N images per class of each store."
    ),
    image_size: int | None = typer.Option(
        None,
        min=8,
        help="Train at this size (default: the recipe's, else the first store's own); up to 64 px the CIFAR stem, "
        "above it the ImageNet stem.",
    ),
    seed: list[int] = typer.Option(
        [],
        min=0,
        help="Seed of the initialisation, the order and the augmentation (default 0). Repeat it to train one "
        f"classifier per seed. {SEED_RANGE}",
    ),
    test: str | None = typer.Option(
        None,
        help=f"A real test store (name or path) to score during training (--evals times), or none. Default: "
        f"data/{TEST_STORE}.h5 when it exists and has the training stores' classes; else a note says nothing is "
        "scored, and evals 0 is recorded. A named store of other classes is an error; with --evals 0 no test store "
        "is read.",
    ),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the models (faster on GPU after a warm-up)."),
    shard: str = typer.Option(
        "", help="Train only shard i/n of the classifiers, e.g. 0/4; or auto: the shard torchrun or SLURM gives."
    ),
    device: Device = AUTO,
    memory_limit: str | None = typer.Option(
        None,
        help="Image memory to hold on the device, e.g. 2GB (default $SYNTHKIT_MEMORY_LIMIT, else half the free GPU "
        "memory or half the available RAM); larger sets stream from the stores.",
    ),
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Train classifiers (ResNet-18 unless --arch says otherwise) on any mix of real and synthetic stores with the
    same classes, for a recipe's number of steps."""
    from .config import TrainConfig
    from .evaluation import classifier_line
    from .paths import optional_store, store_paths
    from .training import check_config, shown_settings, train_sharded

    config = TrainConfig.from_recipe(
        recipe,
        arch=arch,
        steps=steps,
        batch_size=batch_size,
        real_batch=real_batch,
        mix=mix,
        lr=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        step_every=step_every,
        evals=evals,
        augment=augment,
        per_class=per_class,
        image_size=image_size,
        compile=compile or None,
    )
    check_config(config)
    if show:
        typer.echo(f"recipe {config.recipe} (synthkit/config.py RECIPES), resolved:")
        for key, value, source in shown_settings(config, [store_paths(d) for d in data]):
            typer.echo(f"  {key:<16}{value!s:<20}{source}")
        return
    for name in ("data", "out"):
        if ctx.params.get(name) in (None, []):  # an empty --out "" is an input mistake, refused further on
            raise click.MissingParameter(ctx=ctx, param_hint=f"'--{name}'", param_type="option")
    test_path, test_default = optional_store(test, TEST_STORE)
    options = {"evals": evals, "warmup_steps": warmup_steps, "step_every": step_every}
    given = {k for k, v in options.items() if v is not None}
    mine, metas = train_sharded(
        [store_paths(d) for d in data],
        out,
        seed,
        config,
        test=test_path,
        given=given,
        shard=shard,
        device=device,
        overwrite=overwrite,
        resume=resume,
        memory_limit=memory_limit,
        say=note,
        test_default=test_default,
    )
    for job, meta in zip(mine.items, metas):
        typer.echo(f"{job.out}: {classifier_line(meta)}")
    if mine.shard and metas:
        typer.echo(
            f"shard {mine.shard}: trained classifiers {mine.first + 1}-{mine.stop} of {mine.total} on {mine.device}"
        )


@command(app)
def evaluate(
    model: list[Path] = typer.Option(..., help="Classifier(s) to score (repeat --model)."),
    test: str = typer.Option(TEST_STORE, help="The real test store (name or path)."),
    out: Path | None = results_folder("Folder for accuracy.csv, accuracy.md and confusion/*.png."),
    results: ResultsAlias = None,
    batch_size: int = typer.Option(EVAL.batch_size, min=1, help="Images per forward pass."),
    device: Device = AUTO,
    memory_limit: str | None = typer.Option(
        None,
        help="Test images to hold on the device at once, e.g. 2GB (default $SYNTHKIT_MEMORY_LIMIT, else half the "
        "free GPU memory or RAM); the store is read in chunks of that size.",
    ),
) -> None:
    """Score classifiers on a real test store with their classes: the accuracy table, per-class accuracy, confusion
    figures."""
    from .evaluation import ACCURACY_COLUMNS, TERMINAL_COLUMNS, group_rows
    from .evaluation import evaluate as evaluate_models
    from .paths import ACCURACY_CSV, ACCURACY_MD, CONFUSION_DIR, store_path
    from .tables import pick, rich_table

    results = results or out or RESULTS_DIR
    rows = evaluate_models(
        model, store_path(test), results, device=device, batch_size=batch_size, memory_limit=memory_limit
    )
    title = f"test accuracy on {rows[0]['test_images']} real test images ({rows[0]['test']})"
    Console().print(rich_table(pick(ACCURACY_COLUMNS, TERMINAL_COLUMNS), group_rows(rows), title))
    typer.echo(
        f"one row per classifier and test store in {results / ACCURACY_CSV}; table in {results / ACCURACY_MD}; "
        f"figures in {results / CONFUSION_DIR}/"
    )


model_app = typer.Typer(
    cls=Group,
    help="The generators synthkit builds: train the miniature (model train; the shipped one is --model mini), or "
    "random-weight pipelines for tests and benchmarks (model tiny, tiny-blip, random).",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


def _tiny_command(name: str, folder: Path, what: str, note: str, build: str) -> None:
    """`synthkit model tiny|tiny-blip`: one command shape for the small random-weight models built offline."""

    @command(model_app, name, help=f"Build a small random-weight {what} offline (for tests, demos and smoke tests).")
    def tiny_command(
        out: Path = typer.Option(folder, help=f"Folder to write the {what} to."),
        seed: Annotated[int, seed_option("Seed of the random weights.")] = SEED,
        overwrite: Overwrite = False,
    ) -> None:
        import importlib

        module, function = build.rsplit(".", 1)
        getattr(importlib.import_module(module, __package__), function)(out, seed=seed, overwrite=overwrite)
        typer.echo(f"wrote {out} (random weights: {note})")


_tiny_command(
    "tiny",
    MODELS_DIR / "tiny-sd",
    "Stable Diffusion pipeline",
    "it makes noise, not pictures",
    ".diffusion.build_tiny_pipeline",
)
_tiny_command(
    "tiny-blip",
    MODELS_DIR / "tiny-blip",
    "BLIP captioner",
    "its captions are random words",
    ".captions.build_tiny_captioner",
)


@command(model_app, "train")
def model_train(
    data: str = typer.Option(REAL_STORE, help="Store to learn from (name or path), e.g. CIFAR-10's training set."),
    out: Path = typer.Option(MODELS_DIR / "mini-sd", help="Folder to write the diffusers pipeline to."),
    vae_steps: int = typer.Option(MINI.vae_steps, min=1, help="Stage 1: VAE steps."),
    vae_batch_size: int = typer.Option(MINI.vae_batch_size, min=1, help="Stage 1: images per VAE step."),
    steps: int = typer.Option(MINI.steps, min=1, help="Stage 2: UNet and text-encoder steps."),
    batch_size: int = typer.Option(MINI.batch_size, min=1, help="Stage 2: latents per step."),
    lr: float = typer.Option(MINI.lr, help="Stage 2: peak AdamW learning rate (warm-up, then cosine to a tenth)."),
    warmup_steps: int = typer.Option(MINI.warmup_steps, min=0, help="Steps of linear learning-rate warm-up."),
    ema: float = typer.Option(MINI.ema, help="Stage 2: decay of the weights' moving average that ships."),
    vae_lr: float = typer.Option(MINI.vae_lr, help="Stage 1: peak AdamW learning rate."),
    template: str = typer.Option(MINI.template, help="The class prompt it learns, with {class}."),
    uncond_prob: float = typer.Option(MINI.uncond_prob, help="Share of steps with the empty prompt (for guidance)."),
    width: int = typer.Option(
        MINI.unet_channels[0], min=32, help="UNet width: its three levels have WIDTH, 2 WIDTH and 2 WIDTH channels."
    ),
    vae_width: int = typer.Option(
        MINI.vae_channels[0], min=16, help="VAE width: its three levels have VAE_WIDTH, 2 and 2 VAE_WIDTH channels."
    ),
    latent_channels: int = typer.Option(MINI.latent_channels, min=1, help="Channels of the latents (SD's 4)."),
    preview_every: float = typer.Option(
        MINI.preview_every, min=0, help="Seconds between preview grids (OUT.preview.png, a row per class); 0: none."
    ),
    instance_share: float = typer.Option(
        MINI.instance_share,
        help="Stage 2: share of each batch conditioned on an instance code in DI's format (an encoder's code of the "
        "row's own latent) instead of a prompt, so that Diffusion Inversion can land; 0: prompts only.",
    ),
    code_dim: int = typer.Option(MINI.code_dim, min=1, help="Stage 2: the instance encoder's last hidden width."),
    code_noise: float = typer.Option(
        MINI.code_noise, help="Stage 2: instance codes get noise of a std drawn in [CODE_NOISE_MIN, CODE_NOISE]."
    ),
    code_noise_min: float = typer.Option(MINI.code_noise_min, help="Stage 2: the least noise on an instance code."),
    start_from: str = typer.Option(
        None,
        help="A trained miniature (folder, or mini): keep its VAE (no stage 1) and start the UNet and text encoder "
        "from its weights.",
    ),
    seed: Annotated[int, seed_option("Seed of the weights, the batches and the noise.")] = SEED,
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Train a miniature Stable Diffusion on a store, in SD's own format: VAE first, then UNet and text encoder on
    class prompts. It loads as SD loads (--model FOLDER); the one trained on CIFAR-10 ships as --model mini."""
    from dataclasses import replace

    from .minisd import train_mini
    from .paths import store_path

    config = replace(
        MINI,
        vae_steps=vae_steps,
        vae_batch_size=vae_batch_size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        ema=ema,
        vae_lr=vae_lr,
        template=template,
        uncond_prob=uncond_prob,
        unet_channels=(width, 2 * width, 2 * width),
        vae_channels=(vae_width, 2 * vae_width, 2 * vae_width),
        latent_channels=latent_channels,
        preview_every=preview_every,
        instance_share=instance_share,
        code_dim=code_dim,
        code_noise=code_noise,
        code_noise_min=code_noise_min,
        start_from=start_from,
        seed=seed,
    )
    record = train_mini(
        store_path(data), out, config, device=device, overwrite=overwrite, resume=resume, say=typer.echo
    )
    typer.echo(
        f"{out}: {record['images']} images of {len(record['classes'])} classes at {record['image_size']} px, "
        f"VAE PSNR {record['final_vae_psnr']:.2f} dB (training), {record['seconds'] / 60:.1f} min on "
        f"{record['machine']}"
    )


@command(model_app, "random")
def model_random(
    out: Path = typer.Option(..., help="Folder to write the diffusers pipeline to (about 2 GB in fp16)."),
    like: Like = typer.Option(
        Like(LIKES[0]), help="Architecture whose exact shapes to copy: sd15 (Stable Diffusion 1.5)."
    ),
    seed: Annotated[int, seed_option("Seed of the random weights.")] = SEED,
    overwrite: Overwrite = False,
) -> None:
    """Build a full-size random-weight Stable Diffusion pipeline offline (for smoke tests and benchmarks at real
    scale)."""
    import time

    from .diffusion import build_random_pipeline, folder_bytes, like_spec, parameter_counts

    like_spec(like)
    started = time.perf_counter()
    build_random_pipeline(out, like=like, seed=seed, overwrite=overwrite)
    counts = {k: f"{v / 1e6:.1f}M" for k, v in parameter_counts(out).items()}
    typer.echo(
        f"wrote {out}: {like}-shaped, UNet {counts['unet']}, text encoder {counts['text_encoder']}, "
        f"VAE {counts['vae']} parameters, {folder_bytes(out) / 1e9:.2f} GB, {time.perf_counter() - started:.0f} s "
        "(random weights: it makes noise, not pictures)"
    )


@command(app)
def invert(
    class_: str = typer.Option(..., "--class", help="Class name, comma-separated names, or all."),
    data: str = typer.Option(REAL_STORE, help="Real store to invert (name or path)."),
    out: Path = typer.Option(
        ...,
        help="Embeddings file to write, e.g. models/inv/airplane.safetensors (and its preview, "
        "models/inv/airplane.preview.png).",
    ),
    model: str = typer.Option(DEFAULT_MODEL, help=f"The Stable Diffusion model: {MODEL_KINDS}."),
    tokens: int = typer.Option(INV.tokens, min=1, help="Tokens per learned embedding."),
    resolution: int | None = typer.Option(
        INV.resolution,
        help="Images are resized (PIL bicubic, as the official code) to this size; a multiple of 8 (default: 128, the "
        "official code's, or the model's own size when smaller).",
    ),
    lr: float = typer.Option(INV.lr, help="AdamW learning rate."),
    weight_decay: float = typer.Option(
        INV.weight_decay, help="AdamW weight decay (applied to the whole group every step, as the official code)."
    ),
    group_size: int = typer.Option(
        INV.group_size,
        min=1,
        help="Images per (class-pure) group; each group has its own AdamW, and its table starts uniform in "
        "+-1/sqrt(group size).",
    ),
    batch_size: int = typer.Option(
        INV.batch_size, min=1, help="Images of a group per AdamW step (fixed, unshuffled batches as the official code)."
    ),
    updates: int = typer.Option(
        INV.updates,
        min=1,
        help=f"Gradient updates per image (epochs). The default {INV.updates} is the official scripts' (train_steps "
        f"{INV.updates}, loaded for CIFAR as learned_embeds-steps-{INV.updates * INV.steps_per_update()}): with "
        f"groups of {INV.group_size} at batch {INV.batch_size}, {INV.updates * INV.steps_per_update()} AdamW steps "
        "per group.",
    ),
    chunk_groups: int = typer.Option(
        INV.chunk_groups,
        min=1,
        help="Groups stepped together in one forward pass (the unit of sharding); does not change the result.",
    ),
    precision: Precision = typer.Option(
        Precision(INV.precision),
        help="fp32 (the official code's; TF32 matmuls on CUDA) or bf16 (UNet and VAE weights in bfloat16: faster on "
        "GPUs, embeddings and AdamW stay fp32).",
    ),
    seed: Annotated[int, seed_option("Seed of the initial tables, latent samples, noise and timesteps.")] = INV.seed,
    checkpoint_every: int = typer.Option(
        INVERT_JOB.checkpoint_every, min=1, help="Save resumable state about every K steps."
    ),
    preview_every: int = typer.Option(
        INVERT_JOB.preview_every,
        min=0,
        help="Redraw OUT's .preview.png (real images beside DDIM samples of their embeddings, and the loss curve) "
        "every K updates; also drawn at the start and the end (0: no preview).",
    ),
    shard: Shard = "",
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Diffusion Inversion: learn a conditioning embedding per real image with the diffusion model frozen, as the
    official code."""
    from .checkpoint import read_meta
    from .inversion import run_invert, summary_line
    from .paths import store_path

    config = config_of(InversionConfig, locals())
    out = run_invert(
        store_path(data),
        out,
        class_,
        model,
        config,
        device=device,
        shard=shard,
        checkpoint_every=checkpoint_every,
        preview_every=preview_every,
        overwrite=overwrite,
        resume=resume,
        say=typer.echo,
    )
    typer.echo(f"{out}: {summary_line(read_meta(out))}")


@command(app)
def sample(
    out: Path = typer.Option(..., help="Store to write, e.g. data/sd.h5 or data/inv.h5."),
    prompt: list[str] = typer.Option(
        [], help='Prompt template(s) with {class}, e.g. "a photo of a {class}" (repeatable).'
    ),
    prompt_file: Path | None = typer.Option(None, help="File of templates, one per line."),
    prompt_from: str | None = typer.Option(
        None,
        help="Prompt mode: each --init image's own text as its prompt, from this text column of the init store "
        "(caption, made by synthkit caption): the original study's SD row.",
    ),
    per_class: int = typer.Option(PROMPT.per_class, min=1, help="Prompt mode: images per class."),
    classes: str | None = typer.Option(
        None,
        help="Prompt mode: comma-separated class names, or a store whose classes to use (default: the --init "
        "store's, else CIFAR-10's).",
    ),
    negative: str = typer.Option("", help="Prompt mode: negative prompt."),
    init: str | None = typer.Option(None, help="Prompt mode: img2img from this real store (name or path)."),
    strength: float = typer.Option(PROMPT.strength, help="img2img: share of the schedule re-noised (0-1]."),
    embeddings: list[Path] = typer.Option(
        [],
        help="DI mode: embeddings file(s) from synthkit invert (repeatable; shell globs work). Give every class's "
        "file in one run: groups stay apart and the default unconditional input mixes the classes.",
    ),
    only: str | None = typer.Option(
        None,
        help="DI mode: sample only the embeddings of this store's images: the inverted store, or a subset of it made "
        "by synthkit subset (partners, groups and the unconditional mean come from its images alone).",
    ),
    per_image: int = typer.Option(DI.per_image, min=1, help="DI mode: samples per learned embedding."),
    interp: float = typer.Option(
        DI.interp, help="DI mode: alpha, interpolation towards a partner drawn from the image's own group (same class)."
    ),
    noise: float = typer.Option(DI.noise, help="DI mode: lambda, scale of the Gaussian perturbation."),
    eta: float = typer.Option(
        DI.eta,
        min=0,
        help="DI mode: eta of a scheduler whose step takes it (DDIM: 1 adds fresh noise every step, 0 is "
        "deterministic); the official pipeline passes 1, which SD 1.x's own PNDM ignores.",
    ),
    uncond: Uncond = typer.Option(
        Uncond(DI.uncond),
        help=f"DI mode: unconditional input of guidance: {', '.join(UNCONDS)}. mixed = the mean of every loaded "
        "embedding, all classes (the official code's class-mixed group mean); group = the mean of the image's "
        "class-pure group; empty = the empty prompt.",
    ),
    model: str | None = typer.Option(
        None, help=f"The Stable Diffusion model (default: {DEFAULT_MODEL}, or the embeddings' model): {MODEL_KINDS}."
    ),
    guidance: float | None = typer.Option(
        None, help=f"Classifier-free guidance (default {PROMPT.guidance} for prompts, {DI.guidance} for DI)."
    ),
    steps: int | None = typer.Option(
        None, min=1, help=f"Sampling steps (default {PROMPT.steps} for prompts, {DI.steps} for DI)."
    ),
    scheduler: Scheduler = typer.Option(
        Scheduler(SAMPLING.scheduler), help="model (the checkpoint's own, as the official code), ddim, dpm++ or pndm."
    ),
    resolution: int | None = typer.Option(
        None, help="Generation size (default: the model's, or the inversion's for DI)."
    ),
    save_size: int | None = typer.Option(
        None,
        help="Store images resized (PIL bicubic) to this size (default: prompts keep the generation size; DI the "
        "size of the images it inverted).",
    ),
    batch_size: int = typer.Option(SAMPLING.batch_size, min=1, help="Images per batch."),
    seed: Annotated[int, seed_option("Seed of every random choice (each sample has its own, derived from it).")] = SEED,
    dtype: Dtype = typer.Option(Dtype(SAMPLING.dtype), help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    shard: Shard = "",
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Generate images from class prompts (optionally img2img), or from learned DI embeddings (--embeddings)."""
    from .paths import store_path
    from .sampling import SamplingConfig, run_sample

    config = config_of(SamplingConfig, locals())
    out = run_sample(
        out,
        templates=prompt,
        prompt_file=prompt_file,
        embeddings=embeddings,
        only=store_path(only) if only else None,
        classes=classes,
        per_class=per_class,
        negative=negative,
        init=store_path(init) if init else None,
        strength=strength,
        di=DIConfig(per_image=per_image, interp=interp, noise=noise, uncond=uncond, eta=eta),
        config=config,
        model=model,
        device=device,
        shard=shard,
        overwrite=overwrite,
        resume=resume,
        say=typer.echo,
        prompt_from=prompt_from,
    )
    _print_store_line(out)


@command(app)
def gradcam(
    model: list[Path] = typer.Option(..., help="Classifier(s) to explain (repeat --model)."),
    data: str = typer.Option(TEST_STORE, help="Store of real images to explain them on (name or path)."),
    out: Path = typer.Option(
        RESULTS_DIR / GRADCAM_DIR, help="Folder for gradcam_grid.png, per_image.csv and summary.json."
    ),
    n: int = typer.Option(GRADCAM.n, min=1, help="Images (a seeded random pick, the same for every model)."),
    layer: str | None = typer.Option(
        GRADCAM.layer,
        help="Target layer, by the module name each classifier declares (default: its own, the first here): "
        + "; ".join(f"{name}: {', '.join(spec.cam_layers)}" for name, spec in CLASSIFIERS.items())
        + ". ResNet-18's layer3 (8x8 maps at 32 px) is the most faithful by ROAD (bench/README.md).",
    ),
    target: Target = typer.Option(Target(GRADCAM.target), help="Explain the true class or the predicted one."),
    seed: Annotated[int, seed_option("Seed of the image pick.")] = GRADCAM.seed,
    batch_size: int = typer.Option(GRADCAM.batch_size, min=1, help="Images per batch."),
    device: Device = AUTO,
) -> None:
    """Grad-CAM maps of classifiers on the same real images, with measures of how concentrated they are."""
    from .gradcam import GRID_FILE, TABLE_COLUMNS, agreement_lines, explain
    from .paths import SUMMARY_JSON, store_path
    from .tables import rich_table

    summary = explain(
        model, store_path(data), out, n=n, layer=layer, target=target, seed=seed, batch_size=batch_size, device=device
    )
    title = f"Grad-CAM ({summary['layer']}, {target} class) on {summary['images']} images of {summary['data']}: means"
    Console().print(rich_table(TABLE_COLUMNS, summary["models"].items(), title))
    for line in agreement_lines(summary):
        typer.echo(line)
    typer.echo(f"wrote {out}/{GRID_FILE}, per_image.csv, {SUMMARY_JSON}")


@command(app)
def vanish(
    data: list[str] = typer.Option(..., help="Store(s) to analyse (repeat --data)."),
    out: Path = typer.Option(RESULTS_DIR / VANISH_DIR, help="Folder for the CSV, summary, predictions and figures."),
    n: int = typer.Option(VANISH.n, min=1, help="Images per store (a seeded random pick)."),
    upsample: int | None = typer.Option(
        VANISH.upsample, min=1, help="Upsampling before line detection (default: shorter side to >= 256 px)."
    ),
    focal: float | None = typer.Option(
        VANISH.focal, help="Focal length in pixels (calibrated); default: estimated per image."
    ),
    seed: Annotated[int, seed_option("Seed of the image pick and of RANSAC.")] = VANISH.seed,
    sources: str | None = typer.Option(
        None,
        help="The real store the samples came from: for every store with a source_index column (DI, img2img), "
        "compare each sample's horizon and VPs with its source's.",
    ),
) -> None:
    """Line segments and vanishing points of stores, side by side (to score the detector itself: vanish-score)."""
    from .paths import store_path, store_paths
    from .tables import rich_table
    from .vanish import pair_line, run_vanish, store_table

    summary, pairs = run_vanish(
        store_paths(data),
        out,
        sources=store_path(sources) if sources else None,
        n=n,
        upsample=upsample,
        focal=focal,
        seed=seed,
    )
    Console().print(rich_table(*store_table(summary), f"line geometry per store ({summary['mode']}): median [q1, q3]"))
    for name, p in (pairs or {}).items():
        typer.echo(pair_line(name, p))
    typer.echo(f"wrote {out}/")


@command(app, "vanish-score")
def vanish_score(
    gt: Path = typer.Option(
        ...,
        help="A folder like York Urban's: images/ and gt.json; entries with only a horizon (no camera, no VPs) are "
        "scored uncalibrated.",
    ),
    out: Path = typer.Option(RESULTS_DIR / VANISH_GT_DIR, help="Folder for predictions.json and gt_scores.json."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N images."),
    seed: Annotated[int, seed_option("Seed of RANSAC.")] = VANISH.seed,
) -> None:
    """Score the vanishing-point detector against ground truth: horizon and VP AUCs, calibrated and not."""
    from .tables import rich_table
    from .vanish import GT_COLUMNS, evaluate_ground_truth, ground_truth_rows

    scores = evaluate_ground_truth(gt, out, limit=limit, seed=seed)
    title = f"vanishing points on {scores['images']} images of {gt}"
    Console().print(rich_table(GT_COLUMNS, ground_truth_rows(scores), title))
    if "note" in scores["calibrated"]:
        typer.echo(f"calibrated: {scores['calibrated']['note']}")
    typer.echo(f"wrote {out}/")


@command(app)
def fidelity(
    real: str = typer.Option(REAL_STORE, help="The real store every store is compared with (name or path)."),
    data: list[str] = typer.Option(..., help="Store(s) to judge (repeat --data)."),
    classifier: Path = typer.Option(
        ...,
        help="A classifier trained on real data: its pooled features (what its head sees), and its labels for "
        "agreement.",
    ),
    out: Path = typer.Option(
        RESULTS_DIR / FIDELITY_DIR, help="Folder for fidelity.csv, fidelity.md, fidelity.png, summary.json."
    ),
    per_class: int = typer.Option(
        FIDELITY.per_class,
        min=3,
        help="Images per class of every store (fewer if a store has fewer: all stores get the same).",
    ),
    k: int = typer.Option(FIDELITY.k, min=1, help="Nearest neighbours for precision, recall, density and coverage."),
    inception: Path | None = typer.Option(
        None, help="torch-fidelity's Inception weights (.pth) for FID and KID; default: torch's cache, if there."
    ),
    metric: Metric = typer.Option(Metric(FIDELITY.metric), help="The metric drawn per class in fidelity.png."),
    seed: Annotated[int, seed_option("Seed of the pick.")] = FIDELITY.seed,
    device: Device = AUTO,
) -> None:
    """Judge synthetic stores against real data: Fréchet distance, KID, precision/recall, density/coverage, label
    agreement."""
    from .fidelity import fidelity as score
    from .fidelity import overall, summary_line
    from .paths import store_path, store_paths

    rows = score(
        store_path(real),
        store_paths(data),
        classifier,
        out,
        per_class=per_class,
        k=k,
        seed=seed,
        inception=inception,
        metric=metric,
        device=device,
    )
    for row in overall(rows):
        typer.echo(summary_line(row))
    typer.echo(f"wrote {out}/fidelity.csv, fidelity.md, fidelity.png")


@command(app)
def judge(
    data: list[str] = typer.Option(
        ..., help="Store(s) to judge (names or paths; repeat --data or separate by commas)."
    ),
    model: str = typer.Option(
        "mini", help=f"The text-to-image model read as a classifier (default: the miniature): {MODEL_KINDS}."
    ),
    per_class: int = typer.Option(
        JUDGE.per_class, min=1, help="Images per class of each store (a seeded pick; all of a class that has fewer)."
    ),
    template: str | None = typer.Option(
        None,
        help=f"The prompt each class is asked with, with {{class}} (default: the one the model was trained with, as "
        f"its synthkit.json records it, else '{JUDGE.template}').",
    ),
    out: Path | None = typer.Option(None, help="Write the rows to this JSON file too (e.g. results/judge.json)."),
    seed: Annotated[int, seed_option("Seed of the pick and of the noise.")] = JUDGE.seed,
    device: Device = AUTO,
) -> None:
    """Share of each store's images that a text-to-image model, read as a zero-shot classifier, puts in their own
    class: whether synthetic images show what their labels say (a generator is lenient with its own prompt samples;
    the real store's share is the yardstick)."""
    from .judge import judge_stores, judged_line
    from .paths import store_paths

    rows = judge_stores(
        model, store_paths(data), per_class=per_class, seed=seed, device=device, out=out, template=template
    )
    for row in rows:
        typer.echo(judged_line(row, model))
    if out:
        typer.echo(f"wrote {out}")


@command(app, "filter")
def filter_command(
    data: str = typer.Option(..., help="Synthetic store to filter (name or path)."),
    classifier: Path = typer.Option(..., help="A classifier trained on real training data (never on test images)."),
    out: Path = typer.Option(..., help="Store to write, e.g. data/inv-kept.h5."),
    keep: float = typer.Option(FILTER.keep, help="Share of each class to keep, in (0, 1]."),
    by: Criterion = typer.Option(
        Criterion(FILTER.by), help=f"Ranking: {', '.join(FILTER_CRITERIA)} (see synthkit/filtering.py)."
    ),
    real: str | None = typer.Option(None, help="--by cam: real store giving each class's typical attention."),
    device: Device = AUTO,
    overwrite: Overwrite = False,
) -> None:
    """Keep the best share of each class of a synthetic store, by the real classifier's confidence, margin, Grad-CAM or
    geometry."""
    from .filtering import filter_store
    from .paths import store_path

    meta = filter_store(
        store_path(data),
        classifier,
        out,
        keep=keep,
        by=by,
        real=store_path(real) if real else None,
        device=device,
        overwrite=overwrite,
    )
    f = meta["filter"]
    typer.echo(f"kept {f['kept']} of {f['of']} images by {f['criterion']} (keep {keep} of each class)")
    _print_store_line(out)


@command(app)
def report(
    out: Path | None = results_folder(
        "Results folder (accuracy.csv, gradcam/, vanish/, grids/) to report, and README.md in it."
    ),
    results: ResultsAlias = None,
    models: Path = typer.Option(MODELS_DIR, help="Models folder."),
    data: Path = typer.Option(DATA_DIR, help="Stores folder."),
) -> None:
    """Write results/README.md: the accuracy table beside the original study's, provenance, samples, CAMs, geometry."""
    from .report import write_report

    typer.echo(f"wrote {write_report(results or out or RESULTS_DIR, models, data)}")


def main() -> None:
    """Console-script entry point."""
    app()
