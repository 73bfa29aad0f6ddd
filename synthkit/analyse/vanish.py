"""`synthkit vanish`: line and vanishing-point measures of stores compared side by side, and the
detector scored against ground truth laid out like York Urban (images/ plus gt.json)."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import VANISH
from ..core.errors import UserError
from ..core.jobs import check_destination, check_fits, check_range
from ..core.memory import image_bytes, ram_budget
from ..core.meta import Kind
from ..core.paths import GT_SCORES_JSON, PAIRS_JSON, SUMMARY_JSON
from ..core.progress import progress
from ..core.tables import Column, markdown_lines
from ..io.store import Store
from .geometry import (
    VPResult,
    auc,
    detect_segments,
    direction_errors,
    estimate_vps,
    estimate_vps_uncalibrated,
    horizon_error,
    line_features,
    measures,
    separability,
)

MIN_LENGTH = 10 / 640  # shortest segment kept, as a share of the image's larger side...
MIN_PIXELS = 4.0  # ...and in the image's own pixels: upsampling must not turn pixel stairs into lines
MEASURES = [
    "n_segments",
    "mean_length",
    "total_length",
    "vp_share",
    "intersection_spread_deg",
    "orthogonality_deg",
    "focal",
]
COLOURS = [(230, 60, 60), (60, 200, 60), (60, 120, 255)]
HORIZON_AUC = "horizon_auc_0.25"  # vanish-score's horizon AUC (errors up to a quarter of the height)
VP_AUC_DEGREES = (3, 5, 10)  # vanish-score's VP AUC thresholds
COUNTS_LABEL = "images / with 3 VPs / no lines"
AUC_LABEL = "real or generated, lines alone: ROC AUC"
HISTOGRAMS_FILE = "histograms.png"


def vp_auc_key(degrees: int) -> str:
    """The key of the VP AUC up to `degrees` in vanish-score's scores."""
    return f"vp_auc_{degrees}deg"


def quartiles(measure: dict[str, float]) -> str:
    """A measure over a store's images as 'median [q1, q3]'."""
    return f"{measure['median']:.3g} [{measure['q1']:.3g}, {measure['q3']:.3g}]"


def counts_cell(st: dict[str, Any]) -> str:
    """A store's images, those with three VPs, and those with no lines: 'images / with 3 VPs / no lines'."""
    return f"{st['images']} / {st['with_vps']} / {st['no_lines']}"


def auc_cell(st: dict[str, Any]) -> str:
    """How well a store's lines alone tell it from the real store (ROC AUC); '(real)' for the real store itself."""
    if "line_classifier_auc" in st:
        return f"{st['line_classifier_auc']:.3f}"
    return "(real)" if st.get("kind") == Kind.REAL else "–"


def store_header(name: str, st: dict[str, Any]) -> str:
    """A store's column: its name, size and upsampling."""
    return f"{name} ({st['image_size'][0]} px, upsampled x{st['upsample']})"


def _store_cell(st: dict[str, Any], key: str) -> str:
    return counts_cell(st) if key == "counts" else auc_cell(st) if key == "auc" else quartiles(st["measures"][key])


def store_table(summary: dict[str, Any]) -> tuple[list[Column], list[str]]:
    """vanish's summary as a table, a column per store and a row per measure (after the counts and, where measured,
    the AUC): its columns and its rows' keys, for Markdown or the terminal."""
    stores = summary["stores"]
    first = next(iter(stores.values()))
    keys = ["counts", *(["auc"] if any("line_classifier_auc" in st for st in stores.values()) else [])]
    keys += [key for key in MEASURES if key in first["measures"]]
    labels = {"counts": COUNTS_LABEL, "auc": AUC_LABEL}
    columns = [Column("measure", "measure", lambda key: labels.get(key, key))] + [
        Column(name, store_header(name, st), lambda key, st=st: _store_cell(st, key), right=True)
        for name, st in stores.items()
    ]
    return columns, keys


