"""The analyses' commands: gradcam, vanish, vanish-score, fidelity, judge, filter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..classify.classifiers import CLASSIFIERS
from ..core.config import (
    FIDELITY,
    FILTER,
    FILTER_CRITERIA,
    GRADCAM,
    JUDGE,
    REAL_STORE,
    TEST_STORE,
    VANISH,
)
from ..core.paths import FIDELITY_DIR, GRADCAM_DIR, RESULTS_DIR, VANISH_DIR, VANISH_GT_DIR
from .app import app, command, print_store_line
from .options import (
    AUTO,
    MODEL_KINDS,
    Criterion,
    Device,
    Metric,
    Overwrite,
    Target,
    seed_option,
)


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
    from ..analyse.gradcam import GRID_FILE, TABLE_COLUMNS, agreement_lines, explain
    from ..core.paths import SUMMARY_JSON, store_path
    from ..core.tables import rich_table

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
    from ..analyse.vanish import pair_line, run_vanish, store_table
    from ..core.paths import store_path, store_paths
    from ..core.tables import rich_table

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
    from ..analyse.vanish import GT_COLUMNS, evaluate_ground_truth, ground_truth_rows
    from ..core.tables import rich_table

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
    from ..analyse.fidelity import fidelity as score
    from ..analyse.fidelity import overall, summary_line
    from ..core.paths import store_path, store_paths

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
    from ..analyse.judge import judge_stores, judged_line
    from ..core.paths import store_paths

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
        Criterion(FILTER.by), help=f"Ranking: {', '.join(FILTER_CRITERIA)} (see synthkit/analyse/filtering.py)."
    ),
    real: str | None = typer.Option(None, help="--by cam: real store giving each class's typical attention."),
    device: Device = AUTO,
    overwrite: Overwrite = False,
) -> None:
    """Keep the best share of each class of a synthetic store, by the real classifier's confidence, margin, Grad-CAM or
    geometry."""
    from ..analyse.filtering import filter_store
    from ..core.paths import store_path

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
    print_store_line(out)
