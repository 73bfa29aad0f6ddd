"""`synthkit filter`: keep the most useful share of each class of a synthetic store, ranked by a criterion.

Criteria (higher is kept):
- confidence: the real-trained classifier's probability of the image's own label;
- margin: that probability minus the largest other class's;
- cam: Pearson correlation of the image's Grad-CAM map (the real-trained classifier, own label) with that
  class's typical map, the mean over the real store's images of the class (`real` is needed);
- geometry: Manhattan support, the share of an image's line segments that point at its vanishing points
  (0 where none are found): for scene data.
Ties are broken by store row, so the same inputs always keep the same rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..classify.model import class_mapping, classifier_meta, load_classifier, resize_images
from ..core.config import FILTER, FILTER_CRITERIA, GRADCAM, check_choice
from ..core.device import job_device
from ..core.errors import UserError
from ..core.jobs import check_output
from ..core.meta import provenance
from ..core.outputs import locked_output
from ..core.paths import partial_path
from ..core.progress import progress
from ..io.checkpoint import weights_fingerprint
from ..io.store import DerivedWriter, Store


def _probabilities(model, images: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    with torch.no_grad():
        return torch.cat(
            [
                model(_tensor(images[s : s + batch], device, model.image_size)).softmax(1).float().cpu()
                for s in range(0, len(images), batch)
            ]
        ).numpy()


def _tensor(images: np.ndarray, device: torch.device, size: int) -> torch.Tensor:
    return resize_images(torch.from_numpy(images).permute(0, 3, 1, 2).to(device), size).float() / 255


def _cams(model, images: np.ndarray, targets: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """Grad-CAM maps (N, S, S) at the model's input size for the given target classes, at grad-cam's default for our
    layer choice."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model.to(memory_format=torch.contiguous_format)
    maps = []
    with GradCAM(model=model, target_layers=[model.layer(GRADCAM.layer)]) as cam:
        for s in range(0, len(images), batch):
            maps.append(
                cam(
                    input_tensor=_tensor(images[s : s + batch], device, model.image_size),
                    targets=[ClassifierOutputTarget(int(c)) for c in targets[s : s + batch]],
                )
            )
    return np.concatenate(maps)


def _correlation(maps: np.ndarray, typical: np.ndarray) -> np.ndarray:
    a = maps.reshape(len(maps), -1) - maps.reshape(len(maps), -1).mean(1, keepdims=True)
    b = typical.reshape(len(typical), -1) - typical.reshape(len(typical), -1).mean(1, keepdims=True)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denominator > 0, (a * b).sum(1) / np.where(denominator > 0, denominator, 1), 0.0)


def manhattan_support(image: np.ndarray, seed: int = 0) -> float:
    """Share of the image's line segments assigned to one of its three vanishing points (0 without VPs)."""
    from .vanish import analyse_image, auto_upsample

    result = analyse_image(image, auto_upsample(*image.shape[:2]), seed=seed)
    if not result.found or len(result.segments) == 0:
        return 0.0
    return float((result.assignment >= 0).mean())


def scores(
    data: Path,
    classifier: Path,
    by: str,
    real: Path | None = None,
    device: str | None = None,
    batch_size: int = FILTER.batch_size,
) -> np.ndarray:
    """The criterion's score of every image of the store (higher is better)."""
    check_choice(by, FILTER_CRITERIA, "--by")
    if by == "cam" and real is None:
        raise UserError("--by cam needs --real STORE: the real images that give each class's typical attention")
    meta = classifier_meta(classifier)
    dev = job_device(device)
    with Store(data) as store:
        store.require_images()
        images, labels = store.images(), class_mapping(store.classes, meta["classes"], f"store {data}")[store.labels]
    if by == "geometry":
        with progress() as bar:
            task = bar.add_task("geometry", total=len(images))
            out = []
            for image in images:
                out.append(manhattan_support(image))
                bar.advance(task)
        return np.array(out)
    model, _ = load_classifier(classifier, dev)
    if by in ("confidence", "margin"):
        probs = _probabilities(model, images, dev, batch_size)
        own = probs[np.arange(len(labels)), labels]
        if by == "confidence":
            return own
        others = probs.copy()
        others[np.arange(len(labels)), labels] = -np.inf
        return own - others.max(1)
    with Store(real) as r:
        real_images = r.images()
        real_labels = class_mapping(r.classes, meta["classes"], f"store {real}")[r.labels]
    missing = sorted(set(labels.tolist()) - set(real_labels.tolist()))
    if missing:
        raise UserError(f"--real {real} has no images of {', '.join(meta['classes'][c] for c in missing)}")
    real_maps = _cams(model, real_images, real_labels, dev, batch_size)
    typical = np.stack(
        [
            real_maps[real_labels == c].mean(0) if (real_labels == c).any() else np.zeros(real_maps.shape[1:])
            for c in range(len(meta["classes"]))
        ]
    )
    return _correlation(_cams(model, images, labels, dev, batch_size), typical[labels])


def select(labels: np.ndarray, values: np.ndarray, keep: float) -> tuple[np.ndarray, dict[int, float]]:
    """Rows kept (sorted) and the threshold of each class: the ceil(keep * n) best of each class, ties by row."""
    kept, thresholds = [], {}
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = rows[np.lexsort((rows, -values[rows]))]
        chosen = order[: math.ceil(round(keep * len(rows), 9))]  # 0.14 * 50 is 7.000000000000001
        kept.append(chosen)
        thresholds[int(c)] = float(values[chosen].min())
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64), thresholds


@locked_output("out")
def filter_store(
    data: Path,
    classifier: Path,
    out: Path,
    keep: float = FILTER.keep,
    by: str = FILTER.by,
    real: Path | None = None,
    device: str | None = None,
    batch_size: int = FILTER.batch_size,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the kept rows of `data` to `out` with their columns, the score of each kept row and the source row,
    and in its metadata the criterion, the threshold per class and the scores' spread. Returns that metadata."""
    if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
        raise UserError(f"--keep must be in (0, 1], got {keep}")
    check_output(
        Path(out), [partial_path(Path(out))], overwrite, resume=False, resumable=False, inputs=[data, classifier, real]
    )
    values = scores(data, classifier, by, real, device, batch_size)
    with Store(data) as store:
        store.require_images()
        kept, thresholds = select(store.labels, values, keep)
        params = {
            "data": str(data),
            "classifier": str(classifier),
            "keep": keep,
            "by": by,
            "real": str(real) if real else None,
        }
        meta = provenance(
            store.meta.get("kind", "synthetic"),
            params,
            [
                {"path": str(data), "fingerprint": store.fingerprint},
                {"path": str(classifier), "fingerprint": weights_fingerprint(classifier)},
            ],
        )
        meta["filter"] = {
            "criterion": by,
            "keep": keep,
            "kept": int(len(kept)),
            "of": len(store),
            "threshold_per_class": {store.classes[c]: t for c, t in thresholds.items()},
            "score_quantiles": {q: float(np.quantile(values, q / 100)) for q in (0, 10, 50, 90, 100)},
            "source_meta": store.meta,
        }
        extra = {"filter_score": "float", "filter_source_row": "int"}
        with DerivedWriter(store, out, meta, extra, len(kept), overwrite=overwrite) as writer:
            for s in range(0, len(kept), 4096):
                rows = kept[s : s + 4096]
                writer.append_rows(rows, filter_score=values[rows], filter_source_row=rows)
    return meta
