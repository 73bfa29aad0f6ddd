"""`synthkit evaluate`: accuracy of classifiers on a real test store with their classes, as the study's table.

Every model is scored on the same real test images, read in chunks that fit the device's memory budget, each model
at its own input size; the rows are written to results/accuracy.csv (one per model and test store, a model scored
again replacing its row) and results/accuracy.md is rewritten from it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import EVAL, recorded_params
from ..core.device import autocast, image_bytes, job_device, memory_budget, memory_format
from ..core.errors import UserError
from ..core.jobs import check_destination, check_distinct
from ..core.meta import Kind
from ..core.outputs import written_whole
from ..core.paths import ACCURACY_CSV, ACCURACY_MD, CONFUSION_DIR, RESULTS_DIR
from ..core.tables import Column, markdown_lines
from ..io.store import Store
from .model import class_mapping, classifier_meta, load_classifier, resize_images

CSV_FIELDS = [
    "evaluated",
    "model",
    "training_data",
    "classifier",
    "train_images",
    "recipe",
    "steps",
    "images_seen",
    "batch",
    "seed",
    "group",
    "test",
    "test_fingerprint",
    "test_images",
    "accuracy",
    "best_eval_accuracy",
    "best_eval_step",
    "evals",
    "per_class",
]


def classifier_name(meta: dict[str, Any]) -> str:
    """The architecture and stem, as rows name them: 'resnet18 (cifar stem)'."""
    return f"{meta.get('arch', '?')} ({meta['stem']} stem)" if meta.get("stem") else str(meta.get("arch", "?"))


def arch_of_row(row: dict[str, Any]) -> str:
    """The architecture of an evaluation row, from its classifier cell (classifier_name: the arch, then the stem in
    brackets)."""
    return str(row.get("classifier") or "?").partition(" ")[0]


def training_data_name(meta: dict[str, Any]) -> str:
    """The study's row name for a classifier: its store names joined by '+', e.g. real+inv."""
    return "+".join(Path(s["path"]).stem for s in meta.get("sources", [])) or "?"


def distinct_names(
    metas: Sequence[dict[str, Any]], paths: Sequence[Path], least: int = 1, notes: Sequence[str] = ()
) -> list[str]:
    """A name per classifier that tells it apart from the others given: its training data (the study's row name),
    then, where another shares that, its architecture in brackets, then its file name, then its path; a file given
    twice is numbered (real#2). `least` parts are always named (2: the architecture too, for a figure seen beside
    others made another time); `notes`, one per classifier, end the brackets (real (resnet18, n=3))."""
    parts = [(training_data_name(m), str(m.get("arch", "?")), Path(p).name, str(p)) for m, p in zip(metas, paths)]
    names = []
    for mine, note in zip(parts, [*notes] or [""] * len(parts)):
        k = least
        while k < len(mine) and sum(other[:k] == mine[:k] for other in parts) > 1:
            k += 1
        detail = [*[mine[1], mine[3] if k == 4 else mine[2]][: k - 1], *filter(None, [note])]
        names.append(f"{mine[0]} ({', '.join(detail)})" if detail else mine[0])
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        numbered.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return numbered


def batch_text(batch: dict[str, int] | str | None) -> str:
    """A batch composition as people say it: '64 real + 64 synthetic', or '128' from the union of the stores."""
    if isinstance(batch, str):
        batch = json.loads(batch) if batch.startswith("{") else None
    if not batch:
        return "?"
    if set(batch) == {"real", "synthetic"}:
        return f"{batch['real']} real + {batch['synthetic']} synthetic"
    return f"{sum(batch.values())} from all stores"