def markdown_rows(summary: dict[str, Any]) -> list[str]:
    """vanish's summary as a Markdown table: median [q1, q3] per store."""
    return markdown_lines(*store_table(summary))


# A row per store of a summary["stores"].items(): the report's table of the scene study.
SCENE_COLUMNS = (
    Column("store", "store", lambda item: item[0]),
    Column("images", "images", lambda item: str(item[1]["images"]), right=True),
    Column("size", "size", lambda item: str(item[1]["image_size"][0]), right=True),
    Column("with_vps", "with 3 VPs", lambda item: str(item[1]["with_vps"]), right=True),
    Column("segments", "segments", lambda item: f"{item[1]['measures']['n_segments']['median']:.0f}", right=True),
    Column("vp_share", "VP support", lambda item: f"{item[1]['measures']['vp_share']['median']:.3f}", right=True),
    Column(
        "spread",
        "intersection spread (deg)",
        lambda item: f"{item[1]['measures']['intersection_spread_deg']['median']:.2f}",
        right=True,
    ),
    Column("auc", "lines-only real/generated AUC", lambda item: auc_cell(item[1]), right=True),
)

# A row per store of pairs.json's items(): each sample against its own source.
PAIR_COLUMNS = (
    Column("store", "store", lambda item: item[0]),
    Column("samples", "samples", lambda item: str(item[1]["samples"]), right=True),
    Column(
        "horizon",
        "median horizon error (share of height)",
        lambda item: f"{item[1]['median_horizon_error']:.3f}",
        right=True,
    ),
    Column("within", "within 5% of the height", lambda item: f"{100 * item[1]['within_5pct_height']:.0f}%", right=True),
    Column("vp", "median VP error (deg)", lambda item: f"{item[1]['median_vp_error_deg']:.1f}", right=True),
)


def pair_line(name: str, p: dict[str, Any]) -> str:
    """A store's samples against their sources in a line, from the cells of PAIR_COLUMNS."""
    cell = {c.key: c.cell((name, p)) for c in PAIR_COLUMNS}
    return (
        f"{name} against its sources: median horizon error {cell['horizon']} of the height, {cell['within']} within "
        f"5%, median VP error {cell['vp']} deg ({cell['samples']} samples, {p['with_source_vps']} sources with VPs)"
    )


# vanish-score's scores, (key, label), a column each of its table.
GT_SCORES = (
    (HORIZON_AUC, "horizon AUC@0.25"),
    *((vp_auc_key(t), f"VP AUC@{t}") for t in VP_AUC_DEGREES),
    ("median_seconds_per_image", "s/image"),
)
# A row per mode, over (mode, scores[mode]) items.
GT_COLUMNS = (
    Column("mode", "mode", lambda item: f"{item[0]} ({item[1]['images']} images)"),
    *(
        Column(key, label, lambda item, key=key: f"{item[1][key]:.2f}" if key in item[1] else "-", right=True)
        for key, label in GT_SCORES
    ),
)


