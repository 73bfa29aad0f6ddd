"""`synthkit fidelity`: judge synthetic stores directly against real images, without training on them.

Every store is compared with the real store on the same number of images per class (a seeded pick):
Fréchet distance and KID (torchmetrics), precision and recall (Kynkäänniemi et al. 2019) and density and
coverage (Naeem et al. 2020) from `prdc` with k nearest neighbours, and how often a classifier trained on
real data gives a synthetic image its own label. Features: that classifier's pooled features, what its head sees
(always, offline) and, when Inception weights are at hand, torch-fidelity's Inception-v3: the field's FID and KID.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classify.model import class_mapping, classifier_meta, load_classifier, resize_images
from ..core.config import FIDELITY, FIDELITY_METRICS, check_choice
from ..core.device import job_device
from ..core.errors import UserError
from ..core.jobs import check_destination
from ..core.paths import SUMMARY_JSON
from ..core.progress import progress
from ..core.tables import Column, markdown_lines
from ..io.store import Store, balanced_subset

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception weights
SET_METRICS = ("frechet", "kid", "precision", "recall", "density", "coverage")
LABEL_METRICS = ("agreement", "confidence")
COLUMNS = ("store", "class", "features", "n_real", "n_fake", "k", *SET_METRICS, *LABEL_METRICS)
BETTER = {
    "frechet": "lower",
    "kid": "lower",
    "precision": "higher",
    "recall": "higher",
    "density": "higher",
    "coverage": "higher",
    "agreement": "higher",
    "confidence": "higher",
}
FORMATS = {"kid": ".4f"}  # every other metric to 3 decimals; KID is a hundred times smaller


def _metric_cell(metric: str) -> Callable[[dict[str, Any]], str]:
    """A metric's cell of a row: its value, or '–' where the row has none (label metrics of Inception features)."""
    return lambda row: format(row[metric], FORMATS.get(metric, ".3f")) if metric in row else "–"


# The table of every store's scores over all classes: fidelity.md, the report and the CLI render from these.
TABLE_COLUMNS = (
    Column("store", "store", lambda row: row["store"]),
    Column("features", "features", lambda row: row["features"]),
    Column("images", "images", lambda row: str(row["n_fake"]), right=True),
    *(Column(m, f"{m} ({BETTER[m]} is better)", _metric_cell(m), right=True) for m in (*SET_METRICS, *LABEL_METRICS)),
)


def overall(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows over all classes (one per store and features), those the tables show."""
    return [row for row in rows if row["class"] == "all"]


def markdown_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown table of every store's scores over all classes."""
    return markdown_lines(TABLE_COLUMNS, overall(rows))


def summary_line(row: dict[str, Any]) -> str:
    """One store's scores over all classes in a line, as `synthkit fidelity` prints them."""
    scores = ", ".join(f"{m} {_metric_cell(m)(row)}" for m in (*SET_METRICS, *LABEL_METRICS) if m in row)
    return f"{row['store']} ({row['features']}, {row['n_fake']} images): {scores}"


def inception_weights(path: Path | None) -> Path | None:
    """The Inception weights to use: `path` if given (it must exist), else torch's cache if they are there."""
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"--inception {path} is not a file: give torch-fidelity's {INCEPTION_FILE}")
        try:  # read it now, before any feature is computed: torch-fidelity loads it as a plain state dict
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(
                f"--inception {path} is not torch-fidelity's {INCEPTION_FILE} ({type(err).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise UserError(f"--inception {path} is not torch-fidelity's {INCEPTION_FILE} (not a state dict)")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


class _Given(nn.Module):
    """Hands precomputed features to torchmetrics' FID and KID as their 'feature extractor'."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def set_scores(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Fréchet distance, KID (mean over subsets), precision, recall, density and coverage of two feature sets."""
    from prdc import compute_prdc
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real_t, fake_t = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    warnings.filterwarnings("ignore", module="torchmetrics")  # "fewer samples than features": said in fidelity.md
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    fid.update(real_t, real=True)
    fid.update(fake_t, real=False)
    size = min(1000, len(real), len(fake))
    kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subset_size=size, subsets=50)
    kid.update(real_t, real=True)
    kid.update(fake_t, real=False)
    torch.manual_seed(0)  # KID's subsets are drawn with torch's global generator
    kid_mean, _ = kid.compute()
    scores = {"frechet": float(fid.compute()), "kid": float(kid_mean)}
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the two set sizes
        scores |= {key: float(v) for key, v in compute_prdc(real, fake, nearest_k=k).items()}
    return scores


