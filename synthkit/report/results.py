"""`synthkit report`: results/README.md, written only from what is in results/, models/ and data/."""

from __future__ import annotations

import datetime as _dt
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import CIFAR10_CLASSES
from ..core.errors import UserError
from ..core.jobs import check_destination
from ..core.meta import model_note
from ..core.paths import (
    ACCURACY_CSV,
    CONFUSION_DIR,
    DATA_DIR,
    FIDELITY_DIR,
    GEOMETRY_DIR,
    GRADCAM_DIR,
    GRIDS_DIR,
    GT_SCORES_JSON,
    JUDGE_JSON,
    MODELS_DIR,
    PAIRS_JSON,
    RESULTS_DIR,
    SUMMARY_JSON,
    SWEEP_DIR,
    VANISH_DIR,
    VANISH_YUD_DIR,
    preview_path,
)
from ..core.version import __version__
from ..io.checkpoint import read_meta

# The original study's reported test accuracies (CIFAR-10, ResNet-18), by synthkit's store names.
STUDY_ARCH = "resnet18"  # the classifier the study trained: its figures stand beside that architecture's rows only
STUDY = {
    "real": ("real", 81.80),
    "inv": ("Diffusion Inversion", 78.63),
    "sd": ("Stable Diffusion prompts", 52.57),
    "real+inv": ("real + Diffusion Inversion", 86.14),
    "real+sd": ("real + Stable Diffusion", 83.94),
}


# Rows this toolkit adds: the DI store filtered by the real classifier (synthkit filter), alone and with real data.
ADDED = {"inv-kept": "Diffusion Inversion, filtered", "real+inv-kept": "real + Diffusion Inversion, filtered"}
ORDER = ["real", "inv", "inv-kept", "sd", "real+inv", "real+inv-kept", "real+sd"]


def _store_meta(path: Path) -> dict[str, Any] | None:
    from ..io.store import Store

    if not path.exists():
        return None
    with Store(path) as store:
        return {
            "meta": store.meta,
            "images": len(store),
            "size": store.image_shape[0],
            "fingerprint": store.fingerprint,
            "classes": store.classes,
        }


PROTOCOL_NOTE = [
    "**How the original study's figures were obtained, and what synthkit does instead.** The study's classifier "
    "(`cifake-classifier.py` in PankajGadhwal/Fixing-the-Synthetic-Data-for-Representational-Learning) is "
    "torchvision's "
    "ResNet-18 at 224 px, Adam 1e-3 with StepLR(30 epochs, 0.1), label smoothing 0.1, 100 epochs at batch 32, the "
    "best-validation epoch kept; its DI and SD rows were scored on the DI and SD versions of the test images "
    "(`test_di`, `test_sd`), not on real ones, and the script trains no mixed row. It trains on 70% of its real "
    "folder (15% validate, 15% test), and the flip, rotation and colour jitter it declares are in effect not applied: "
    "it sets each data set's transform to the test one before training, and its training subsets read through it. "
    "synthkit scores every row on the "
    "same "
    "real test images, trains every row for the same number of steps under one recipe (`di` by default: the Diffusion "
    "Inversion paper's evaluation, `di/train_net.py`; `study` is the study's recipe), and reports the final accuracy, "
    "with the best of the evaluations during training beside it, labelled as selected on the test set.",
    "",
]


def from_summary(*name: str) -> Callable:
    """Decorator of a section drawn from a result's JSON summary (the parts of its path within results/): the section
    gets the summary, and is left out when that result was not made."""

    def decorate(section: Callable[[Path, dict[str, Any]], list[str]]) -> Callable[[Path], list[str]]:
        @functools.wraps(section)
        def wrapper(results: Path) -> list[str]:
            path = results.joinpath(*name)
            return section(results, json.loads(path.read_text())) if path.exists() else []

        return wrapper

    return decorate


def _our_rows(results: Path, models: Path) -> list[dict[str, str]]:
    """The latest evaluation of each classifier directly in `models` that still exists."""
    from ..classify.evaluation import read_rows

    csv_path = results / ACCURACY_CSV
    if not csv_path.exists():
        return []
    return [
        r
        for r in read_rows(csv_path)
        if Path(r["model"]).exists() and Path(r["model"]).resolve().parent == models.resolve()
    ]


def spread_notes(groups: list[dict[str, Any]]) -> list[str]:
    """Which rows differ by less than their spread (the sum of their standard deviations), and a word when there is
    no spread to judge by."""
    if all(g["n"] < 2 for g in groups):
        return [
            "One seed per row: no spread was measured, so a difference of a point or two cannot be told from "
            'noise; `make reproduce SEEDS="0 1 2"` trains every row once per seed.'
        ]
    close = [
        f"{a['training_data']} – {b['training_data']} ({100 * abs(a['mean'] - b['mean']):.2f})"
        for i, a in enumerate(groups)
        for b in groups[i + 1 :]
        if a["n"] > 1 and b["n"] > 1 and abs(a["mean"] - b["mean"]) < a["std"] + b["std"]
    ]
    if not close:
        return ["Every two rows with several seeds differ by more than the sum of their standard deviations."]
    return [
        "These pairs of rows differ by less than their spread (the sum of their standard deviations; the difference "
        "in points in brackets), so this run cannot order them: " + "; ".join(close) + "."
    ]


