"""The classifiers' commands: train, evaluate."""

from __future__ import annotations

from pathlib import Path

import click
import typer
from rich.console import Console

from ..classify.classifiers import CLASSIFIERS
from ..core.config import (
    AUGMENTS,
    DEFAULT_RECIPE,
    EVAL,
    MIXES,
    RECIPES,
    TEST_STORE,
)
from ..core.paths import RESULTS_DIR
from .app import app, command, note
from .options import (
    AUTO,
    SEED_RANGE,
    Arch,
    Augment,
    Device,
    Mix,
    Overwrite,
    Recipe,
    ResultsAlias,
    Resume,
    results_folder,
)


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
        help=f"Training recipe (synthkit/core/config.py): {', '.join(RECIPES)}. di: the official evaluation (50,000 "
        "steps at batch 128); study: the original study's; quick: a few hundred steps for CPUs. Every option below "
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
    from ..classify.evaluation import classifier_line
    from ..classify.training import check_config, shown_settings, train_sharded
    from ..core.config import TrainConfig
    from ..core.paths import optional_store, store_paths

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
        typer.echo(f"recipe {config.recipe} (synthkit/core/config.py RECIPES), resolved:")
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
    from ..classify.evaluation import ACCURACY_COLUMNS, TERMINAL_COLUMNS, group_rows
    from ..classify.evaluation import evaluate as evaluate_models
    from ..core.paths import ACCURACY_CSV, ACCURACY_MD, CONFUSION_DIR, store_path
    from ..core.tables import pick, rich_table

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