def ground_truth_rows(scores: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """vanish-score's scores as GT_COLUMNS' rows: calibrated, then uncalibrated."""
    return [(mode, scores[mode]) for mode in ("calibrated", "uncalibrated")]


def ground_truth_sentence(scores: dict[str, Any]) -> str:
    """vanish-score's AUCs in a sentence: calibrated horizon and VP, and uncalibrated horizon."""
    c, u = scores["calibrated"], scores["uncalibrated"]
    vp = [vp_auc_key(t) for t in VP_AUC_DEGREES]
    calibrated = (
        f"calibrated horizon AUC {c[HORIZON_AUC]:.2f}%, VP AUC@{'/'.join(map(str, VP_AUC_DEGREES))} deg "
        + " / ".join(f"{c[k]:.2f}" for k in vp)
        + "%"
        if vp[0] in c
        else "no calibrated entries"
    )
    return (
        f"The detector on {scores['images']} ground-truth images of `{scores['folder']}`: {calibrated}; "
        f"uncalibrated horizon AUC {u[HORIZON_AUC]:.2f}%."
    )


def auto_upsample(height: int, width: int, target: int = 256) -> int:
    """Small images are upsampled (bicubic) so their shorter side is at least `target` before LSD."""
    return max(1, math.ceil(target / min(height, width)))


def analyse_image(
    image: np.ndarray,
    upsample: int,
    focal: float | None = None,
    principal_point: tuple[float, float] | None = None,
    seed: int = VANISH.seed,
) -> VPResult:
    """Segments and VPs of one image: calibrated when a focal length is given, else uncalibrated."""
    h, w = image.shape[:2]
    segments = detect_segments(image, upsample, max(MIN_LENGTH * max(h, w), MIN_PIXELS))
    if focal is not None:
        pp = principal_point or ((w - 1) / 2, (h - 1) / 2)
        return estimate_vps(segments, focal, pp, seed=seed)[0]
    return estimate_vps_uncalibrated(segments, w, h, seed=seed)


def prediction_record(name: str, result: VPResult, mode: str) -> dict[str, Any]:
    """The JSON-lines record any scorer can read: VPs as homogeneous pixel points, horizon as (a, b, c)."""
    horizon = result.horizon()
    return {
        "image": name,
        "mode": mode,
        "focal": result.focal,
        "focal_estimated": result.focal_estimated,
        "principal_point": list(result.principal_point),
        "n_segments": int(len(result.segments)),
        "vps": result.vps().tolist() if result.found else [],
        "vertical": result.vertical,
        "horizon": horizon.tolist() if horizon is not None else None,
        "status": "ok" if result.found else ("no lines" if len(result.segments) == 0 else "too few lines"),
    }


def run_vanish(
    paths: Sequence[Path],
    out: Path,
    sources: Path | None = None,
    n: int | None = VANISH.n,
    upsample: int | None = VANISH.upsample,
    focal: float | None = VANISH.focal,
    seed: int = VANISH.seed,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`synthkit vanish`: every store (and the output folder, and the upsampled size) checked before anything is
    written; with `sources`, each store of samples that name their source rows (DI, img2img) is paired with it
    (pairs.json, pairs_<store>.png); then the measures of every store (summary.json, written last: make's target).
    Returns the summary and the pairs."""
    check_destination(out, [*paths, sources], folder=True)
    if focal is not None:
        check_range(focal, "--focal", 0, open_low=True)
    paired = []
    for path in paths:
        with Store(path) as store:
            store.require_images()
            if upsample:
                side = min(store.image_shape[:2]) * upsample
                check_fits(4 * image_bytes(1, side), ram_budget(), f"an image upsampled x{upsample} to {side} px")
            # DI and img2img samples name their source row; prompt-only samples have -1
            if (
                sources
                and store.meta.get("kind") != Kind.REAL
                and "source_index" in store.column_names
                and (store.column("source_index") >= 0).any()
            ):
                paired.append(path)
    if sources:
        if not paired:
            raise UserError(
                "--sources: none of the stores has samples with a source (only DI and img2img samples know theirs)"
            )
        with Store(sources) as src:
            for path in paired:
                with Store(path) as store:
                    check_made_from(store, src)
    pairs = {path.stem: source_geometry(path, sources, out, n=n, upsample=upsample, seed=seed) for path in paired}
    if pairs:
        (out / PAIRS_JSON).write_text(json.dumps(pairs, indent=1))
    return analyse_stores(paths, out, n=n, upsample=upsample, focal=focal, seed=seed), pairs


def analyse_stores(
    paths: Sequence[Path],
    out: Path,
    n: int | None = VANISH.n,
    upsample: int | None = VANISH.upsample,
    focal: float | None = VANISH.focal,
    seed: int = VANISH.seed,
    overlays: int = VANISH.overlays,
) -> dict[str, Any]:
    """Measures for up to n images of each store: per-image CSV, predictions, summary, histograms, overlays."""
    if not paths:
        raise UserError("no stores given: pass --data NAME (repeatable)")
    for path in paths:  # every input checked before anything is written
        with Store(path) as store:
            store.require_images()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"stores": {}}
    features: dict[str, list[np.ndarray]] = {}
    for path in paths:
        with Store(path) as store:
            pick = (
                np.arange(len(store))
                if n is None or n >= len(store)
                else np.sort(np.random.default_rng(seed).choice(len(store), n, replace=False))
            )
            h, w = store.image_shape[:2]
            factor = upsample or auto_upsample(h, w)
            name = path.stem
            shown = []  # the first few images and detections, for the overlay figure
            labels = store.labels
            with progress() as bar, open(out / f"predictions_{name}.jsonl", "w") as jsonl:
                task = bar.add_task(f"vanish {name}", total=len(pick))
                for start in range(0, len(pick), 256):
                    batch = pick[start : start + 256]
                    for index, image, label in zip(batch, store.images(batch), labels[batch]):
                        result = analyse_image(image, factor, focal, seed=seed)
                        if len(shown) < overlays:
                            shown.append((image, result))
                        record = prediction_record(f"{name}:{index}", result, "calibrated" if focal else "uncalibrated")
                        image_measures = measures(result, w, h)
                        features.setdefault(name, []).append(line_features(result, w, h, image_measures))
                        row = {"store": name, "index": int(index), "label": store.classes[label]} | image_measures
                        rows.append(row | {"status": record["status"]})
                        jsonl.write(json.dumps(record) + "\n")
                    bar.advance(task, len(batch))
            store_rows = [r for r in rows if r["store"] == name]
            summary["stores"][name] = {
                "path": str(path),
                "kind": store.meta.get("kind"),
                "images": len(pick),
                "image_size": [h, w],
                "upsample": factor,
                "with_vps": sum(r["status"] == "ok" for r in store_rows),
                "no_lines": sum(r["status"] == "no lines" for r in store_rows),
                "measures": summarise(store_rows),
            }
            save_overlays(shown, factor, out / f"overlay_{name}.png", f"{name} ({h}x{w}, upsampled x{factor})")
    real = [name for name, st in summary["stores"].items() if st["kind"] == "real"]
    for name, st in summary["stores"].items():  # real or generated, from lines alone: 0.5 is "as real as real"
        if real and name != real[0]:
            st["line_classifier_auc"] = separability(np.stack(features[real[0]]), np.stack(features[name]), seed)
            st["line_classifier_against"] = real[0]
    write_csv(out / "per_image.csv", rows)
    save_histograms(rows, out / HISTOGRAMS_FILE)
    summary["mode"] = "calibrated" if focal else "uncalibrated (principal point at the centre, focal length by search)"
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and interquartile range of each measure over the images where it is defined."""
    out = {}
    for key in MEASURES:
        values = np.array([r[key] for r in rows], dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            out[key] = {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(len(values))}
        else:
            out[key] = {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "n": 0}
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def pair_errors(sample: np.ndarray, source: np.ndarray, upsample: int, seed: int = 0) -> dict[str, Any]:
    """Does a sample keep its source's geometry? Both detected at the sample's size: the source uncalibrated
    (which estimates the focal length, once per pair), the sample with that focal length and the image centre.
    Horizon distance as a share of the height (inf when either has no horizon) and the mean angle (degrees)
    from the source's three vanishing directions to the sample's nearest ones (90 when the sample has none)."""
    h, w = sample.shape[:2]
    if source.shape[:2] != (h, w):
        from PIL import Image

        source = np.asarray(Image.fromarray(source).resize((w, h), Image.BICUBIC))
    ref = analyse_image(source, upsample, None, seed=seed)
    out = analyse_image(sample, upsample, ref.focal, seed=seed)
    truth = ref.horizon()
    horizon = horizon_error(out.horizon(), truth, w, h) if truth is not None else float("inf")
    vp = float(direction_errors(out.directions, ref.directions).mean()) if ref.found else float("nan")
    return {
        "horizon_error": horizon,
        "vp_error_deg": vp,
        "focal": ref.focal,
        "source_found": ref.found,
        "sample_found": out.found,
        "source_result": ref,
        "sample_result": out,
        "source_image": source,
    }


def lineage_fingerprints(meta: Any) -> set[str]:
    """Fingerprints of every store a store came from: its sources, the sources of merged shards and of a
    filtered store's input, however deep."""
    found: set[str] = set()
    if isinstance(meta, dict):
        for source in meta.get("sources", []) or []:
            if isinstance(source, dict):
                if source.get("fingerprint"):
                    found.add(str(source["fingerprint"]))
                found |= lineage_fingerprints(source)
        found |= lineage_fingerprints((meta.get("filter") or {}).get("source_meta"))
    return found


def check_made_from(store: Store, sources: Store) -> None:
    """Refuse to pair a store's samples with another store's images than the ones they were made from."""
    lineage = lineage_fingerprints(store.meta)
    if lineage and sources.fingerprint not in lineage:
        raise UserError(
            f"{store.path} was not made from {sources.path} (no store it came from has that store's fingerprint)"
        )


def source_geometry(
    path: Path,
    sources: Path,
    out: Path,
    n: int | None = VANISH.n,
    upsample: int | None = VANISH.upsample,
    seed: int = VANISH.seed,
    shown: int = VANISH.pairs_shown,
) -> dict[str, Any]:
    """pair_errors for up to n samples of a store whose rows name their source (the column source_index) in `sources`;
    writes pairs_<store>.csv and pairs_<store>.png (sources beside samples, both horizons drawn)."""
    with Store(path) as store, Store(sources) as src:
        if "source_index" not in store.column_names:
            raise UserError(f"store {path} has no source_index column: only DI and img2img samples know their source")
        index = store.column("source_index")
        valid = np.flatnonzero((index >= 0) & (index < len(src)))
        if len(valid) == 0:
            raise UserError(f"no sample of {path} has a source in {sources}")
        check_made_from(store, src)
        pick = (
            valid
            if n is None or n >= len(valid)
            else np.sort(np.random.default_rng(seed).choice(valid, n, replace=False))
        )
        unique, back = np.unique(index[pick], return_inverse=True)  # several samples may share a source
        samples, originals = store.images(pick), src.images(unique)[back]
        factor = upsample or auto_upsample(*samples.shape[1:3])
        rows, figure = [], []
        with progress() as bar:
            task = bar.add_task(f"pairs {path.stem}", total=len(pick))
            for row, sample, source in zip(pick, samples, originals):
                e = pair_errors(sample, source, factor, seed)
                rows.append(
                    {
                        "store": path.stem,
                        "row": int(row),
                        "source_index": int(index[row]),
                        "horizon_error": e["horizon_error"],
                        "vp_error_deg": e["vp_error_deg"],
                        "focal": e["focal"],
                        "source_found": e["source_found"],
                        "sample_found": e["sample_found"],
                    }
                )
                if len(figure) < shown and e["source_found"]:
                    figure += [(e["source_image"], e["source_result"]), (sample, e["sample_result"])]
                bar.advance(task)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / f"pairs_{path.stem}.csv", rows)
    save_overlays(figure, factor, out / f"pairs_{path.stem}.png", f"{path.stem}: each source, then its sample")
    horizon = np.array([r["horizon_error"] for r in rows])
    vp = np.array([r["vp_error_deg"] for r in rows if r["source_found"]])
    return {
        "samples": len(rows),
        "sources": str(sources),
        "with_source_vps": int(len(vp)),
        "median_horizon_error": float(np.median(horizon)),
        "within_5pct_height": float(np.mean(horizon <= 0.05)),
        "median_vp_error_deg": float(np.median(vp)) if len(vp) else float("nan"),
    }


def _number_list(value: Any, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length and all(isinstance(v, (int, float)) for v in value)


def ground_truth_entry(entry: Any, k: int) -> dict[str, Any]:
    """One gt.json entry checked: name, file, width, height and horizon are needed (a horizon as {"abc": [a, b, c]},
    [a, b, c], or {"points": [[x1, y1], [x2, y2]]}); focal_px, cx, cy and vps (each {"dir": [x, y, z]}) together
    make it calibrated. Returns the entry with the horizon as a line `abc` and `calibrated` set."""
    where = f"gt.json entry {k} ({entry.get('name', 'no name')})" if isinstance(entry, dict) else f"gt.json entry {k}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not an object")
    missing = [key for key in ("name", "file", "width", "height", "horizon") if key not in entry]
    if missing:
        raise UserError(f"{where} has no {', '.join(missing)}")
    if not (
        isinstance(entry["width"], int)
        and isinstance(entry["height"], int)
        and entry["width"] > 0
        and entry["height"] > 0
    ):
        raise UserError(f"{where}: width and height must be positive integers")
    if not isinstance(entry["file"], str) or not entry["file"]:
        raise UserError(f"{where}: file must be a path inside the folder")
    horizon = entry["horizon"]
    if isinstance(horizon, dict) and _number_list(horizon.get("abc"), 3):
        abc = np.array(horizon["abc"], float)
    elif _number_list(horizon, 3):
        abc = np.array(horizon, float)
    elif (
        isinstance(horizon, dict)
        and isinstance(horizon.get("points"), list)
        and len(horizon["points"]) == 2
        and all(_number_list(p, 2) for p in horizon["points"])
    ):
        (x1, y1), (x2, y2) = horizon["points"]
        abc = np.cross([x1, y1, 1.0], [x2, y2, 1.0])
    else:
        raise UserError(
            f'{where}: horizon must be {{"abc": [a, b, c]}}, [a, b, c] or {{"points": [[x1, y1], [x2, y2]]}}'
        )
    if abs(abc[1]) < 1e-12:
        raise UserError(f"{where}: the horizon is vertical")
    camera = [key for key in ("focal_px", "cx", "cy", "vps") if key in entry]
    if camera and len(camera) < 4:
        raise UserError(f"{where} has {', '.join(camera)} but not all of focal_px, cx, cy and vps")
    if camera and not (
        isinstance(entry["vps"], list)
        and entry["vps"]
        and all(isinstance(v, dict) and _number_list(v.get("dir"), 3) for v in entry["vps"])
    ):
        raise UserError(f'{where}: vps must be a list of {{"dir": [x, y, z]}}')
    if camera and not (
        _number_list([entry["focal_px"], entry["cx"], entry["cy"]], 3)
        and all(math.isfinite(v) for v in (entry["focal_px"], entry["cx"], entry["cy"]))
        and entry["focal_px"] > 0
    ):
        raise UserError(f"{where}: focal_px, cx and cy must be finite numbers, focal_px above 0")
    return dict(entry, abc=abc, calibrated=bool(camera))


def evaluate_ground_truth(folder: Path, out: Path, limit: int | None = None, seed: int = VANISH.seed) -> dict[str, Any]:
    """Score the detector on a York-Urban-style folder; write predictions. Entries with a camera and vanishing
    points are scored calibrated and uncalibrated; horizon-only entries (Eurasian Cities, Horizon Lines in the
    Wild) uncalibrated, horizon only."""
    entries = _ground_truth_entries(folder, out, limit)
    _check_ground_truth_images(folder, entries)
    out.mkdir(parents=True, exist_ok=True)
    errors, seconds, overlay = _detect_ground_truth(folder, out, entries, seed)
    scores = _ground_truth_scores(errors, seconds, len(entries), folder)
    (out / GT_SCORES_JSON).write_text(json.dumps(scores, indent=2))
    save_overlays(overlay, 1, out / "overlay_gt.png", f"{folder.name}: detections")
    return scores


def _ground_truth_entries(folder: Path, out: Path, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` (else all) entries of the folder's gt.json, each checked by ground_truth_entry; the folder,
    its gt.json and the output folder are checked first."""
    if not Path(folder).is_dir():
        raise UserError(f"--gt {folder} is not a folder")
    check_destination(out, [folder], folder=True)
    gt_file = folder / "gt.json"
    if not gt_file.exists():
        raise UserError(f"{folder} has no gt.json: --gt needs a folder laid out like York Urban (images/ and gt.json)")
    try:
        entries = json.loads(gt_file.read_text())["images"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{gt_file} is not a ground-truth file like York Urban's (no 'images' list)") from None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{gt_file} lists no images")
    return [ground_truth_entry(e, k) for k, e in enumerate(entries[:limit] if limit else entries)]


def _check_ground_truth_images(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Refuse entries whose image is missing or unreadable: every image is checked before anything is written."""
    from PIL import Image

    for entry in entries:
        path = folder / entry["file"]
        if not path.is_file():
            raise UserError(f"{path} (listed in gt.json for {entry['name']}) does not exist")
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError):
            raise UserError(f"{path} (listed in gt.json for {entry['name']}) is not a readable image") from None


def _detect_ground_truth(
    folder: Path, out: Path, entries: list[dict[str, Any]], seed: int
) -> tuple[dict[str, Any], dict[str, list[float]], list[tuple[np.ndarray, VPResult]]]:
    """Detect on every entry's image, calibrated (where it has a camera) then uncalibrated, writing each mode's
    predictions; returns each mode's horizon and VP errors, its seconds per image, and the first few detections."""
    from PIL import Image

    errors: dict[str, Any] = {"calibrated": {"horizon": [], "vp": []}, "uncalibrated": {"horizon": [], "vp": []}}
    seconds: dict[str, list[float]] = {"calibrated": [], "uncalibrated": []}
    overlay = []
    files = {mode: open(out / f"predictions_gt_{mode}.jsonl", "w") for mode in errors}
    try:
        with progress() as bar:
            task = bar.add_task("vanish gt", total=len(entries))
            for entry in entries:
                image = np.asarray(Image.open(folder / entry["file"]).convert("RGB"))
                for mode in ("calibrated", "uncalibrated") if entry["calibrated"] else ("uncalibrated",):
                    result, took = _timed_detection(image, entry, mode, seed)
                    seconds[mode].append(took)
                    errors[mode]["horizon"].append(
                        horizon_error(result.horizon(), entry["abc"], entry["width"], entry["height"])
                    )
                    if mode == "calibrated":
                        truth_d = np.array([v["dir"] for v in entry["vps"]], float)
                        errors[mode]["vp"].extend(direction_errors(result.directions, truth_d).tolist())
                    files[mode].write(json.dumps(prediction_record(entry["name"], result, mode)) + "\n")
                    if len(overlay) < 4 and (mode == "calibrated" or not entry["calibrated"]):
                        overlay.append((image, result))
                bar.advance(task)
    finally:
        for f in files.values():
            f.close()
    return errors, seconds, overlay


def _timed_detection(image: np.ndarray, entry: dict[str, Any], mode: str, seed: int) -> tuple[VPResult, float]:
    """The detection of one ground-truth image in `mode` (calibrated with the entry's camera) and the seconds it
    took, the speed vanish-score reports."""
    start = time.perf_counter()
    if mode == "calibrated":
        result = analyse_image(image, 1, entry["focal_px"], (entry["cx"], entry["cy"]), seed=seed)
    else:
        result = analyse_image(image, 1, None, seed=seed)
    return result, time.perf_counter() - start


def _ground_truth_scores(
    errors: dict[str, Any], seconds: dict[str, list[float]], images: int, folder: Path
) -> dict[str, Any]:
    """vanish-score's scores from each mode's errors: horizon and VP AUCs (in %) and median seconds per image, or a
    note where no entry could be scored in that mode."""
    scores: dict[str, Any] = {"images": images, "folder": str(folder)}
    for mode, errs in errors.items():
        if not errs["horizon"]:
            scores[mode] = {
                "images": 0,
                "note": "no entry has a camera (focal_px, cx, cy) and vanishing points: nothing to score calibrated",
            }
            continue
        scores[mode] = {
            "images": len(errs["horizon"]),
            HORIZON_AUC: 100 * auc(np.array(errs["horizon"]), 0.25),
            "median_seconds_per_image": float(np.median(seconds[mode])),
        }
        if errs["vp"]:
            scores[mode].update({vp_auc_key(t): 100 * auc(np.array(errs["vp"]), t) for t in VP_AUC_DEGREES})
    scores["uncalibrated"]["focal"] = (
        "principal point at the image centre; focal length chosen by a grid search (0.45-2.5 x the larger side) "
        "maximising Manhattan support"
    )
    return scores


def draw_overlay(image: np.ndarray, result: VPResult, factor: int) -> np.ndarray:
    """The image (upsampled) with segments coloured by the VP they support, VPs inside it, and the horizon."""
    import cv2

    canvas = (
        cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor != 1 else image.copy()
    )
    canvas = np.ascontiguousarray((canvas * 0.6).astype(np.uint8))
    scale = lambda x, y: (int(round((x + 0.5) * factor - 0.5)), int(round((y + 0.5) * factor - 0.5)))  # noqa: E731
    for k, seg in enumerate(result.segments):
        vp = result.assignment[k] if len(result.assignment) else -1
        colour = COLOURS[vp] if vp >= 0 else (200, 200, 200)
        cv2.line(canvas, scale(seg[0], seg[1]), scale(seg[2], seg[3]), colour, max(1, factor // 4 + 1), cv2.LINE_AA)
    horizon = result.horizon()
    h, w = image.shape[:2]
    if horizon is not None and abs(horizon[1]) > 1e-9:
        y0, y1 = (-(horizon[0] * x + horizon[2]) / horizon[1] for x in (0, w - 1))
        if max(abs(y0), abs(y1)) < 1e5:
            cv2.line(canvas, scale(0, y0), scale(w - 1, y1), (255, 220, 0), max(1, factor // 4 + 1), cv2.LINE_AA)
    if result.found:
        for k, v in enumerate(result.vps()):
            if abs(v[2]) > 1e-9 and 0 <= v[0] / v[2] < w and 0 <= v[1] / v[2] < h:
                cv2.circle(canvas, scale(v[0] / v[2], v[1] / v[2]), 4 + factor, COLOURS[k], -1)
    return canvas


def save_overlays(
    items: list[tuple[np.ndarray, VPResult]], factor: int, path: Path, title: str, height: int = 256
) -> None:
    """A row of overlays (see draw_overlay), each scaled to `height` pixels, keeping its aspect."""
    from PIL import Image, ImageDraw, ImageFont

    if not items:
        return
    tiles = []
    for image, result in items:
        tile = Image.fromarray(draw_overlay(image, result, factor))
        tiles.append(tile.resize((round(tile.width * height / tile.height), height), Image.LANCZOS))
    canvas = Image.new("RGB", (sum(t.width + 4 for t in tiles) + 4, height + 28), "white")
    ImageDraw.Draw(canvas).text((4, 4), title, fill="black", font=ImageFont.load_default(size=14))
    x = 4
    for tile in tiles:
        canvas.paste(tile, (x, 24))
        x += tile.width + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_histograms(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per measure, one histogram per store."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = list(dict.fromkeys(r["store"] for r in rows))
    keys = MEASURES[:-1]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, key in zip(axes.flat, keys):
        for store in stores:
            values = np.array([r[key] for r in rows if r["store"] == store], dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                ax.hist(values, bins=20, alpha=0.5, label=f"{store} (n={len(values)})", density=True)
        ax.set_title(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
