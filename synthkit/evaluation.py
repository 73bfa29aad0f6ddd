"""`synthkit evaluate`: accuracy of classifiers on a real test store with their classes, as the study's table.

Every model is scored on the same real test images, read in chunks that fit the device's memory budget, each model
at its own input size; the rows are appended to
results/accuracy.csv and results/accuracy.md is rewritten from it (latest row per model and test set).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import EVAL
from .device import autocast, configure_threads, image_bytes, memory_budget, memory_format, pick_device
from .errors import UserError
from .model import class_mapping, classifier_meta, load_classifier, resize_images
from .store import Store

CSV_FIELDS = ["evaluated", "model", "training_data", "train_images", "epochs", "seed", "test", "test_fingerprint",
              "test_images", "accuracy", "per_class"]


def training_data_name(meta: dict[str, Any]) -> str:
    """The study's row name for a classifier: its store names joined by '+', e.g. real+inv."""
    return "+".join(Path(s["path"]).stem for s in meta.get("sources", [])) or "?"


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of every uint8 image (N, 3, S, S), in batches."""
    preds = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float().div_(255).contiguous(memory_format=memory_format(device))
        with autocast(device):
            preds.append(model(x).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def open_test_store(test: Path) -> Store:
    """The test store, which must hold real images: models are scored on real data only."""
    store = Store(test)
    if store.meta.get("kind") != "real":
        store.close()
        raise UserError(f"test store {test} holds '{store.meta.get('kind')}' images: models are scored on real test images only")
    return store


def evaluate(models: Sequence[Path], test: Path, results: Path = Path("results"), device: str | None = None,
             batch_size: int = EVAL.batch_size, memory_limit: str | None = None) -> list[dict[str, Any]]:
    """Score each classifier on the test store; write confusion figures and the accuracy table."""
    if not models:
        raise UserError("no models given: pass --model PATH (repeatable)")
    metas = [classifier_meta(path) for path in models]  # fail on a wrong file before loading any data
    with open_test_store(test) as store:
        truths = [class_mapping(store.classes, meta["classes"], f"test store {test}")[store.labels] for meta in metas]
        configure_threads()
        dev = pick_device(device)
        loaded = [load_classifier(path, dev)[0] for path in models]
        largest = max(meta["image_size"] for meta in metas + [{"image_size": store.image_shape[0]}])
        chunk = max(1, memory_budget(dev, memory_limit) // image_bytes(2, largest))  # the images and a resized copy
        preds: list[list[torch.Tensor]] = [[] for _ in models]
        for start in range(0, len(store), chunk):
            pixels = torch.from_numpy(store.images(slice(start, start + chunk))).permute(0, 3, 1, 2).to(dev)
            for model, meta, out in zip(loaded, metas, preds):
                out.append(predict(model, resize_images(pixels, meta["image_size"]), dev, batch_size).cpu())
        rows = []
        for path, meta, truth, pred in zip(models, metas, truths, preds):
            pred = torch.cat(pred).numpy()
            n = len(meta["classes"])
            counts = confusion_matrix(truth, pred, n)
            per_class = {c: float(counts[i, i] / max(counts[i].sum(), 1)) for i, c in enumerate(meta["classes"])}
            row = {"evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "model": str(path),
                   "training_data": training_data_name(meta), "train_images": sum(s["count"] for s in meta["sources"]),
                   "epochs": meta.get("epochs"), "seed": meta["params"].get("seed"), "test": str(test),
                   "test_fingerprint": store.fingerprint, "test_images": len(truth),
                   "accuracy": float((pred == truth).mean()), "per_class": json.dumps(per_class)}
            save_confusion_figure(counts, meta["classes"], results / "confusion" / f"{Path(path).stem}.png",
                                  f"{row['training_data']}: {100 * row['accuracy']:.2f}% on {len(truth)} real test images")
            rows.append(row)
    append_rows(results / "accuracy.csv", rows)
    write_markdown(results / "accuracy.csv", results / "accuracy.md")
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to the CSV, writing the header when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows, keeping only the latest per (model, test fingerprint)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        latest.pop((row["model"], row["test_fingerprint"]), None)
        latest[(row["model"], row["test_fingerprint"])] = row
    return list(latest.values())


def write_markdown(csv_path: Path, md_path: Path) -> None:
    """Rewrite the markdown accuracy table from the CSV."""
    lines = ["| training data | accuracy % | train images | epochs | seed | model | test images | evaluated |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in read_rows(csv_path):
        lines.append(f"| {r['training_data']} | {100 * float(r['accuracy']):.2f} | {r['train_images']} | {r['epochs']} | "
                     f"{r['seed']} | {r['model']} | {r['test_images']} | {r['evaluated']} |")
    md_path.write_text("# Test accuracy (real test images)\n\n" + "\n".join(lines) + "\n")


def save_confusion_figure(counts: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """A row-normalised confusion matrix, sized by the class count: counts in the cells up to 20 classes, smaller
    labels beyond, so that 100 classes stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    side = max(6.0, 0.2 * n + 2.5)
    label_size = 9 if n <= 20 else 6
    fig, ax = plt.subplots(figsize=(side + 1, side))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center", fontsize=label_size)
    ax.set_yticks(range(n), classes, fontsize=label_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