def seed_group(meta: dict[str, Any]) -> str:
    """A key shared by classifiers that differ only by seed: the same stores (by content) and every other value."""
    params = {k: v for k, v in recorded_params(meta.get("params", {})).items() if k != "seed"}
    stores = [s.get("fingerprint") for s in meta.get("sources", [])]
    return hashlib.sha256(json.dumps([training_data_name(meta), stores, params], sort_keys=True).encode()).hexdigest()[
        :12
    ]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class of every uint8 image (N, 3, S, S), in batches."""
    preds = []
    for start in range(0, len(images), batch_size):
        x = (
            images[start : start + batch_size]
            .to(device)
            .float()
            .div_(255)
            .contiguous(memory_format=memory_format(device))
        )
        with autocast(device):
            preds.append(model(x).argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n: int) -> np.ndarray:
    """counts[true, predicted]."""
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)


def open_test_store(test: Path) -> Store:
    """The test store, which must hold real images: models are scored on real data only."""
    store = Store(test)
    if store.meta.get("kind") != Kind.REAL:
        store.close()
        raise UserError(
            f"test store {test} holds '{store.meta.get('kind')}' images: models are scored on real test images only"
        )
    return store


class TestImages:
    """A real test store's images on the device at each classifier's size, held when they fit `budget` bytes and
    read in chunks otherwise: what `train --test` scores during training."""

    def __init__(self, path: Path, device: torch.device, budget: int):
        with open_test_store(path) as store:
            self.classes, self.labels, self.fingerprint = list(store.classes), store.labels, store.fingerprint
            self.count = len(store)
        self.path, self.device, self.budget = Path(path), device, budget
        self._held: dict[int, torch.Tensor] = {}

    def _chunks(self, size: int) -> Iterator[tuple[int, torch.Tensor]]:
        if size in self._held:
            yield 0, self._held[size]
            return
        chunk = max(1, self.budget // image_bytes(2, max(size, 1)))
        with Store(self.path) as store:
            if chunk >= len(store):
                pixels = torch.from_numpy(store.images()).permute(0, 3, 1, 2).to(self.device)
                self._held[size] = resize_images(pixels, size).contiguous()
                yield 0, self._held[size]
                return
            for start in range(0, len(store), chunk):
                pixels = torch.from_numpy(store.images(slice(start, start + chunk))).permute(0, 3, 1, 2).to(self.device)
                yield start, resize_images(pixels, size)

    @torch.no_grad()
    def accuracy(
        self, model: torch.nn.Module, classes: Sequence[str], size: int, batch_size: int = EVAL.batch_size
    ) -> float:
        """Share of the test images `model` (of these classes, at this size) classifies right; it is left in training
        mode."""
        truth = torch.from_numpy(class_mapping(self.classes, classes, f"test store {self.path}")[self.labels]).to(
            self.device
        )
        model.eval()
        correct = 0
        for start, images in self._chunks(size):
            correct += int(
                (predict(model, images, self.device, batch_size) == truth[start : start + len(images)]).sum()
            )
        model.train()
        return correct / max(self.count, 1)


def check_apart(models: Sequence[Path], metas: Sequence[dict]) -> None:
    """Each classifier has its own confusion figure (named by its file name) and counts once: two of one file name,
    or two copies of one classifier (the same record), are refused."""
    for k, (path, meta) in enumerate(zip(models, metas)):
        for other, other_meta in zip(models[:k], metas[:k]):
            if Path(path).stem == Path(other).stem:
                raise UserError(
                    f"classifiers {other} and {path} have one file name: their confusion figures would be one file "
                    f"({CONFUSION_DIR}/{Path(path).stem}.png); rename one"
                )
            if meta == other_meta:
                raise UserError(f"{path} is a copy of {other} (the same training record): give it once")


def evaluate(
    models: Sequence[Path],
    test: Path,
    results: Path = RESULTS_DIR,
    device: str | None = None,
    batch_size: int = EVAL.batch_size,
    memory_limit: str | None = None,
) -> list[dict[str, Any]]:
    """Score each classifier on the test store; write confusion figures and the accuracy table."""
    check_destination(results, [*models, test], folder=True)
    check_distinct(models, "classifier")
    if not models:
        raise UserError("no models given: pass --model PATH (repeatable)")
    metas = [classifier_meta(path) for path in models]  # fail on a wrong file before loading any data
    check_apart(models, metas)
    with open_test_store(test) as store:
        truths = [class_mapping(store.classes, meta["classes"], f"test store {test}")[store.labels] for meta in metas]
        dev = job_device(device)
        loaded = [load_classifier(path, dev)[0] for path in models]
        largest = max(meta["image_size"] for meta in metas + [{"image_size": store.image_shape[0]}])
        chunk = max(1, memory_budget(dev, memory_limit) // image_bytes(2, largest))  # the images and a resized copy
        preds: list[list[torch.Tensor]] = [[] for _ in models]
        for start in range(0, len(store), chunk):
            pixels = torch.from_numpy(store.images(slice(start, start + chunk))).permute(0, 3, 1, 2).to(dev)
            for model, meta, out in zip(loaded, metas, preds):
                out.append(predict(model, resize_images(pixels, meta["image_size"]), dev, batch_size).cpu())
        rows = []
        titles = distinct_names(metas, models, least=2)
        for path, meta, truth, pred, name in zip(models, metas, truths, preds, titles):
            pred = torch.cat(pred).numpy()
            n = len(meta["classes"])
            counts = confusion_matrix(truth, pred, n)
            per_class = {c: float(counts[i, i] / max(counts[i].sum(), 1)) for i, c in enumerate(meta["classes"])}
            same_test = meta.get("test", {}).get("fingerprint") == store.fingerprint
            row = {
                "evaluated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "model": str(path),
                "training_data": training_data_name(meta),
                "train_images": sum(s["count"] for s in meta["sources"]),
                "classifier": classifier_name(meta),
                "recipe": meta.get("recipe", ""),
                "steps": meta.get("steps"),
                "images_seen": meta.get("images_seen", ""),
                "batch": json.dumps(meta.get("batch", {})),
                "seed": meta["params"].get("seed"),
                "group": seed_group(meta),
                "test": str(test),
                "test_fingerprint": store.fingerprint,
                "test_images": len(truth),
                "accuracy": float((pred == truth).mean()),
                "best_eval_accuracy": meta.get("best_test_acc", "") if same_test else "",
                "best_eval_step": meta.get("best_test_step", "") if same_test else "",
                "evals": json.dumps(meta.get("evals", [])) if same_test else "[]",
                "per_class": json.dumps(per_class),
            }
            save_confusion_figure(
                counts,
                meta["classes"],
                results / CONFUSION_DIR / f"{Path(path).stem}.png",
                f"{name}: {100 * row['accuracy']:.2f}% on {len(truth)} real test images",
            )
            rows.append(row)
    append_rows(results / ACCURACY_CSV, rows)
    write_markdown(results / ACCURACY_CSV, results / ACCURACY_MD)
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Add rows to the CSV, each replacing an older row of the same model and test store, so that scoring a
    classifier again keeps one row for it (the file is rewritten whole, in the current columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old: list[dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new = {(str(r["model"]), str(r["test_fingerprint"])) for r in rows}
    kept = [r for r in old if (r.get("model"), r.get("test_fingerprint")) not in new]
    with written_whole(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows([*kept, *rows])


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows, keeping only the latest per (model, test fingerprint)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        latest.pop((row["model"], row["test_fingerprint"]), None)
        latest[(row["model"], row["test_fingerprint"])] = row
    return list(latest.values())


def group_rows(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Rows that differ only by seed (same group and test store) as one: accuracies, their mean, standard deviation
    (n - 1) and n, and the mean best-of-evals where training scored the test store."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r.get("group") or r["model"], r["test_fingerprint"]), []).append(r)
    out = []
    for members in groups.values():
        acc = np.array([float(r["accuracy"]) for r in members])
        best = [float(r["best_eval_accuracy"]) for r in members if r.get("best_eval_accuracy")]
        out.append(
            {
                "training_data": members[0]["training_data"],
                "rows": members,
                "n": len(members),
                "mean": float(acc.mean()),
                "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "best_mean": float(np.mean(best)) if best else None,
                "seeds": sorted(int(r["seed"]) for r in members if str(r["seed"]).lstrip("-").isdigit()),
            }
        )
    return out


def mean_std(group: dict[str, Any]) -> str:
    """'81.80 ± 0.42' (percent), or the one value when n is 1."""
    return f"{100 * group['mean']:.2f} ± {100 * group['std']:.2f}" if group["n"] > 1 else f"{100 * group['mean']:.2f}"


def _first(group: dict[str, Any], key: str) -> str:
    """A value of the group's first row as its cell: '?' when it was not recorded."""
    value = group["rows"][0].get(key)
    return "?" if value in (None, "") else str(value)


