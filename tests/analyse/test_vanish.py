import json
from pathlib import Path

import numpy as np
import pytest
from test_geometry import F, H, W, render_box, rotation

from synthkit.core.meta import provenance
from synthkit.io.store import StoreWriter

from conftest import run


def make_gt_folder(root):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    entries = []
    for k, (yaw, pitch) in enumerate([(30, 5), (-25, 8)]):
        R = rotation(yaw, pitch)
        Image.fromarray(render_box(R, seed=k)).save(root / "images" / f"P{k}.jpg", quality=95)
        K = np.array([[F, 0, (W - 1) / 2], [0, F, (H - 1) / 2], [0, 0, 1]])
        h = np.cross(K @ R[:, 0], K @ R[:, 2])
        h = h / np.linalg.norm(h[:2])
        h = -h if h[1] < 0 else h
        entries.append(
            {
                "name": f"P{k}",
                "file": f"images/P{k}.jpg",
                "width": W,
                "height": H,
                "focal_px": F,
                "cx": (W - 1) / 2,
                "cy": (H - 1) / 2,
                "vps": [{"dir": list(R[:, i])} for i in range(3)],
                "horizon": {"abc": list(h)},
            }
        )
    (root / "gt.json").write_text(json.dumps({"images": entries}))
    return root