def _classifier_outputs(
    model: nn.Module, images: np.ndarray, device: torch.device, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and class probabilities of uint8 images (N, H, W, 3)."""
    feats, probs = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).to(device)
            x = resize_images(x, model.image_size).float() / 255
            f = model.features(x)
            feats.append(f.float().cpu())
            probs.append(torch.softmax(model.head(f).float(), 1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def _inception_outputs(weights: Path, images: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """torch-fidelity's Inception-v3 pool features (N, 2048) of uint8 images, as torchmetrics' FID computes them."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
    ).to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).permute(0, 3, 1, 2).contiguous().to(device)
            out.append(net(x).double().cpu())
    return torch.cat(out).numpy()


def fidelity(
    real: Path,
    stores: Sequence[Path],
    classifier: Path,
    out: Path,
    per_class: int = FIDELITY.per_class,
    k: int = FIDELITY.k,
    seed: int = FIDELITY.seed,
    inception: Path | None = None,
    metric: str = FIDELITY.metric,
    device: str | None = None,
    batch_size: int = FIDELITY.batch_size,
) -> list[dict[str, Any]]:
    """Score each store against the real store, over all images and per class; write fidelity.csv, fidelity.md,
    fidelity.png and summary.json to `out`. Returns the rows."""
    check_destination(out, [real, *stores, classifier, inception], folder=True)
    _check_options(stores, metric, k, per_class)
    meta = classifier_meta(classifier)
    weights = inception_weights(inception)
    classes, n = _classes_and_size(real, stores, meta["classes"], per_class)
    dev = job_device(device)
    model, _ = load_classifier(classifier, dev)
    sources = _feature_sources(model, dev, classifier, weights)
    outputs = functools.partial(
        _store_outputs,
        n=n,
        seed=seed,
        classes=classes,
        model_classes=meta["classes"],
        model=model,
        device=dev,
        batch_size=batch_size,
        weights=weights,
    )
    rows: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("fidelity", total=len(stores) + 1)
        real_f, real_labels, *_ = outputs(real)
        bar.advance(task)
        for path in stores:
            rows += _store_rows(path.stem, outputs(path), real_f, real_labels, classes, sources, k)
            bar.advance(task)
    out.mkdir(parents=True, exist_ok=True)
    _write(rows, out, real, classifier, sources, n, k, seed, metric)
    return rows


def _check_options(stores: Sequence[Path], metric: str, k: int, per_class: int) -> None:
    """Refuse a call without stores or with an unknown metric, k below 1 or fewer than 3 images per class, before
    anything is read."""
    if not stores:
        raise UserError("no stores given: pass --data NAME (repeatable)")
    check_choice(metric, FIDELITY_METRICS, "--metric")
    if k < 1 or per_class < 3:
        raise UserError("--k must be at least 1 and --per-class at least 3")


def _classes_and_size(
    real: Path, stores: Sequence[Path], model_classes: list[str], per_class: int
) -> tuple[list[str], int]:
    """The real store's classes, checked against every store's and the classifier's, and the images per class each
    store is scored on: `per_class`, or fewer where a store's smallest class has fewer (at least 3)."""
    with Store(real) as r:
        classes = r.classes
        counts = [r.counts()]
    for path in stores:
        with Store(path) as s:
            class_mapping(s.classes, classes, f"store {path}")
            counts.append(np.array([s.counts()[s.classes.index(c)] for c in classes]))
    class_mapping(classes, model_classes, f"the real store {real}")
    n = min(per_class, int(np.min(counts)))
    if n < 3:
        raise UserError(
            f"every store must have at least 3 images of every class (the smallest has {n}): give larger stores"
        )
    return classes, n


def _feature_sources(model: nn.Module, device: torch.device, classifier: Path, weights: Path | None) -> dict[str, str]:
    """Each kind of features scored and its description for fidelity.md: the classifier's always, Inception's when
    its weights are at hand."""
    with torch.no_grad():
        dims = model.features(torch.zeros(1, 3, model.image_size, model.image_size, device=device)).shape[1]
    return {"classifier": f"the pooled features its head sees ({dims} dimensions) of {classifier}"} | (
        {"inception": f"torch-fidelity Inception-v3 ({weights})"} if weights else {}
    )


