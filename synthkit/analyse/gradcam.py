"""`synthkit gradcam`: where classifiers look, measured. Grad-CAM maps (pytorch-grad-cam) of every
model on the same real images, how concentrated each map is, how much models agree, and
pytorch-grad-cam's confidence-change metric, with a grid figure beside the numbers."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..classify.classifiers import CLASSIFIERS
from ..classify.evaluation import distinct_names
from ..classify.model import class_mapping, classifier_meta, load_classifier, resize_images
from ..core.config import GRADCAM, GRADCAM_TARGETS, check_choice
from ..core.device import job_device
from ..core.errors import UserError
from ..core.jobs import check_destination
from ..core.paths import SUMMARY_JSON
from ..core.progress import progress
from ..core.tables import Column, markdown_lines
from ..io.store import Store

ROAD_PERCENTILES = (20, 40, 60, 80)  # share of pixels ROAD removes (most or least relevant first)
MEASURES = ("entropy", "gini", "top10_mass", "area_above_half", "spread", "confidence_change", "road")
SUMMARY_NOTE = (
    "lower entropy and spread, higher Gini and top-10% mass: more concentrated maps; `road` is grad-cam's ROAD "
    "faithfulness, higher when removing the pixels a map ranks first hurts the model more than removing the last"
)
GRID_FILE = "gradcam_grid.png"


def _measure_cell(key: str) -> Callable[[tuple[str, dict[str, Any]]], str]:
    """A measure's cell of a model's (name, stats): its mean over the images, or '–' where it was not measured."""
    return lambda item: f"{item[1][key]['mean']:.3f}" if key in item[1] else "–"


# The table of each model's mean measures: the report and `synthkit gradcam` render from these, over
# summary["models"].items().
TABLE_COLUMNS = (
    Column("model", "model", lambda item: item[0]),
    *(Column(key, key, _measure_cell(key), right=True) for key in MEASURES),
)


def markdown_rows(summary: dict[str, Any]) -> list[str]:
    """The Markdown table of each model's mean measures."""
    return markdown_lines(TABLE_COLUMNS, summary["models"].items())


def agreement_lines(summary: dict[str, Any]) -> list[str]:
    """How alike each pair of models' maps are, a line per pair."""
    return [
        f"agreement {pair}: correlation {v['correlation']:.3f}, IoU of top 20% {v['top_iou']:.3f}"
        for pair, v in summary["agreement"].items()
    ]


def concentration(cam: np.ndarray) -> dict[str, float]:
    """How concentrated a map (H, W, values >= 0) is: normalised entropy (1 = flat), Gini index
    (0 = flat), share of mass in the top 10% of pixels, share of pixels above 0.5 of the maximum,
    and spread around the centroid (RMS distance over the image diagonal)."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    total = cam.sum()
    n = cam.size
    if total <= 0:
        return {"entropy": 1.0, "gini": 0.0, "top10_mass": 0.1, "area_above_half": 1.0, "spread": float("nan")}
    p = cam.ravel() / total
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum() / np.log(n))
    sorted_p = np.sort(p)
    gini = float(1 - 2 * np.sum(np.cumsum(sorted_p) - sorted_p / 2) / n)
    k = max(1, int(round(0.1 * n)))
    top10 = float(sorted_p[-k:].sum())
    area = float((cam >= 0.5 * cam.max()).mean())
    h, w = cam.shape
    ys, xs = np.mgrid[0:h, 0:w]
    pm = cam / total
    cy, cx = (pm * ys).sum(), (pm * xs).sum()
    spread = float(np.sqrt((pm * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum()) / np.hypot(h, w))
    return {"entropy": entropy, "gini": gini, "top10_mass": top10, "area_above_half": area, "spread": spread}


def agreement(a: np.ndarray, b: np.ndarray, top: float = 0.2) -> dict[str, float]:
    """Pearson correlation of two maps and IoU of their top `top` share of pixels."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    k = max(1, int(round(top * a.size)))
    ta, tb = set(np.argsort(a)[-k:]), set(np.argsort(b)[-k:])
    return {"correlation": corr, "top_iou": len(ta & tb) / len(ta | tb)}