# "DI alone comes within a few points of real": a few is this many points of test accuracy.
A_FEW_POINTS = 5.0


@dataclass(frozen=True)
class Claim:
    """One of the study's claims as two rows of the accuracy table: `row` scores more than `other` less `slack`
    points (slack 0: it beats it; slack 5: it falls short of it by less than 5 points)."""

    words: str
    row: str
    other: str
    slack: float = 0.0


CLAIMS = (
    Claim("real+DI beats real", "real+inv", "real"),
    Claim(f"DI alone comes within {A_FEW_POINTS:g} points of real", "inv", "real", A_FEW_POINTS),
    Claim("DI beats prompt samples", "inv", "sd"),
)


def claim_verdict(claim: Claim, groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A claim read off seed groups (evaluation.group_rows), in points: `margin` (the row's mean plus the slack less
    the other's: above 0 where the means say it held) against `spread` (the sum of the two rows' standard deviations,
    as spread_notes judges rows). The verdict is "held" or "not held" when the margin exceeds the spread one way or
    the other, "too close to call" within it, and "not called" with one seed (no spread) or when a row is several
    groups (classifiers made differently). None when either row is missing."""
    found = {name: [g for g in groups if g["training_data"] == name] for name in (claim.row, claim.other)}
    if not all(found.values()):
        return None
    if any(len(g) > 1 for g in found.values()):
        return {"verdict": "not called", "why": "a row is several groups of classifiers made differently"}
    a, b = found[claim.row][0], found[claim.other][0]
    margin = 100 * (a["mean"] - b["mean"]) + claim.slack
    spread = 100 * (a["std"] + b["std"])
    if a["n"] < 2 or b["n"] < 2:
        verdict = "not called"
    elif abs(margin) > spread:
        verdict = "held" if margin > 0 else "not held"
    else:
        verdict = "too close to call"
    why = "a row has one seed: its spread is unknown" if verdict == "not called" else ""
    return {"verdict": verdict, "why": why, "margin": margin, "spread": spread, "row": a, "other": b}


def claims_section(groups: list[dict[str, Any]], cifar: bool = True) -> list[str]:
    """A line per claim of the study (CLAIMS) that this table has the rows for: whether it held here, with its margin
    in points and in the rows' spreads, and (on CIFAR-10) the original study's margin beside it."""
    from ..classify.evaluation import mean_std

    lines = []
    for claim in CLAIMS:
        v = claim_verdict(claim, groups)
        if v is None:
            continue
        head = f"- **{claim.words}** (`{claim.row}` against `{claim.other}`): "
        if "margin" not in v:
            lines.append(head + f"not called ({v['why']}).")
            continue
        allowed = f" (+ {claim.slack:g} allowed)" if claim.slack else ""
        why = f" ({v['why']})" if v["why"] else ""
        spread = (
            f"{v['margin'] / v['spread']:+.1f} times the rows' spread ({v['spread']:.2f} points)"
            if v["spread"] > 0
            else "and the rows have no spread"
        )
        row, other = v["row"], v["other"]
        reference = study_figure(row, cifar), study_figure(other, cifar)
        study = (
            f" In the original study: {reference[0] - reference[1] + claim.slack:+.2f}."
            if None not in reference
            else ""
        )
        lines.append(
            f"{head}**{v['verdict']}**{why} here. `{claim.row}` {mean_std(row)}% (n={row['n']}) against "
            f"`{claim.other}` {mean_std(other)}% (n={other['n']}): {100 * (row['mean'] - other['mean']):+.2f} "
            f"points{allowed}, a margin of {v['margin']:+.2f} points, {spread}.{study}"
        )
    if not lines:
        return []
    return [
        "## The study's claims, here",
        "",
        "Each claim read off the table above. It held (or did not) where its margin in test accuracy exceeds the two "
        "rows' spread, the sum of their standard deviations over seeds; within that spread it is too close to call, "
        f'and with one seed per row it is not called. "A few points" is {A_FEW_POINTS:g}.',
        "",
        *lines,
        "",
    ]


def accuracy_plot(fig, ax, out: Path, xlabel: str, title: str) -> Path:
    """The labels, grid and legend the report's accuracy figures share; saved to `out` and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (real test images)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def accuracy_curves(models: Path, order: dict[str, int]) -> list[tuple[str, list[int], np.ndarray]]:
    """Each seed group's test accuracy (%) against step, from the evaluations its classifiers recorded during
    training, as (legend label, steps, accuracies: a row per seed), in the table's order: the figure's data. Groups
    are named apart as evaluation.distinct_names names classifiers (the training data, then the architecture and
    the file name where those are shared), with their seed count."""
    from ..classify.evaluation import classifier_files, distinct_names, seed_group, training_data_name

    curves: dict[str, list[list[dict]]] = {}
    firsts: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in classifier_files(models):
        meta = read_meta(path)
        if meta.get("evals"):
            key = seed_group(meta)
            curves.setdefault(key, []).append(meta["evals"])
            firsts.setdefault(key, (path, meta))
    keys = sorted(curves, key=lambda k: (order.get(training_data_name(firsts[k][1]), len(order)), str(firsts[k][0])))
    runs = [[r for r in curves[k] if [e["step"] for e in r] == [e["step"] for e in curves[k][0]]] for k in keys]
    notes = [f"n={len(r)}" for r in runs]
    names = distinct_names([firsts[k][1] for k in keys], [firsts[k][0] for k in keys], notes=notes)
    return [
        (name, [e["step"] for e in r[0]], 100 * np.array([[e["accuracy"] for e in run] for run in r]))
        for name, r in zip(names, runs)
    ]


def accuracy_figure(models: Path, out: Path, order: dict[str, int]) -> Path | None:
    """Test accuracy against step for every row (the mean over its seeds, a band of ± one standard deviation), from
    accuracy_curves; None when no classifier scored a test store while training."""
    curves = accuracy_curves(models, order)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, steps, acc in curves:
        mean = acc.mean(0)
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
        if len(acc) > 1:
            std = acc.std(0, ddof=1)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return accuracy_plot(
        fig, ax, out, "training step", "Test accuracy during training (mean over seeds, band: ± 1 std)"
    )


def study_figure(group: dict[str, Any], cifar: bool = True) -> float | None:
    """The original study's figure for a seed group: only on CIFAR-10 and for a ResNet-18 (its classifier, whatever
    the stem), whose figures they are; None for any other row."""
    from ..classify.evaluation import arch_of_row

    if not cifar or not arch_of_row(group["rows"][0]).startswith(STUDY_ARCH):
        return None
    return STUDY.get(group["training_data"], (None, None))[1]


def study_columns(cifar: bool) -> list:
    """The report's accuracy columns: evaluation's, with each row's label in the study's words and the original
    study's figure beside ours (only for CIFAR-10 and ResNet-18 rows, whose figures they are)."""
    from ..classify.evaluation import ACCURACY_COLUMNS
    from ..core.tables import Column, pick

    def label(g: dict[str, Any]) -> str:
        name = g["training_data"]
        return f"{STUDY.get(name, (ADDED.get(name, name), None))[0]} (`{name}`)"

    def reference(g: dict[str, Any]) -> str:
        figure = study_figure(g, cifar)
        return f"{figure:.2f}" if figure is not None else "-"

    ours = pick(ACCURACY_COLUMNS, ("accuracy", "n", "best"))
    rest = pick(
        ACCURACY_COLUMNS, ("classifier", "recipe", "steps", "images_seen", "batch", "train_images", "test_images")
    )
    return [
        Column("training_data", "training data", label),
        *ours,
        Column("study", "original study %", reference, right=True),
        *rest,
    ]


def accuracy_section(results: Path, models: Path) -> list[str]:
    """The study-shaped table: our accuracy (mean ± std over seeds) beside the original study's, for the
    classifiers in models/, each row with its recipe, steps, images seen and batch composition."""
    from ..classify.evaluation import architecture_name, group_rows, record_of
    from ..core.tables import markdown_lines

    csv_path = results / ACCURACY_CSV
    if not csv_path.exists():
        return ["## Test accuracy", "", f"No evaluation yet ({csv_path} is missing): run `synthkit evaluate`.", ""]
    rows = _our_rows(results, models)
    order = {name: i for i, name in enumerate(ORDER)}
    groups = sorted(group_rows(rows), key=lambda g: (order.get(g["training_data"], len(order)), g["training_data"]))
    test = _store_meta(Path(rows[0]["test"])) if rows else None
    cifar = test is None or test["classes"] == list(CIFAR10_CLASSES)  # the study's figures are CIFAR-10's
    where = (
        "real CIFAR-10 test images"
        if cifar
        else f"real test images of `{rows[0]['test']}`, {len(test['classes'])} classes"
    )
    arch = architecture_name([record_of(Path(r["model"])) for r in rows])
    lines = [f"## Test accuracy ({arch}, {where})", ""] + markdown_lines(study_columns(cifar), groups)
    steps = {g["rows"][0].get("steps") for g in groups}
    lines += [
        "",
        f"Rows are the latest evaluation of each classifier in `{models}/`, from `{csv_path}`, grouped over seeds "
        "(n classifiers that differ only by their seed; ± is their standard deviation); every classifier is scored on "
        "the same real test store. "
        + (
            "Every row trained the same number of steps."
            if len(steps) == 1
            else f"**The rows trained different numbers of steps ({', '.join(sorted(map(str, steps)))}): "
            "they are not comparable.**"
        ),
    ]
    if groups:
        lines += [""] + spread_notes(groups)
    figure = accuracy_figure(models, results / "accuracy_steps.png", order)
    if figure is not None:
        lines += ["", "![test accuracy against step](accuracy_steps.png)"]
    lines += [""]
    if cifar:
        lines += ["The original study's figures are those it reported (CIFAR-10).", ""] + PROTOCOL_NOTE
    else:
        lines += ["The original study's figures are CIFAR-10's, so none is shown beside another data set.", ""]
    if any(g["training_data"] in ADDED for g in groups):
        lines += [
            "The filtered rows (`inv-kept`) train on the share of the DI store that the real-trained classifier "
            "ranks best in each class (`synthkit filter`); the study has no such row. They can show whether "
            "keeping the images a real-data model finds convincing helps; with a random-weight generator (noise) "
            "or a weak real classifier they can only show that the stage runs.",
            "",
        ]
    return lines + claims_section(groups, cifar)


def sweep_points(results: Path) -> dict[str, dict[float, list[float]]]:
    """The sweep's test accuracies (%): {row: {real images per class: [one per seed]}}, the row named by the kinds of
    its stores (real, inv, real+inv) and the size by the real images its training data drew on (for a DI store, the
    real images whose embeddings it sampled), from the sweep's classifiers and their evaluation."""
    from ..classify.evaluation import read_rows

    csv_path = results / SWEEP_DIR / ACCURACY_CSV
    points: dict[str, dict[float, list[float]]] = {}
    if not csv_path.exists():
        return points
    for r in read_rows(csv_path):
        if not Path(r["model"]).exists():
            continue
        meta = read_meta(r["model"])
        real = [s.get("real_images") for s in meta.get("sources", []) if s.get("real_images")]
        if not real:
            continue
        row = "+".join(s["kind"] for s in meta["sources"])
        per_class = max(real) / len(meta["classes"])
        points.setdefault(row, {}).setdefault(per_class, []).append(100 * float(r["accuracy"]))
    return points


def sweep_order(points: dict) -> list[str]:
    """real, then the synthetic rows, then the mixed ones."""
    return sorted(points, key=lambda r: (r.count("+"), r != "real", r))


def sweep_figure(points: dict[str, dict[float, list[float]]], out: Path) -> Path:
    """Test accuracy against real images per class (log axis): a line per row, the mean over seeds, a band of
    ± one standard deviation."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in sweep_order(points):
        sizes = sorted(points[row])
        mean = np.array([np.mean(points[row][n]) for n in sizes])
        std = np.array([np.std(points[row][n], ddof=1) if len(points[row][n]) > 1 else 0.0 for n in sizes])
        (line,) = ax.plot(sizes, mean, marker="o", label=f"{row} (n={min(len(points[row][k]) for k in sizes)} seeds)")
        ax.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    every = sorted({n for row in points.values() for n in row})
    ax.set_xticks(every, [f"{n:g}" for n in every])
    ax.minorticks_off()
    return accuracy_plot(
        fig,
        ax,
        out,
        "real images per class (log scale)",
        "Sample complexity: accuracy against real images per class (band: ± 1 std over seeds)",
    )


def real_equivalent(real: dict[float, list[float]], accuracy: float) -> str:
    """How many real images per class the real row needs to reach `accuracy`, read off its curve (made monotone,
    interpolated on the log axis); beyond its largest size, a lower bound."""
    import numpy as np

    sizes = sorted(real)
    curve = np.maximum.accumulate([np.mean(real[n]) for n in sizes])
    if accuracy <= curve[0]:
        return f"≤ {sizes[0]:g}"
    if accuracy > curve[-1]:
        return f"> {sizes[-1]:g}"
    return f"{float(np.exp(np.interp(accuracy, curve, np.log(sizes)))):.0f}"


def sweep_section(results: Path) -> list[str]:
    """The sample-complexity sweep (make sweep): its figure, a table of mean ± std per row and size, and how many
    real images alone would match each DI row."""
    import numpy as np

    points = sweep_points(results)
    if not points:
        return []
    figure = sweep_figure(points, results / SWEEP_DIR / "sweep.png")
    rows = sweep_order(points)
    sizes = sorted({n for row in rows for n in points[row]})
    cell = lambda v: (
        (f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f} ({len(v)})" if len(v) > 1 else f"{v[0]:.2f} (1)") if v else "–"
    )  # noqa: E731
    lines = [
        "## Sample complexity: accuracy against the number of real images",
        "",
        "`make sweep`: nested subsets of one real store (each smaller size inside every larger one), the largest "
        "inverted once; each size's DI store samples the embeddings of its own images only. Test accuracy % on the "
        "real test store, mean ± std (seeds).",
        "",
        "| real images per class | " + " | ".join(f"`{r}`" for r in rows) + " |",
        "|---:|" + "---:|" * len(rows),
    ]
    for n in sizes:
        lines.append(f"| {n:g} | " + " | ".join(cell(points[r].get(n, [])) for r in rows) + " |")
    if "real" in points:
        lines += [
            "",
            "Real images alone needed to match each DI row (read off the `real` curve): "
            + "; ".join(
                f"`{r}` at {n:g} per class ≈ {real_equivalent(points['real'], float(np.mean(points[r][n])))}"
                for r in rows
                if r != "real"
                for n in sorted(points[r])
            )
            + ".",
        ]
    return lines + ["", f"![sample complexity]({SWEEP_DIR}/{figure.name})", ""]


def store_accuracy(rows: list[dict[str, Any]]) -> tuple[dict[str, float], str]:
    """Each training store's mean test accuracy over the classifiers of one architecture, and its name: ResNet-18
    where there are any (the study's), else the first row's, so that other architectures never mix into a row."""
    from ..classify.evaluation import arch_of_row

    archs = [arch_of_row(r) for r in rows]
    arch = STUDY_ARCH if STUDY_ARCH in archs else (archs[0] if archs else "")
    scores: dict[str, list[float]] = {}
    for row, row_arch in zip(rows, archs):
        if row_arch == arch:
            scores.setdefault(row["training_data"], []).append(float(row["accuracy"]))
    return {name: sum(values) / len(values) for name, values in scores.items()}, arch


@from_summary(FIDELITY_DIR, SUMMARY_JSON)
def fidelity_section(results: Path, summary: dict[str, Any]) -> list[str]:
    """The fidelity table, and whether it orders the synthetic stores as their classifiers' accuracy does."""
    from ..analyse.fidelity import markdown_rows, overall
    from ..classify.evaluation import read_rows

    rows = overall(summary["rows"])
    lines = [
        "## Fidelity: synthetic stores against real data",
        "",
        f"Against `{summary['real']}` on {summary['per_class']} images per class of each store, k = {summary['k']} "
        f"(`synthkit fidelity`; per class in `{FIDELITY_DIR}/fidelity.csv`).",
        "",
        *markdown_rows(summary["rows"]),
    ]
    lines += ["", f"![fidelity]({FIDELITY_DIR}/fidelity.png)", ""]
    csv_path = results / ACCURACY_CSV
    accuracy, arch = store_accuracy(read_rows(csv_path)) if csv_path.exists() else ({}, "")
    ours = {
        r["store"]: r["frechet"]
        for r in rows
        if r["features"] == "classifier" and r["store"] in accuracy and r["store"] != "real"
    }
    if len(ours) >= 2:
        by_fidelity = sorted(ours, key=lambda name: ours[name])
        by_accuracy = sorted(ours, key=lambda name: -accuracy[name])
        verdict = "the same order" if by_fidelity == by_accuracy else "a different order"
        lines += [
            f"Does fidelity predict accuracy? Ranked by Fréchet distance (closest first): {', '.join(by_fidelity)}; "
            f"by the test accuracy of the {arch} classifiers trained on each store alone (mean over seeds): "
            f"{', '.join(by_accuracy)}. "
            f"In this run they give {verdict}.",
            "",
        ]
    return lines


def provenance_section(models: Path, data: Path) -> list[str]:
    """How each classifier and the stores it was trained on were made, from their metadata."""
    from ..classify.evaluation import classifier_files, classifier_line

    lines = ["## How each row was made", ""]
    for path in classifier_files(models):
        meta = read_meta(path)
        lines.append(f"- `{path}`: {classifier_line(meta)}")
        for source in meta.get("sources", []):
            lines.append(
                f"  - `{source['path']}`: {source['count']} images of kind `{source['kind']}`, fingerprint "
                f"`{source['fingerprint']}`"
            )
    stores = [data / f"{name}.h5" for name in ("real", "test", "sd", "inv")]
    lines += ["", "Stores:", ""]
    for store in stores:
        info = _store_meta(store)
        if info is None:
            continue
        meta = info["meta"]
        params = meta.get("params", {})
        keys = [
            k
            for k in (
                "per_class",
                "seed",
                "model",
                "templates",
                "init",
                "strength",
                "steps",
                "guidance",
                "resolution",
                "save_size",
                "per_image",
                "interp",
                "noise",
                "uncond",
            )
            if k in params
        ]
        detail = ", ".join(f"{k} {json.dumps(params[k])}" for k in keys)
        lines.append(
            f"- `{store}` ({meta.get('kind')}): {info['images']} images of {info['size']} px; {detail}; made by "
            f"`{meta.get('command')}`"
        )
    return lines + [""]


def generator_warning(data: Path) -> list[str]:
    """A plain statement when the synthetic stores came from a random-weight model, or from the miniature (then also
    what differs from the study)."""
    notes, minis, record = [], [], {}
    for name in ("sd", "inv"):
        info = _store_meta(data / f"{name}.h5")
        if info is None:
            continue
        model = info["meta"].get("params", {}).get("model") or info["meta"].get("model", "")
        note = model_note(model)
        if note.get("kind") in ("tiny-random", "random"):
            notes.append(f"`{data / name}.h5` (from `{model}`)")
        elif note.get("kind") == "mini":
            minis.append(f"`{data / name}.h5`")
            record = record or note
    if minis and not notes:
        return [
            "> **A miniature generator.** " + " and ".join(minis) + " came from synthkit's shipped miniature Stable "
            "Diffusion (`--model mini`: 32 px, trained by `synthkit model train` on CIFAR-10's training images), so "
            "its pictures show their classes, but it is far weaker than Stable Diffusion: the rows below show the "
            "study's method at work, not its numbers. Run `make reproduce MODEL=...` with a real checkpoint for those.",
            "",
            *mini_differences(record, _store_meta(data / "real.h5"), data / "real.h5"),
        ]
    if not notes:
        return []
    return [
        "> **These synthetic images are noise.** " + " and ".join(notes) + " came from a random-weight pipeline "
        "built by synthkit (`synthkit model tiny` or `synthkit model random`), so the synthetic rows below mean "
        "nothing "
        "except that the pipeline runs end to end. Run `make reproduce MODEL=...` with a real Stable Diffusion "
        "checkpoint for the study.",
        "",
    ]


def mini_differences(record: dict[str, Any], real: dict[str, Any] | None, real_path: Path) -> list[str]:
    """What differs from the study when the generator is the miniature, from its record (synthkit.json) and the real
    store's: what it learned (CIFAR-10's whole training split when its record says 50,000 images of CIFAR-10's
    classes, and then the real row's sources among them when the real store was cut from that split), and its size."""
    images, size = record.get("images"), record.get("image_size", 32)
    learned = f"all {images:,} images of `{record.get('data')}`" if images else f"`{record.get('data')}`"
    among, beyond = "", "the real row's images"
    if images == 50_000 and record.get("classes") == list(CIFAR10_CLASSES):
        learned += ", CIFAR-10's training set"
        if real is not None and real["meta"].get("params", {}).get("split") == "train":
            among = f", which `{real_path}` was drawn from (the real row's sources are among them)"
            beyond = f"the real row's {real['images'] // max(1, len(real['classes']))} per class"
    return [
        f"> **What differs from the study.** The miniature learned {learned}{among}, so its DI and prompt samples "
        f"carry knowledge of CIFAR-10 beyond {beyond}; the study's Stable Diffusion learned from web images "
        f"elsewhere, not from CIFAR-10's training set. Its images are {size} px, CIFAR-10's own size, where the "
        "study's Stable Diffusion generates at 512 px (DI inverts at 128 px) and its images are shrunk to train the "
        "classifiers.",
        "",
    ]


def sd_section(results: Path, data: Path, shown: int = 6) -> list[str]:
    """Which prompts, model and strength made the Stable Diffusion row, and a sheet of its first samples beside
    their source images and the prompts (for the study's row: each image's own caption)."""
    from ..io.figures import prompt_sheet, save_image
    from ..io.store import Store

    path = data / "sd.h5"
    if not path.exists():
        return []
    with Store(path) as sd:
        meta, p = sd.meta, sd.meta.get("params", {})
        rows = np.linspace(0, len(sd) - 1, min(shown, len(sd))).astype(int) if len(sd) else np.zeros(0, int)
        samples, prompts = (
            sd.images(rows),
            sd.column("prompt", rows) if "prompt" in sd.column_names else [""] * len(rows),
        )
        sources = sd.column("source_index", rows) if "source_index" in sd.column_names else np.full(len(rows), -1)
    init = Path(p["init"]) if p.get("init") else None
    source_images = [None] * len(rows)
    if init is not None and init.exists():
        with Store(init) as s:
            source_images = [s.images([int(i)])[0] if 0 <= i < len(s) else None for i in sources]
    how = (
        f"each init image's own `{p['prompt_from']}` as its prompt"
        if p.get("prompt_from")
        else "the template(s) " + ", ".join(f"`{t}`" for t in p.get("templates", []))
    )
    mode = f"img2img from `{init}` at strength {p.get('strength')}" if init else "text to image"
    lines = [
        "## The Stable Diffusion row: how its images were made",
        "",
        f"`{path}`: {mode}, {how}; model `{p.get('model')}`, guidance {p.get('guidance')}, {p.get('steps')} steps "
        f"(`{meta.get('command')}`). The original study prompted `runwayml/stable-diffusion-v1-5` img2img with each "
        "real "
        "image's BLIP caption (`Salesforce/blip-image-captioning-base`), strength 0.75, guidance 7.5.",
        "",
    ]
    if len(rows):
        sheet = prompt_sheet(
            list(zip(source_images, samples, map(str, prompts))), title="source image | sample | its prompt"
        )
        save_image(sheet, results / "sd_prompts.png")
        lines += ["![samples beside their sources and prompts](sd_prompts.png)", ""]
    return lines


def figures_section(results: Path) -> list[str]:
    """The stores' sample grids (results/grids/), under their heading only when there is one."""
    lines = []
    for name in ("real", "sd", "prompts", "inv"):
        grid = results / GRIDS_DIR / f"{name}.png"
        if grid.exists():
            lines += [f"**{name}**", "", f"![{name} samples]({GRIDS_DIR}/{name}.png)", ""]
    return ["## Samples", "", *lines] if lines else []


def di_sources_section(results: Path, data: Path, shown: int = 6) -> list[str]:
    """Real images beside the Diffusion Inversion samples of their own embeddings: a row per class, the source first."""
    from ..io.figures import image_grid, save_image
    from ..io.store import Store

    path = data / "inv.h5"
    if not path.exists():
        return []
    with Store(path) as inv:
        if len(inv) == 0 or "source_index" not in inv.column_names:
            return []
        sources, labels, classes = inv.column("source_index").astype(int), inv.labels, list(inv.classes)
        embeddings = inv.meta.get("params", {}).get("embeddings") or []
        real_path = Path(read_meta(Path(embeddings[0])).get("params", {}).get("data", "")) if embeddings else None
        if real_path is None or not real_path.is_file():
            return []
        rows, names = [], []
        with Store(real_path) as real:
            for c, name in enumerate(classes):
                members = np.flatnonzero(labels == c)
                if not len(members):
                    continue
                own = members[sources[members] == sources[members[0]]][:shown]
                rows.append(np.concatenate([real.images([int(sources[members[0]])]), inv.images(own)]))
                names.append(name)
    title = "a real image, then DI samples of its embedding"
    save_image(image_grid(rows, names, title=title), results / "di_sources.png")
    return ["## Diffusion Inversion: real images beside their samples", "", "![DI samples](di_sources.png)", ""]


@from_summary(JUDGE_JSON)
def judge_section(results: Path, judged: dict[str, Any]) -> list[str]:
    """The judge's score of each store (`synthkit judge`): the share of its images read as their own class, with the
    images per class it took and the prompt it asked with, as its record says."""
    from ..analyse.judge import TABLE_COLUMNS, per_class_text
    from ..core.config import JUDGE
    from ..core.tables import markdown_lines

    taken = {per_class_text(row) for row in judged["rows"]}
    asked = judged.get("per_class_asked", judged.get("per_class"))
    per_class = (
        f"{next(iter(taken))} image{'' if taken == {'1'} else 's'} per class of each store"
        if len(taken) == 1 and "?" not in taken
        else f"up to {asked} images per class of each store (fewer where a store has fewer: the table says how many)"
    )
    template = judged.get("template", JUDGE.template)  # records before it was recorded: the only prompt there was
    lines = [
        "## Do the pictures show their class?",
        "",
        f"`synthkit judge --model {judged['model']}`: the text-to-image model read as a zero-shot classifier (the "
        f"class whose prompt best predicts the noise added to an image, each class asked as `{template}`), "
        f"{per_class}; chance is {100 * judged['rows'][0]['chance']:.0f}%. The real stores are the yardstick; a "
        "generator is lenient with its own prompt samples.",
        "",
        *markdown_lines(TABLE_COLUMNS, judged["rows"]),
    ]
    return lines + [""]


def inversion_section(results: Path, models: Path) -> list[str]:
    """Each inversion's settings and loss, and its preview: real images beside what their embeddings reproduce."""
    import os

    files = sorted(p for p in (models / "inv").glob("*.safetensors")) if (models / "inv").is_dir() else []
    if not files:
        return []
    lines = [
        "## Diffusion Inversion: does each embedding reproduce its image?",
        "",
        "Each preview shows real images (top row) beside DDIM samples of their learned embeddings (25 steps, no "
        "guidance, no perturbation), and the loss per update below.",
        "",
        "| embeddings | images | groups | updates per image | AdamW steps per group | precision | loss first -> "
        "final | s |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    previews = []
    for path in files:
        meta = read_meta(path)
        p, losses = meta.get("params", {}), list(meta.get("group_loss", {}).values())
        first = sum(v[0] for v in losses) / max(1, len(losses))
        final = sum(v[1] for v in losses) / max(1, len(losses))
        images = meta.get("image_steps", 0) // max(1, p.get("updates", 1))
        lines.append(
            f"| `{path}` | {images} | {len(losses)} | {p.get('updates')} | {meta.get('adamw_steps_per_group')} | "
            f"{p.get('precision')} | {first:.4f} -> {final:.4f} | {meta.get('seconds')} |"
        )
        preview = preview_path(path)
        if preview.is_file():
            previews.append(f"![{path.stem} preview]({os.path.relpath(preview.resolve(), results.resolve())})")
    return lines + [""] + previews + [""]


@from_summary(GRADCAM_DIR, SUMMARY_JSON)
def gradcam_section(results: Path, s: dict[str, Any]) -> list[str]:
    """Where the models look: gradcam's table of mean measures and the models' agreement, and its grid."""
    from ..analyse.gradcam import GRID_FILE, SUMMARY_NOTE, agreement_lines, markdown_rows

    lines = [
        "## Where the models look (Grad-CAM)",
        "",
        f"{s['images']} real images of `{s['data']}`, target layer `{s['layer']}`, {s['target']} class; means over "
        f"images ({SUMMARY_NOTE}).",
        "",
        *markdown_rows(s),
    ]
    lines += [""] + [f"- {line}" for line in agreement_lines(s)]
    return lines + ["", f"![Grad-CAM grid]({GRADCAM_DIR}/{GRID_FILE})", ""]


@from_summary(VANISH_DIR, SUMMARY_JSON)
def geometry_section(results: Path, s: dict[str, Any]) -> list[str]:
    """Line segments and vanishing points of the study's stores (vanish's table), and the detector's own score on
    York Urban when make ran vanish-score."""
    from ..analyse.vanish import HISTOGRAMS_FILE, ground_truth_sentence, markdown_rows

    stores = s["stores"]
    names = list(stores)
    lines = [
        "## Projective geometry (line segments and vanishing points)",
        "",
        f"Mode: {s['mode']}. Median [q1, q3] per store; lengths are shares of the image diagonal.",
        "",
        *markdown_rows(s),
    ]
    small = [n for n in names if stores[n]["image_size"][0] <= 64]
    if small:
        lines += [
            "",
            "How many lines a small image really yields: "
            + "; ".join(
                f"`{n}` ({stores[n]['image_size'][0]} px) gives a median of "
                f"{stores[n]['measures']['n_segments']['median']:.0f} "
                f"segments (detected after upsampling x{stores[n]['upsample']}, kept if at least 4 of its own pixels "
                "long)"
                for n in small
            )
            + ".",
        ]
    lines += ["", f"![histograms]({VANISH_DIR}/{HISTOGRAMS_FILE})", ""] + [
        f"![{n} overlays]({VANISH_DIR}/overlay_{n}.png)" for n in names
    ]
    yud = results / VANISH_YUD_DIR / GT_SCORES_JSON
    if yud.exists():
        lines += ["", ground_truth_sentence(json.loads(yud.read_text()))]
    return lines + [""]


@from_summary(GEOMETRY_DIR, SUMMARY_JSON)
def scenes_section(results: Path, s: dict[str, Any]) -> list[str]:
    """The scene study (make geometry): line measures of real, DI and prompt scenes, each sample against its
    source, and how separable each store is from the real one by its lines alone."""
    from ..analyse.vanish import HISTOGRAMS_FILE, PAIR_COLUMNS, SCENE_COLUMNS
    from ..core.tables import markdown_lines

    lines = [
        "## Geometry of scenes: do generated images keep projective structure?",
        "",
        f"`synthkit vanish` on scene stores ({s['mode']}); medians over images.",
        "",
        *markdown_lines(SCENE_COLUMNS, s["stores"].items()),
    ]
    pairs_file = results / GEOMETRY_DIR / PAIRS_JSON
    if pairs_file.exists():
        pairs = json.loads(pairs_file.read_text())
        lines += [
            "",
            "Each sample against its own source (both at the sample's size; the focal length estimated once per pair):",
            "",
            *markdown_lines(PAIR_COLUMNS, pairs.items()),
        ]
        lines += [""] + [f"![{name} pairs]({GEOMETRY_DIR}/pairs_{name}.png)" for name in pairs]
    lines += [
        "",
        "An AUC of 0.5 means the store's line statistics are as real as real; 1 means they always give it away.",
        f"![scene histograms]({GEOMETRY_DIR}/{HISTOGRAMS_FILE})",
    ]
    return lines + [""]


def write_report(results: Path = RESULTS_DIR, models: Path = MODELS_DIR, data: Path = DATA_DIR) -> Path:
    """Write results/README.md from the evaluation CSV, the analysis summaries, figures and file metadata."""
    check_destination(results, [models, data], folder=True)
    if not results.exists():
        raise UserError(f"{results}/ does not exist: run the pipeline first (make demo, or make reproduce)")
    for folder, option in ((models, "--models"), (data, "--data")):
        if not Path(folder).is_dir():
            raise UserError(f"{option} {folder} is not a folder: give the study's models/ and data/ folders")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    lines = [
        "# synthkit study results",
        "",
        f"Written by `synthkit report` (synthkit {__version__}) at {now} from `{results}/`, `{models}/` and `{data}/`.",
        "",
    ]
    lines += generator_warning(data) + accuracy_section(results, models) + provenance_section(models, data)
    lines += (
        sd_section(results, data)
        + figures_section(results)
        + judge_section(results)
        + di_sources_section(results, data)
        + inversion_section(results, models)
        + fidelity_section(results)
    )
    lines += sweep_section(results) + gradcam_section(results) + geometry_section(results) + scenes_section(results)
    confusions = sorted((results / CONFUSION_DIR).glob("*.png"))
    if confusions:
        lines += ["## Confusion matrices", ""] + [f"![{p.stem}]({CONFUSION_DIR}/{p.name})" for p in confusions] + [""]
    out = results / "README.md"
    out.write_text("\n".join(lines))
    return out