def best_cell(group: dict[str, Any]) -> str:
    """The mean best-of-evals accuracy (percent), or '–' when training scored no test store."""
    return f"{100 * group['best_mean']:.2f}" if group["best_mean"] is not None else "–"


# The accuracy table's columns, one per value of a seed group (group_rows): accuracy.md, the report and `evaluate`'s
# table render from these (the report and the CLI pick theirs by key).
ACCURACY_COLUMNS = (
    Column("training_data", "training data", lambda g: g["training_data"]),
    Column("accuracy", "accuracy % (final; mean ± std)", mean_std, right=True),
    Column("n", "n", lambda g: str(g["n"]), right=True),
    Column("best", "best of evals % (selected on the test set)", best_cell, right=True),
    Column("classifier", "classifier", lambda g: _first(g, "classifier")),
    Column("recipe", "recipe", lambda g: _first(g, "recipe")),
    Column("steps", "steps", lambda g: _first(g, "steps"), right=True),
    Column("images_seen", "images seen", lambda g: _first(g, "images_seen"), right=True),
    Column("batch", "batch", lambda g: batch_text(g["rows"][0].get("batch"))),
    Column("train_images", "train images", lambda g: _first(g, "train_images"), right=True),
    Column("test_images", "test images", lambda g: _first(g, "test_images"), right=True),
    Column("seeds", "seeds", lambda g: ", ".join(map(str, g["seeds"]))),
)
# `synthkit evaluate` prints these
TERMINAL_COLUMNS = ("training_data", "accuracy", "n", "classifier", "recipe", "steps", "batch")


