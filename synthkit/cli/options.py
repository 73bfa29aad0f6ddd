"""Options many commands share, declared once: their types, help and defaults."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..classify.classifiers import CLASSIFIERS
from ..core.config import (
    AUGMENTS,
    DTYPES,
    EXPORT_FORMATS,
    FIDELITY_METRICS,
    FILTER_CRITERIA,
    GRADCAM_TARGETS,
    LIKES,
    MIXES,
    PRECISIONS,
    RECIPES,
    SCHEDULERS,
    SEED_MAX,
    SPLITS,
    UNCONDS,
    DIConfig,
    InversionConfig,
)
from ..core.paths import RESULTS_DIR

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


INV, DI = InversionConfig(), DIConfig()


MEMORY_HELP = (
    "Memory for decoded images, e.g. 512MB (default $SYNTHKIT_MEMORY_LIMIT, else half the available RAM): the "
    "source is read a file at a time, and decoded in windows of that size (an archive is read once per window)."
)
ImportMemory = Annotated[str | None, typer.Option(help=MEMORY_HELP)]


def config_of(cls: type, options: dict) -> Any:
    """A settings dataclass from the command's options of the same names (each field is an option)."""
    return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls)})
