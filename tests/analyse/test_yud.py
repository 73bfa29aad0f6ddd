"""The geometry study on real scenes: the York Urban training half in ../shared (research data that may not be
redistributed, so it is not committed). These named tests skip without it (conftest.ALLOWED_SKIPS); the same code
paths run on committed and rendered inputs in test_datasets.py and test_vanish.py."""

import json
import shutil

import numpy as np
import pytest
from test_vanish import warped

from conftest import SHARED, run

YUD = SHARED / "data" / "yud-train"
SIZE = 128


@pytest.fixture(scope="module")
def yud():
    if not (YUD / "gt.json").exists():
        pytest.skip(f"York Urban training half not found at {YUD}")
    return YUD


@pytest.fixture(scope="module")
def scenes(yud, tmp_path_factory):
    """All 51 York Urban photos as one 'urban scene' class at 128 px, through the CLI."""
    out = tmp_path_factory.mktemp("yud") / "scenes.h5"
    result = run(
        "data", "folder", "--source", yud / "images", "--class-name", "urban scene", "--size", SIZE, "--out", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_york_urban_folder_becomes_a_scene_store(yud, scenes):
    from PIL import Image

    from synthkit.io.store import Store

    entries = json.loads((yud / "gt.json").read_text())["images"]
    with Store(scenes) as s:
        assert len(s) == len(entries) == 51 and s.classes == ["urban scene"] and s.image_shape == (SIZE, SIZE, 3)
        names = list(s.column("source_name"))
        assert sorted(names) == sorted(e["file"].split("/")[-1] for e in entries)
        k = names.index("P1020177.jpg")
        photo = Image.open(yud / "images" / "P1020177.jpg").convert("RGB")  # 640x480: shorter side 128, centre crop
        expected = np.asarray(photo.resize((round(640 * SIZE / 480), SIZE), Image.BICUBIC))[:, 21 : 21 + SIZE]
        assert np.abs(s.images([k])[0].astype(int) - expected.astype(int)).mean() < 2


def test_horizon_only_ground_truth_from_york_urban_scores_like_the_full_file(yud, tmp_path):
    entries = json.loads((yud / "gt.json").read_text())["images"][:6]
    only = tmp_path / "only"
    (only / "images").mkdir(parents=True)
    for e in entries:
        shutil.copy(yud / e["file"], only / e["file"])
    keep = ("name", "file", "width", "height", "horizon")
    (only / "gt.json").write_text(json.dumps({"images": [{k: e[k] for k in keep} for e in entries]}))
    result = run("vanish-score", "--gt", only, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "no entry has a camera" in result.output
    scores = json.loads((tmp_path / "out" / "gt_scores.json").read_text())
    assert scores["calibrated"]["images"] == 0 and scores["uncalibrated"]["images"] == 6
    full = run("vanish-score", "--gt", yud, "--limit", 6, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output
    reference = json.loads((tmp_path / "full" / "gt_scores.json").read_text())
    assert reference["calibrated"]["images"] == 6
    assert scores["uncalibrated"]["horizon_auc_0.25"] == pytest.approx(
        reference["uncalibrated"]["horizon_auc_0.25"], abs=1e-6
    )
    assert scores["uncalibrated"]["horizon_auc_0.25"] > 80  # the detector finds York Urban's horizons


def test_york_urban_scene_against_itself_and_under_known_warps(scenes):
    """A source against itself gives 0; a 3 degree rotation, or a 3 degree camera pitch (the homography K R K^-1), of
    a real scene gives the horizon error it implies: in the median, and within 25% for most scenes (at 128 px the
    detector sometimes settles on another Manhattan frame)."""
    import cv2

    from synthkit.analyse.geometry import camera_matrix, horizon_error
    from synthkit.analyse.vanish import analyse_image, pair_errors
    from synthkit.io.store import Store

    with Store(scenes) as s:
        photos = s.images(np.arange(0, 51, 5))
    r = np.radians(3.0)
    pitch = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    found = {"rotation": [], "pitch": []}
    for scene in photos:
        same = pair_errors(scene, scene, 2)
        assert same["horizon_error"] == 0 and same["vp_error_deg"] < 1e-3 and same["source_found"]
        ref = analyse_image(scene, 2, None)
        a, b, c = truth = ref.horizon()
        turn = camera_matrix(ref.focal, ((SIZE - 1) / 2, (SIZE - 1) / 2))
        turn = turn @ pitch @ np.linalg.inv(turn)
        rotated, M = warped(scene, 3.0)
        for name, sample, Hm in (
            ("rotation", rotated, np.vstack([M, [0, 0, 1]])),
            (
                "pitch",
                cv2.warpPerspective(scene, turn, (SIZE, SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT),
                turn,
            ),
        ):
            ends = [Hm @ np.array([x, -(a * x + c) / b, 1.0]) for x in (0, SIZE - 1)]
            implied = horizon_error(np.cross(*ends), truth, SIZE, SIZE)
            e = pair_errors(sample, scene, 2)
            assert e["sample_found"] and implied > 0.02
            found[name].append((implied, e["horizon_error"]))
    for name, pairs in found.items():
        implied, measured = np.array(pairs).T
        assert abs(np.median(measured) - np.median(implied)) < 0.2 * np.median(implied), (name, pairs)
        assert np.mean(np.abs(measured - implied) < 0.01 + 0.25 * implied) >= 0.7, (name, pairs)


def test_vanish_sources_and_line_classifier_on_york_urban(scenes, tmp_path):
    """vanish --sources pairs each warped scene with its photo; the line classifier tells scenes whose lines were
    scrambled (tiles shuffled) from real ones, and real from real not at all."""
    from synthkit.core.meta import provenance
    from synthkit.io.store import Store, StoreWriter

    with Store(scenes) as s:
        photos, fingerprint = s.images(), s.fingerprint
    rng = np.random.default_rng(0)
    tiles = SIZE // 4

    def scrambled(image):
        blocks = [image[y : y + tiles, x : x + tiles] for y in range(0, SIZE, tiles) for x in range(0, SIZE, tiles)]
        order = rng.permutation(len(blocks))
        rows = [np.concatenate([blocks[order[4 * i + j]] for j in range(4)], 1) for i in range(4)]
        return np.concatenate(rows, 0)

    stores = {}
    for name, kind, pixels, source in [
        ("real-a", "real", photos[0::2], None),
        ("real-b", "sd", photos[1::2], None),
        ("tiles", "sd", np.stack([scrambled(p) for p in photos[0::2]]), None),
        ("inv", "inv", np.stack([warped(photos[k], 3.0)[0] for k in range(0, 51, 10)]), np.arange(0, 51, 10)),
    ]:
        stores[name] = tmp_path / f"{name}.h5"
        sources = [{"path": str(scenes), "fingerprint": fingerprint}] if source is not None else []
        with StoreWriter(
            stores[name],
            classes=["urban scene"],
            image_shape=(SIZE, SIZE),
            meta=provenance(kind, {}, sources),
            columns={"source_index": "int"} if source is not None else None,
            total=len(pixels),
        ) as w:
            w.append(pixels, np.zeros(len(pixels), int), **({"source_index": source} if source is not None else {}))
    out = tmp_path / "out"
    result = run("vanish", *(x for k in ("real-a", "real-b", "tiles") for x in ("--data", stores[k])), "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())["stores"]
    assert summary["tiles"]["line_classifier_auc"] > 0.85, summary["tiles"]
    assert 0.2 < summary["real-b"]["line_classifier_auc"] < 0.8, summary["real-b"]
    paired = run("vanish", "--data", stores["inv"], "--sources", scenes, "--out", tmp_path / "pairs")
    assert paired.exit_code == 0, paired.output
    pairs = json.loads((tmp_path / "pairs" / "pairs.json").read_text())["inv"]
    assert pairs["samples"] == 6 and pairs["within_5pct_height"] >= 0.5
    assert (tmp_path / "pairs" / "pairs_inv.png").exists()
