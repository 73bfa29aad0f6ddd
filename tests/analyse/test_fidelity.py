import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from synthkit.analyse.fidelity import fidelity, set_scores
from synthkit.analyse.filtering import select
from synthkit.core.meta import provenance
from synthkit.io.store import Store, StoreWriter

from conftest import run, usage_error


def degraded(src: Path, out: Path, fn) -> Path:
    """The images of `src` changed by fn, same labels, as a synthetic store."""
    with Store(src) as s:
        images, labels, classes = s.images(), s.labels, s.classes
    with StoreWriter(out, classes=classes, image_shape=(32, 32), meta=provenance("sd", {}), total=len(images)) as w:
        w.append(np.stack([fn(i) for i in images]), labels)
    return out


def blur(sigma):
    return lambda i: np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(sigma)))


def noise(sigma):
    rng = np.random.default_rng(0)
    return lambda i: np.clip(i + rng.normal(0, sigma, i.shape), 0, 255).astype(np.uint8)


def jpeg(quality):
    def fn(i):
        buf = io.BytesIO()
        Image.fromarray(i).save(buf, "JPEG", quality=quality)
        return np.asarray(Image.open(buf))

    return fn


LEVELS = {
    "blur": [blur(s) for s in (0.6, 1.5, 3)],
    "noise": [noise(s) for s in (12, 35, 80)],
    "jpeg": [jpeg(q) for q in (20, 5, 1)],
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, real_store, test_store, tiny_classifier):
    """Real test images, degraded at three strengths of blur, noise and JPEG, and pure noise, scored once."""
    root = tmp_path_factory.mktemp("fidelity")
    stores = [test_store]
    for family, fns in LEVELS.items():
        stores += [degraded(test_store, root / f"{family}{k + 1}.h5", fn) for k, fn in enumerate(fns)]
    rng = np.random.default_rng(1)
    stores.append(
        degraded(test_store, root / "noise-store.h5", lambda i: rng.integers(0, 256, i.shape, dtype=np.uint8))
    )
    out = root / "out"
    rows = fidelity(real_store, stores, tiny_classifier, out, device="cpu")
    return {(r["store"], r["class"], r["features"]): r for r in rows}, out


def test_real_against_real_is_close_and_pure_noise_is_far(scored):
    rows, _ = scored
    real, noise_store = rows[("test", "all", "classifier")], rows[("noise-store", "all", "classifier")]
    assert real["precision"] > 0.9 and real["recall"] > 0.9 and real["coverage"] > 0.9
    assert noise_store["recall"] < 0.2 and noise_store["coverage"] < 0.4
    assert noise_store["frechet"] > 3 * real["frechet"] and noise_store["kid"] > 3 * real["kid"]
    assert real["n_real"] == real["n_fake"] == 60 and real["k"] == 5


def test_a_set_against_itself_scores_perfectly():
    features = np.random.default_rng(0).normal(size=(40, 8))
    s = set_scores(features, features, 3)
    assert abs(s["frechet"]) < 1e-6 and s["precision"] == s["recall"] == s["coverage"] == 1.0


@pytest.mark.parametrize("family", list(LEVELS))
def test_stronger_degradation_scores_worse(scored, family):
    rows, _ = scored
    levels = [rows[(f"{family}{k}", "all", "classifier")] for k in (1, 2, 3)]
    frechet = [r["frechet"] for r in levels]
    coverage = [r["coverage"] for r in levels]
    # Coverage is a count of the real images (60 here) whose neighbourhood holds a degraded one, so one image is 1/60.
    # Two levels that the fixture's barely trained classifier barely tells apart may swap by one image, which the
    # machine's floating point decides (issue 31: [0.983, 1.0, 1.0] on an AMD EPYC): the order is asserted up to one
    # image's share, and where the fixture has signal (blur and noise) the strongest level must lose 5 images or more.
    one = 1 / levels[0]["n_real"]
    assert all(b <= a + one + 1e-9 for a, b in zip(coverage, coverage[1:])), coverage
    if family == "jpeg":
        # JPEG at any quality leaves this classifier's features within 3% (measured: Fréchet 8.71, 8.80, 8.93; coverage
        # 1.0 at every level), a difference float noise can reverse: no order is asserted, only that none is far off.
        assert max(frechet) < 1.25 * min(frechet), frechet
        return
    # blur and noise separate their levels by 40% or more of the Fréchet distance (measured 9.2, 14.9, 25.8 and 8.9,
    # 12.9, 87.8): a 10% step between levels leaves room for any machine's rounding.
    assert all(b > 1.1 * a for a, b in zip(frechet, frechet[1:])), frechet
    assert coverage[2] <= coverage[0] - 5 * one, coverage