def test_ground_truth_scoring_writes_predictions(tmp_path):
    gt = make_gt_folder(tmp_path / "gt")
    result = run("vanish-score", "--gt", gt, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "out" / "gt_scores.json").read_text())
    assert scores["calibrated"]["horizon_auc_0.25"] > 95 and scores["calibrated"]["vp_auc_3deg"] > 70
    assert scores["uncalibrated"]["horizon_auc_0.25"] > 90
    lines = (tmp_path / "out" / "predictions_gt_calibrated.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["image"] == "P0" and len(record["vps"]) == 3 and len(record["horizon"]) == 3 and record["focal"] == F
    assert (tmp_path / "out" / "overlay_gt.png").exists()


def horizon_only(gt: Path, out: Path, form: str = "abc") -> Path:
    """The same folder with a gt.json of only name, file, width, height and horizon (no camera, no VPs)."""
    import shutil

    shutil.copytree(gt, out)
    entries = []
    for e in json.loads((gt / "gt.json").read_text())["images"]:
        a, b, c = e["horizon"]["abc"]
        ys = [-(a * x + c) / b for x in (0, e["width"] - 1)]
        horizon = {"abc": [a, b, c]} if form == "abc" else {"points": [[0, ys[0]], [e["width"] - 1, ys[1]]]}
        entries.append({k: e[k] for k in ("name", "file", "width", "height")} | {"horizon": horizon})
    (out / "gt.json").write_text(json.dumps({"images": entries}))
    return out


@pytest.mark.parametrize("form", ["abc", "points"])
def test_horizon_only_ground_truth_is_scored_uncalibrated(tmp_path, form):
    full = make_gt_folder(tmp_path / "gt")
    both = json.loads((tmp_path / "gt" / "gt.json").read_text())
    run("vanish-score", "--gt", full, "--out", tmp_path / "full")
    only = horizon_only(full, tmp_path / "only", form)
    result = run("vanish-score", "--gt", only, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "no entry has a camera" in result.output
    scores = json.loads((tmp_path / "out" / "gt_scores.json").read_text())
    reference = json.loads((tmp_path / "full" / "gt_scores.json").read_text())
    assert scores["calibrated"]["images"] == 0 and "horizon_auc_0.25" not in scores["calibrated"]
    assert scores["uncalibrated"]["images"] == len(both["images"])
    assert scores["uncalibrated"]["horizon_auc_0.25"] == pytest.approx(
        reference["uncalibrated"]["horizon_auc_0.25"], abs=1e-6
    )
    assert not (tmp_path / "out" / "predictions_gt_calibrated.jsonl").read_text()


def test_malformed_ground_truth_entries_are_named(tmp_path):
    gt = make_gt_folder(tmp_path / "gt")
    good = json.loads((gt / "gt.json").read_text())["images"][0]
    for bad, message in [
        ({k: v for k, v in good.items() if k != "horizon"}, "entry 1 (P0) has no horizon"),
        (good | {"horizon": {"abc": [1, 2]}}, "entry 1 (P0): horizon must be"),
        ({k: v for k, v in good.items() if k != "vps"}, "not all of focal_px, cx, cy and vps"),
        (good | {"width": "wide"}, "width and height must be positive integers"),
        (good | {"file": "images/none.jpg"}, "does not exist"),
        (good | {"focal_px": "600"}, "focal_px, cx and cy must be finite numbers"),
        (good | {"file": "gt.json"}, "is not a readable image"),
    ]:
        (gt / "gt.json").write_text(json.dumps({"images": [good, bad]}))
        result = run("vanish-score", "--gt", gt, "--out", tmp_path / "out")
        assert result.exit_code == 2 and message in result.stderr, (message, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_stores_are_compared(tmp_path, real_store):
    blank = tmp_path / "blank.h5"
    with StoreWriter(blank, classes=["a"], image_shape=(32, 32), meta=provenance("sd", {}), total=3) as w:
        w.append(np.full((3, 32, 32, 3), 100, np.uint8), [0, 0, 0])
    out = tmp_path / "vanish"
    result = run("vanish", "--data", real_store, "--data", blank, "--n", 12, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stores"]["blank"]["no_lines"] == 3 and summary["stores"]["real"]["upsample"] == 8
    assert summary["stores"]["real"]["measures"]["n_segments"]["median"] > 0
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 + 3 and "no lines" in rows[-1]
    for name in ("histograms.png", "overlay_real.png", "predictions_real.jsonl"):
        assert (out / name).exists()


def test_bad_input_is_one_line(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    empty = tmp_path / "empty.h5"
    with StoreWriter(empty, classes=["a"], image_shape=(8, 8), meta=provenance("sd", {})):
        pass
    for command, args, message in [
        ("vanish-score", ("--gt", tmp_path / "gt"), "no gt.json"),
        ("vanish", ("--data", tmp_path / "notes.txt"), "not an HDF5"),
        ("vanish", ("--data", empty), "no images"),
    ]:
        result = run(command, *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    missing = run("vanish", "--out", tmp_path / "out")
    assert missing.exit_code == 2 and "Error: Missing option '--data'" in missing.stderr
    assert not (tmp_path / "out").exists()


def warped(image: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated by `angle` degrees about its centre (OpenCV), and the 2x3 map of points."""
    import cv2

    h, w = image.shape[:2]
    M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, M, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT), M


def test_a_sample_against_its_source_measures_the_warp(tmp_path):
    from synthkit.analyse.geometry import horizon_error
    from synthkit.analyse.vanish import analyse_image, pair_errors

    scenes = [render_box(rotation(20 + 15 * k, 4), seed=k) for k in range(2)]
    for scene in scenes:
        same = pair_errors(scene, scene, 1)
        assert same["horizon_error"] == 0 and same["vp_error_deg"] < 1e-3 and same["source_found"]
        truth = analyse_image(scene, 1, None).horizon()
        for angle in (2.0, 4.0):
            sample, M = warped(scene, angle)
            a, b, c = truth
            ends = [np.array([x, -(a * x + c) / b, 1.0]) for x in (0, W - 1)]
            p, q = (M @ e for e in ends)  # the source's horizon carried by the warp
            implied = horizon_error(np.cross([*p, 1.0], [*q, 1.0]), truth, W, H)
            e = pair_errors(sample, scene, 1)
            assert e["sample_found"] and abs(e["horizon_error"] - implied) < 0.01 + 0.15 * implied, (
                angle,
                e["horizon_error"],
                implied,
            )
            assert 0.3 * angle < e["vp_error_deg"] < 1.5 * angle, (angle, e["vp_error_deg"])


def test_the_lineage_of_merged_and_filtered_stores_reaches_the_real_store():
    from synthkit.analyse.vanish import lineage_fingerprints

    shard = {"sources": [{"path": "models/inv/all.safetensors", "fingerprint": "real-fp"}]}
    merged = {"sources": [{"path": "inv.shard-0.h5", "fingerprint": "shard-fp", "sources": shard["sources"]}]}
    filtered = {"sources": [{"path": "inv.h5", "fingerprint": "inv-fp"}], "filter": {"source_meta": merged}}
    assert lineage_fingerprints(filtered) == {"inv-fp", "shard-fp", "real-fp"}


def test_vanish_with_sources_reports_pairs(tmp_path):
    real = tmp_path / "real.h5"
    scenes = [render_box(rotation(20 + 15 * k, 4), seed=k) for k in range(2)]
    with StoreWriter(real, classes=["scene"], image_shape=(H, W), meta=provenance("real", {}), total=2) as w:
        w.append(np.stack(scenes), [0, 0])
    from synthkit.io.store import Store

    with Store(real) as r:
        fingerprint = r.fingerprint
    samples = tmp_path / "inv.h5"
    meta = provenance("inv", {}, [{"path": str(real), "fingerprint": fingerprint}])
    with StoreWriter(
        samples, classes=["scene"], image_shape=(H, W), meta=meta, columns={"source_index": "int"}, total=3
    ) as w:
        w.append(np.stack([scenes[1], warped(scenes[0], 3.0)[0], scenes[0]]), [0, 0, 0], source_index=[1, 0, 0])
    out = tmp_path / "out"
    result = run("vanish", "--data", samples, "--sources", real, "--out", out)
    assert result.exit_code == 0, result.output
    pairs = json.loads((out / "pairs.json").read_text())["inv"]
    assert pairs["samples"] == 3 and pairs["with_source_vps"] == 3 and 0 < pairs["within_5pct_height"] <= 1
    rows = (out / "pairs_inv.csv").read_text().splitlines()
    assert len(rows) == 4 and (out / "pairs_inv.png").exists()
    refused = run("vanish", "--data", real, "--sources", real, "--out", tmp_path / "none")
    assert refused.exit_code == 2 and "none of the stores has samples with a source" in refused.stderr


def test_line_classifier_tells_noise_from_real_but_not_real_from_real(tmp_path, real_store):
    from synthkit.io.store import Store

    with Store(real_store) as s:
        images, labels, classes = s.images(), s.labels, s.classes
    rng = np.random.default_rng(0)
    stores = {}
    for name, kind, pixels in [
        ("real-a", "real", images[0::2]),
        ("real-b", "sd", images[1::2]),
        ("noise", "sd", rng.integers(0, 256, images[0::2].shape, dtype=np.uint8)),
    ]:
        stores[name] = tmp_path / f"{name}.h5"
        with StoreWriter(stores[name], classes=classes, image_shape=(32, 32), meta=provenance(kind, {}), total=60) as w:
            w.append(pixels, labels[0::2])
    out = tmp_path / "out"
    result = run("vanish", *(x for p in stores.values() for x in ("--data", p)), "--n", 60, "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["stores"]
    assert "line_classifier_auc" not in summary["real-a"] and summary["noise"]["line_classifier_against"] == "real-a"
    assert summary["noise"]["line_classifier_auc"] > 0.9
    assert 0.25 < summary["real-b"]["line_classifier_auc"] < 0.75
    assert "(real)" in result.output  # the table marks the reference store


def test_a_known_homography_gives_the_horizon_error_it_implies():
    """A camera that turns (pitch and roll) maps the image by the homography K R K^-1: the horizon moves by
    exactly what that homography does to the source's horizon."""
    import cv2

    from synthkit.analyse.geometry import camera_matrix, horizon_error
    from synthkit.analyse.vanish import analyse_image, pair_errors

    scene = render_box(rotation(30, 4), seed=1)
    ref = analyse_image(scene, 1, None)
    truth = ref.horizon()
    a, b, c = truth
    K = camera_matrix(ref.focal, ((W - 1) / 2, (H - 1) / 2))
    for pitch, roll in ((2.0, 1.0), (4.0, -2.0)):
        p, r = np.radians(pitch), np.radians(roll)
        Rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
        Rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
        Hm = K @ Rz @ Rx @ np.linalg.inv(K)
        sample = cv2.warpPerspective(scene, Hm, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        ends = [Hm @ np.array([x, -(a * x + c) / b, 1.0]) for x in (0, W - 1)]
        implied = horizon_error(np.cross(*ends), truth, W, H)
        e = pair_errors(sample, scene, 1)
        assert e["sample_found"] and implied > 0.02
        assert abs(e["horizon_error"] - implied) < 0.01 + 0.15 * implied, (pitch, roll, e["horizon_error"], implied)


def test_the_vanish_table_has_one_home(tmp_path):
    """The report's geometry table is vanish's own rows (the CLI prints the same store_table): counts, the lines-only
    AUC where one was measured, then median [q1, q3] of each measure; and vanish-score refuses a --gt that is not a
    folder in the library, before writing anything."""
    from synthkit.analyse.vanish import COUNTS_LABEL, MEASURES, evaluate_ground_truth, markdown_rows
    from synthkit.core.errors import UserError
    from synthkit.report.results import geometry_section

    measure = {"median": 2.0, "q1": 1.0, "q3": 3.0, "n": 4}
    store = {"images": 4, "with_vps": 3, "no_lines": 1, "image_size": [32, 32], "upsample": 8}
    summary = {
        "mode": "uncalibrated",
        "stores": {
            "real": store | {"kind": "real", "measures": {k: measure for k in MEASURES}},
            "inv": store | {"kind": "inv", "line_classifier_auc": 0.75, "measures": {k: measure for k in MEASURES}},
        },
    }
    (tmp_path / "vanish").mkdir()
    (tmp_path / "vanish" / "summary.json").write_text(json.dumps(summary))
    rows = markdown_rows(summary)
    section = geometry_section(tmp_path)
    assert section[section.index(rows[0]) : section.index(rows[0]) + len(rows)] == rows
    assert rows[2] == f"| {COUNTS_LABEL} | 4 / 3 / 1 | 4 / 3 / 1 |" and "| (real) | 0.750 |" in rows[3]
    assert rows[4:] == [f"| {k} | 2 [1, 3] | 2 [1, 3] |" for k in MEASURES]
    with pytest.raises(UserError, match="is not a folder"):
        evaluate_ground_truth(tmp_path / "vanish" / "summary.json", tmp_path / "gt-out")
    assert not (tmp_path / "gt-out").exists()