def _store_outputs(
    path: Path,
    *,
    n: int,
    seed: int,
    classes: list[str],
    model_classes: list[str],
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    weights: Path | None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features per source, labels (real store's order), confidence in the own label, own label and prediction of a
    store's seeded pick of `n` images per class: all that its scores need, computed once per store."""
    with Store(path) as s:
        pick = balanced_subset(s.labels, n, seed, s.classes)
        images = s.images(pick)
        labels = class_mapping(s.classes, classes, str(path))[s.labels[pick]]
    feats, probs = _classifier_outputs(model, images, device, batch_size)
    features = {"classifier": feats.astype(np.float64)}
    if weights:
        features["inception"] = _inception_outputs(weights, images, device, batch_size)
    own = class_mapping(classes, model_classes, str(path))[labels]
    return features, labels, probs[np.arange(len(own)), own], own, probs.argmax(1)


def _store_rows(
    store: str,
    outputs: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    real_f: dict[str, np.ndarray],
    real_labels: np.ndarray,
    classes: list[str],
    sources: dict[str, str],
    k: int,
) -> list[dict[str, Any]]:
    """One store's rows (its `_store_outputs`) against the real store's features: over all classes, then per class,
    a row for each kind of features (the label metrics with the classifier's)."""
    fake_f, fake_labels, confidence, own, predicted = outputs
    rows = []
    for cls in ["all", *classes]:
        rows_real = real_labels >= 0 if cls == "all" else real_labels == classes.index(cls)
        rows_fake = fake_labels >= 0 if cls == "all" else fake_labels == classes.index(cls)
        kk = min(k, int(rows_real.sum()) - 2, int(rows_fake.sum()) - 2)  # prdc needs more than k + 1 of each
        for source in sources:
            row = {
                "store": store,
                "class": cls,
                "features": source,
                "n_real": int(rows_real.sum()),
                "n_fake": int(rows_fake.sum()),
                "k": kk,
            }
            row |= set_scores(real_f[source][rows_real], fake_f[source][rows_fake], kk)
            if source == "classifier":
                row |= {
                    "agreement": float((predicted[rows_fake] == own[rows_fake]).mean()),
                    "confidence": float(confidence[rows_fake].mean()),
                }
            rows.append(row)
    return rows


def _write(
    rows: list[dict[str, Any]],
    out: Path,
    real: Path,
    classifier: Path,
    sources: dict[str, str],
    n: int,
    k: int,
    seed: int,
    metric: str,
) -> None:
    with open(out / "fidelity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{v:.6g}" if isinstance(v, float) else v) for key, v in row.items()})
    lines = [
        f"Each store against the real store `{real}`, on {n} images per class of each (a seeded pick, seed {seed}), "
        f"k = {k} nearest neighbours for precision, recall, density and coverage (fewer within a class when it is "
        "small). "
        "With fewer images than feature dimensions (given with each kind of features below) the Fréchet distance is "
        "biased upwards: "
        "compare stores with each other, at the same number of images, not with zero.",
        "",
        *(f"- features `{name}`: {text}" for name, text in sources.items()),
        "",
        *markdown_rows(rows),
    ]
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    (out / SUMMARY_JSON).write_text(
        json.dumps(
            {
                "real": str(real),
                "classifier": str(classifier),
                "per_class": n,
                "k": k,
                "seed": seed,
                "features": sources,
                "metric": metric,
                "rows": rows,
            },
            indent=1,
        )
    )
    _figure(rows, out / "fidelity.png", metric)


def _figure(rows: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Precision against recall per store (classifier features, all classes), and per-class bars of one metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r["features"] == "classifier"]
    stores = list(dict.fromkeys(r["store"] for r in ours))
    classes = list(dict.fromkeys(r["class"] for r in ours if r["class"] != "all"))
    many = len(classes) > 20  # e.g. CIFAR-100: narrower bars and upright labels keep the figure readable
    bars = min(0.25 * len(classes) * max(1, len(stores)), 3 * len(classes) if many else 60, 40)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(6 + bars, 4 + (1.5 if many else 0)), gridspec_kw={"width_ratios": [6, max(bars, 6)]}
    )
    for name in stores:
        row = next(r for r in ours if r["store"] == name and r["class"] == "all")
        left.scatter(row["recall"], row["precision"], s=50)
        left.annotate(name, (row["recall"], row["precision"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    n_all = next(r["n_fake"] for r in ours if r["class"] == "all")
    n_class = next((r["n_fake"] for r in ours if r["class"] != "all"), 0)
    left.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"all classes ({n_all} images per store)",
    )
    width = 0.8 / max(1, len(stores))
    for i, name in enumerate(stores):
        values = [next(r[metric] for r in ours if r["store"] == name and r["class"] == c) for c in classes]
        right.bar(np.arange(len(classes)) + i * width, values, width, label=name)
    right.set_xticks(
        np.arange(len(classes)) + width * (len(stores) - 1) / 2,
        classes,
        rotation=90 if many else 45,
        ha="center" if many else "right",
        fontsize=6 if many else 8,
    )
    right.set(title=f"{metric} per class, {n_class} images each ({BETTER[metric]} is better)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