def test_outputs_per_class_and_the_figure(scored):
    rows, out = scored
    table = list(csv.DictReader(open(out / "fidelity.csv")))
    assert {r["class"] for r in table} == {"all", *Store(out.parent / "blur1.h5").classes}
    assert all(r["features"] == "classifier" for r in table) and len(table) == 11 * 11
    per_class = rows[("test", "cat", "classifier")]
    assert per_class["n_real"] == per_class["n_fake"] == 6 and per_class["k"] == 4
    assert "| noise-store | classifier | 60 |" in (out / "fidelity.md").read_text()
    assert (out / "fidelity.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["per_class"] == 6


def test_bad_inputs_are_one_line(tmp_path, real_store, tiny_classifier):
    for args, message in [
        (("--data", real_store, "--classifier", real_store), "is an image store (HDF5), not a safetensors file"),
        (("--data", real_store, "--classifier", tiny_classifier, "--inception", tmp_path / "no.pth"), "--inception"),
    ]:
        result = run("fidelity", "--real", real_store, *args, "--out", tmp_path / "out")
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.output
        )
    bad = run(
        "fidelity",
        "--real",
        real_store,
        "--data",
        real_store,
        "--classifier",
        tiny_classifier,
        "--metric",
        "beauty",
        "--out",
        tmp_path / "out",
    )
    usage_error(bad, "--metric", "'frechet'", "'coverage'")
    assert not (tmp_path / "out").exists()


def test_selection_keeps_the_best_of_each_class_ties_by_row():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    values = np.array([0.5, 0.9, 0.5, 0.1, 0.3, 0.3, 0.8])
    kept, thresholds = select(labels, values, 0.5)
    assert kept.tolist() == [0, 1, 4, 6] and thresholds == {0: 0.5, 1: 0.3}
    assert len(select(np.zeros(50, int), np.arange(50.0), 0.14)[0]) == 7  # 0.14 * 50 is 7.000000000000001


@pytest.mark.parametrize("by", ["confidence", "margin", "cam"])
def test_filter_keeps_a_share_of_each_class_deterministically(by, tmp_path, real_store, test_store, tiny_classifier):
    synthetic = degraded(test_store, tmp_path / "syn.h5", noise(20))
    outs = []
    for k in range(2):
        out = tmp_path / f"kept{k}.h5"
        result = run(
            "filter",
            "--data",
            synthetic,
            "--classifier",
            tiny_classifier,
            "--keep",
            0.5,
            "--by",
            by,
            "--real",
            real_store,
            "--out",
            out,
            "--device",
            "cpu",
        )
        assert result.exit_code == 0, result.output
        outs.append(out)
    with Store(outs[0]) as a, Store(outs[1]) as b, Store(synthetic) as src:
        assert list(a.counts()) == [3] * 10 and len(a) == 30
        assert np.array_equal(a.images(), b.images()) and np.array_equal(
            a.column("filter_score"), b.column("filter_score")
        )
        rows = a.column("filter_source_row")
        assert np.array_equal(a.images(), src.images(rows)) and np.array_equal(a.labels, src.labels[rows])
        f = a.meta["filter"]
        assert f["criterion"] == by and f["kept"] == 30 and set(f["threshold_per_class"]) == set(src.classes)
        for c, name in enumerate(src.classes):
            assert a.column("filter_score")[a.labels == c].min() == pytest.approx(f["threshold_per_class"][name])


def test_filter_bad_inputs(tmp_path, test_store, tiny_classifier):
    empty = tmp_path / "empty" / "e.h5"
    with StoreWriter(empty, classes=Store(test_store).classes, image_shape=(32, 32), meta=provenance("sd", {})):
        pass
    result = run("filter", "--data", empty, "--classifier", tiny_classifier, "--out", tmp_path / "k.h5")
    assert result.exit_code == 2 and "has no images" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    import shutil

    shutil.rmtree(tmp_path / "empty")
    for args, message in [
        (("--keep", 0), "--keep must be in (0, 1]"),
        (("--keep", 1.5), "--keep must be in (0, 1]"),
        (("--by", "cam"), "--by cam needs --real"),
    ]:
        result = run("filter", "--data", test_store, "--classifier", tiny_classifier, *args, "--out", tmp_path / "k.h5")
        assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.output
        )
    bad = run(
        "filter", "--data", test_store, "--classifier", tiny_classifier, "--by", "taste", "--out", tmp_path / "k.h5"
    )
    usage_error(bad, "--by", "'confidence'", "'margin'", "'cam'", "'geometry'")
    assert not list(tmp_path.iterdir())