def explain(
    models: Sequence[Path],
    data: Path,
    out: Path,
    n: int = GRADCAM.n,
    layer: str | None = GRADCAM.layer,
    target: str = GRADCAM.target,
    seed: int = GRADCAM.seed,
    batch_size: int = GRADCAM.batch_size,
    device: str | None = None,
    figure_rows: int = GRADCAM.figure_rows,
) -> dict[str, Any]:
    """Grad-CAM of every model on the same n real images; writes the grid, per-image CSV and summary JSON."""
    check_destination(out, [*models, data], folder=True)
    if not models:
        raise UserError("no models given: pass --model PATH (repeatable)")
    check_choice(target, GRADCAM_TARGETS, "--target")
    metas = [classifier_meta(m) for m in models]
    layers = _model_layers(models, metas, layer)
    dev = job_device(device)
    picked = _pick_images(data, n, seed)
    names = distinct_names(metas, models)
    cams: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    with progress() as bar:
        task = bar.add_task("gradcam", total=len(models) * len(picked.store_rows))
        for path, name, meta, model_layer in zip(models, names, metas, layers):
            model, _ = load_classifier(path, dev)
            model = model.to(memory_format=torch.contiguous_format)
            images = (
                resize_images(torch.from_numpy(picked.images).permute(0, 3, 1, 2), meta["image_size"]).float() / 255
            )
            truth = class_mapping(picked.classes, meta["classes"], f"store {data}")[picked.labels]
            probs = _probabilities(model, images, batch_size, dev)
            predicted = probs.argmax(1).numpy()
            chosen = truth if target == "true" else predicted
            maps, change, faith = maps_and_measures(
                model, model_layer, images, chosen, batch_size, dev, seed, lambda k: bar.advance(task, k)
            )
            cams[name] = same_size(maps, picked.images.shape[1])  # models of other input sizes compare
            rows += _image_rows(name, picked, meta["classes"], chosen, predicted, probs, cams[name], change, faith)
    summary = summarise(
        rows, cams, names, models, ", ".join(dict.fromkeys(layers)), target, data, len(picked.store_rows)
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_outputs(out, rows, summary, picked, cams, figure_rows)
    return summary


class _Picked(NamedTuple):
    """The real images every model is explained on: their rows in the store, pixels (N, H, W, 3), labels and the
    store's classes."""

    store_rows: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def _model_layers(models: Sequence[Path], metas: list[dict[str, Any]], layer: str | None) -> list[str]:
    """The layer explained in each model: `layer`, else its architecture's own, checked against the layers that
    architecture offers."""
    layers = [layer or CLASSIFIERS[m["arch"]].cam_layers[0] for m in metas]  # None: each architecture's own
    for path, meta, name in zip(models, metas, layers):
        check_choice(name, CLASSIFIERS[meta["arch"]].cam_layers, f"--layer for {path} ({meta['arch']})")
    return layers


def _pick_images(data: Path, n: int, seed: int) -> _Picked:
    """A seeded pick of `n` images of the store (all where it has fewer), in store order, read once for every model."""
    with Store(data) as store:
        store.require_images()
        pick = np.sort(np.random.default_rng(seed).choice(len(store), min(n, len(store)), replace=False))
        return _Picked(pick, store.images(pick), store.labels[pick], store.classes)


def _probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The model's class probabilities of images (N, 3, S, S in [0, 1]), a batch at a time, on the CPU."""
    with torch.no_grad():
        return torch.cat(
            [model(images[s : s + batch_size].to(device)).softmax(1).cpu() for s in range(0, len(images), batch_size)]
        )


def _image_rows(
    name: str,
    picked: _Picked,
    model_classes: list[str],
    chosen: np.ndarray,
    predicted: np.ndarray,
    probs: torch.Tensor,
    cams: np.ndarray,
    change: np.ndarray,
    faith: np.ndarray,
) -> list[dict[str, Any]]:
    """A model's row per image for per_image.csv: label, explained class, prediction, confidence in the explained
    class, and the map's concentration, confidence change and ROAD."""
    rows = []
    for k, index in enumerate(picked.store_rows):
        row = {
            "model": name,
            "image": int(index),
            "label": picked.classes[picked.labels[k]],
            "target": model_classes[chosen[k]],
            "predicted": model_classes[predicted[k]],
            "confidence": float(probs[k, chosen[k]]),
        }
        row |= concentration(cams[k]) | {"confidence_change": float(change[k]), "road": float(faith[k])}
        rows.append(row)
    return rows


def _write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    picked: _Picked,
    cams: dict[str, np.ndarray],
    figure_rows: int,
) -> None:
    """Write per_image.csv, summary.json and the grid of up to `figure_rows` images spread over the pick (so across
    classes), each beside every model's map."""
    with open(out / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    count = len(picked.store_rows)
    shown = np.unique(np.linspace(0, count - 1, min(figure_rows, count)).round().astype(int))  # across classes
    save_grid(
        picked.images[shown],
        [picked.classes[c] for c in picked.labels[shown]],
        {name: maps[shown] for name, maps in cams.items()},
        out / GRID_FILE,
    )


def maps_and_measures(
    model: torch.nn.Module,
    layer: str,
    images: torch.Tensor,
    chosen: np.ndarray,
    batch_size: int,
    device: torch.device,
    seed: int,
    advance: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A model's Grad-CAM maps of images (N, 3, S, S in [0, 1]) for the chosen classes, with grad-cam's
    confidence change and ROAD faithfulness of each (ROAD's noise seeded by `seed`); `advance` is told of each
    batch's images a third at a time (the maps, then each measure), so that a bar moves within a batch."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    metric = CamMultImageConfidenceChange()
    road = ROADCombined(percentiles=list(ROAD_PERCENTILES))  # faithfulness (Rong et al. 2022): higher is more faithful
    maps, changes, faithful = [], [], []
    torch.manual_seed(seed)  # ROAD's imputation adds noise from torch's global generator
    with GradCAM(model=model, target_layers=[model.layer(layer)]) as cam:
        for s in range(0, len(images), batch_size):
            x = images[s : s + batch_size].to(device)
            classes = chosen[s : s + batch_size]
            batch_maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])
            maps.append(batch_maps)
            advance(len(x) / 3)
            soft = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
            changes.append(np.asarray(metric(x, batch_maps, soft, model)).reshape(-1))
            advance(len(x) / 3)
            faithful.append(np.asarray(road(x, batch_maps, soft, model)).reshape(-1))
            advance(len(x) / 3)
    return np.concatenate(maps), np.concatenate(changes), np.concatenate(faithful)


def same_size(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps (N, h, w) resized to size x size (bilinear), so that models trained at other sizes can be compared."""
    if maps.shape[1:] == (size, size):
        return maps
    resized = F.interpolate(
        torch.from_numpy(maps).float()[:, None], size=(size, size), mode="bilinear", align_corners=False
    )
    return resized[:, 0].clamp(0, 1).numpy()


def summarise(
    rows: list[dict[str, Any]],
    cams: dict[str, np.ndarray],
    names: list[str],
    models: Sequence[Path],
    layer: str,
    target: str,
    data: Path,
    n: int,
) -> dict[str, Any]:
    """Mean and median of each measure per model, and pairwise agreement of the models' maps."""
    summary: dict[str, Any] = {
        "data": str(data),
        "images": n,
        "layer": layer,
        "target": target,
        "models": {},
        "agreement": {},
    }
    for name, path in zip(names, models):
        mine = [r for r in rows if r["model"] == name]
        stats = {
            "path": str(path),
            "accuracy_on_these_images": float(np.mean([r["target"] == r["predicted"] for r in mine]))
            if target == "true"
            else None,
        }
        for key in MEASURES:
            values = np.array([r[key] for r in mine], dtype=float)
            values = values[np.isfinite(values)]
            stats[key] = {
                "mean": float(values.mean()) if len(values) else float("nan"),
                "median": float(np.median(values)) if len(values) else float("nan"),
            }
        summary["models"][name] = stats
    for a, b in combinations(names, 2):
        pairs = [agreement(x, y) for x, y in zip(cams[a], cams[b])]
        summary["agreement"][f"{a} vs {b}"] = {
            k: float(np.nanmean([p[k] for p in pairs])) for k in ("correlation", "top_iou")
        }
    return summary


def save_grid(images: np.ndarray, labels: list[str], cams: dict[str, np.ndarray], path: Path, cell: int = 96) -> None:
    """Rows: images; columns: the image, then each model's map overlaid on it."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont
    from pytorch_grad_cam.utils.image import show_cam_on_image

    headings = [textwrap.wrap(name, width=cell // 6, break_on_hyphens=False) for name in ["image", *cams]]
    pad, left = 4, 90
    top = 8 + 14 * max(len(lines) for lines in headings)  # every model's whole name, wrapped to its column
    canvas = Image.new("RGB", (left + len(headings) * (cell + pad), top + len(images) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=12)
    for c, lines in enumerate(headings):
        draw.multiline_text((left + c * (cell + pad), 4), "\n".join(lines), fill="black", font=font, spacing=2)
    for r, (image, label) in enumerate(zip(images, labels)):
        y = top + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black", font=font)
        base = np.asarray(Image.fromarray(image).resize((cell, cell), Image.BICUBIC), dtype=np.float32) / 255
        tiles = [(base * 255).astype(np.uint8)]
        for name in cams:
            heat = (
                np.asarray(Image.fromarray((cams[name][r] * 255).astype(np.uint8)).resize((cell, cell), Image.BILINEAR))
                / 255
            )
            tiles.append(show_cam_on_image(base, heat.astype(np.float32), use_rgb=True, image_weight=0.55))
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (left + c * (cell + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
