"""`synthkit report`: results/README.md."""

from __future__ import annotations

from pathlib import Path

import typer

from ..core.paths import DATA_DIR, MODELS_DIR, RESULTS_DIR
from .app import app, command
from .options import (
    ResultsAlias,
    results_folder,
)


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
    from ..report.results import write_report

    typer.echo(f"wrote {write_report(results or out or RESULTS_DIR, models, data)}")