def random_inception_weights(path: Path) -> Path:
    """torch-fidelity's Inception-v3 with random weights, saved as its weights file would be (nothing downloaded)."""
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fx

    original = fx.FeatureExtractorInceptionV3.load_state_dict
    fx_url = fx.load_state_dict_from_url
    try:
        fx.load_state_dict_from_url = lambda *a, **k: {}
        fx.FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *a, **k: None
        torch.manual_seed(0)
        net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fx.load_state_dict_from_url = fx_url
        fx.FeatureExtractorInceptionV3.load_state_dict = original
    torch.save(net.state_dict(), path)
    return path


def test_inception_rows_when_weights_are_given(tmp_path, real_store, test_store, tiny_classifier):
    weights = random_inception_weights(tmp_path / "inception.pth")
    rows = fidelity(
        real_store, [test_store], tiny_classifier, tmp_path / "out", per_class=3, inception=weights, device="cpu"
    )
    sources = {(r["class"], r["features"]) for r in rows}
    assert ("all", "inception") in sources and ("cat", "inception") in sources and ("all", "classifier") in sources
    inception = next(r for r in rows if r["class"] == "all" and r["features"] == "inception")
    assert (
        inception["n_real"] == inception["n_fake"] == 30
        and np.isfinite(inception["frechet"])
        and "agreement" not in inception
    )
    assert "torch-fidelity Inception-v3" in (tmp_path / "out" / "fidelity.md").read_text()


def test_filter_by_geometry_keeps_the_scenes_with_manhattan_lines(tmp_path, tiny_classifier):
    from PIL import Image
    from test_geometry import render_box, rotation

    rng = np.random.default_rng(0)
    boxes = [render_box(rotation(10 * k, 5), seed=k) for k in range(3)]
    shape = boxes[0].shape[:2]
    noise_images = [
        np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(shape[::-1]))
        for _ in range(3)
    ]
    store = tmp_path / "scenes.h5"
    with StoreWriter(store, classes=["scene"], image_shape=shape, meta=provenance("sd", {}), total=6) as w:
        w.append(np.stack([noise_images[0], boxes[0], noise_images[1], boxes[1], noise_images[2], boxes[2]]), [0] * 6)
    clf = tmp_path / "clf.safetensors"  # any classifier of the store's classes: geometry does not use it
    from synthkit.classify.training import TrainConfig, train

    train([store], clf, TrainConfig.from_recipe("quick", steps=1, batch_size=6), device="cpu")
    result = run(
        "filter", "--data", store, "--classifier", clf, "--keep", 0.5, "--by", "geometry", "--out", tmp_path / "k.h5"
    )
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "k.h5") as kept:
        assert kept.column("filter_source_row").tolist() == [1, 3, 5]
        assert kept.column("filter_score").min() > 0.5


def test_the_fidelity_table_has_one_home(tmp_path):
    """fidelity.md's table, the report's and the CLI's lines all come from fidelity.TABLE_COLUMNS: the report shows
    its rows over all classes, and a store's printed line names every score its row has."""
    from synthkit.analyse.fidelity import LABEL_METRICS, SET_METRICS, markdown_rows, summary_line
    from synthkit.report.results import fidelity_section

    scores = dict.fromkeys(SET_METRICS, 0.5)
    rows = [
        {"store": "inv", "class": "all", "features": "classifier", "n_fake": 30, **scores, "agreement": 0.9},
        {"store": "inv", "class": "cat", "features": "classifier", "n_fake": 3, **scores, "agreement": 0.8},
        {"store": "inv", "class": "all", "features": "inception", "n_fake": 30, **scores},
    ]
    (tmp_path / "fidelity").mkdir()
    summary = {"real": "data/real.h5", "per_class": 3, "k": 2, "rows": rows}
    (tmp_path / "fidelity" / "summary.json").write_text(json.dumps(summary))
    table = markdown_rows(rows)
    assert len(table) == 4 and table[2].startswith("| inv | classifier | 30 | 0.500 | 0.5000 |")
    assert table[3].endswith("| – | – |")  # no label metrics for Inception features
    section = fidelity_section(tmp_path)
    assert section[section.index(table[0]) : section.index(table[0]) + len(table)] == table
    line = summary_line(rows[0])
    assert line.startswith("inv (classifier, 30 images): ") and "agreement 0.900" in line
    assert all(f"{m} " in line for m in SET_METRICS) and LABEL_METRICS[1] not in line