def write_markdown(csv_path: Path, md_path: Path) -> None:
    """Rewrite the markdown accuracy table from the CSV: one line per row, its seeds grouped into mean ± std."""
    lines = markdown_lines(ACCURACY_COLUMNS, group_rows(read_rows(csv_path)))
    md_path.write_text("# Test accuracy (real test images)\n\n" + "\n".join(lines) + "\n")


def architecture_name(metas: Sequence[dict[str, Any]]) -> str:
    """The classifiers' architecture(s) as a heading names them: ResNet-18 when every one is a resnet18 (or there are
    none), else their `arch` values."""
    archs = sorted({str(m.get("arch", "?")) for m in metas})
    if all(a.startswith("resnet18") for a in archs):
        return "ResNet-18"
    return ", ".join(archs)


def record_of(path: Path) -> dict[str, Any]:
    """A file's metadata record, or {} when it is not a synthkit checkpoint (so that a stray file is passed over)."""
    from ..io.checkpoint import read_meta

    try:
        meta = read_meta(path)
    except (UserError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def classifier_files(folder: Path) -> list[Path]:
    """Every classifier directly in `folder`, whatever its architecture or file name: the *.safetensors whose record's
    kind is classifier."""
    return [
        path for path in sorted(Path(folder).glob("*.safetensors")) if record_of(path).get("kind") == Kind.CLASSIFIER
    ]


def _number(value: Any, spec: str) -> str:
    """A recorded number formatted, or as recorded ('?' when missing) when it is not a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "?" if value is None else str(value)


def classifier_line(meta: dict[str, Any]) -> str:
    """How a classifier was made and how it ended, from its record: what `train` prints and the report lists."""
    p = meta.get("params", {})

    def percent(key: str, spec: str) -> str:
        value = meta.get(key)
        return _number(100 * value if isinstance(value, (int, float)) else None, spec)

    tested = (
        f", test accuracy {percent('final_test_acc', '.2f')}% (best of {len(meta['evals'])}: "
        f"{percent('best_test_acc', '.2f')}%)"
        if meta.get("evals")
        else ""
    )
    return (
        f"{classifier_name(meta)} at {meta.get('image_size', 32)} px, recipe {meta.get('recipe', '?')}, "
        f"{meta.get('steps', '?')} steps of {batch_text(meta.get('batch'))} "
        f"({meta.get('images_seen', '?')} images seen), {p.get('optimizer', 'sgd')} lr {p.get('lr')}, "
        f"schedule {p.get('schedule', '?')}, seed {p.get('seed')}, "
        f"final loss {_number(meta.get('final_loss'), '.4f')}, "
        f"train accuracy {percent('final_train_acc', '.1f')}%{tested}, "
        f"{_number(meta.get('seconds'), '.0f')} s on {meta.get('device', '?')}"
    )


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
    ax.set_xticks(
        range(n), classes, rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center", fontsize=label_size
    )
    ax.set_yticks(range(n), classes, fontsize=label_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
