import json

import numpy as np
import pytest

from conftest import run
from synthkit.gradcam import agreement, concentration
from synthkit.meta import provenance
from synthkit.store import StoreWriter


def test_a_one_pixel_map_is_more_concentrated_than_a_flat_one():
    flat = np.ones((8, 8))
    spot = np.zeros((8, 8))
    spot[3, 4] = 1
    a, b = concentration(flat), concentration(spot)
    assert a["entropy"] == pytest.approx(1) and b["entropy"] == pytest.approx(0)
    assert a["gini"] == pytest.approx(0, abs=1e-9) and b["gini"] > 0.95
    assert b["top10_mass"] == pytest.approx(1) and a["top10_mass"] == pytest.approx(6 / 64)
    assert b["area_above_half"] == pytest.approx(1 / 64) and a["area_above_half"] == 1
    assert b["spread"] == 0 and a["spread"] > 0.2


def test_agreement_of_maps():
    rng = np.random.default_rng(0)
    a = rng.random((8, 8))
    assert agreement(a, a) == {"correlation": pytest.approx(1), "top_iou": 1.0}
    assert agreement(a, 1 - a)["correlation"] == pytest.approx(-1)


def test_gradcam_on_tiny_classifiers(tmp_path, tiny_classifier, test_store):
    out = tmp_path / "gradcam"
    result = run("gradcam", "--model", tiny_classifier, "--model", tiny_classifier, "--data", test_store, "--n", 10,
                 "--layer", "layer3", "--batch-size", 4, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 10 and summary["layer"] == "layer3" and len(summary["models"]) == 2
    for stats in summary["models"].values():
        for key in ("entropy", "gini", "top10_mass", "area_above_half"):
            assert 0 <= stats[key]["mean"] <= 1
        assert 0 <= stats["spread"]["mean"] < 0.71 and -1 <= stats["confidence_change"]["mean"] <= 1
    (pair,) = summary["agreement"].values()
    assert pair["correlation"] == pytest.approx(1) and pair["top_iou"] == pytest.approx(1)
    assert len((out / "per_image.csv").read_text().splitlines()) == 21
    from PIL import Image

    assert Image.open(out / "gradcam_grid.png").size[1] > 8 * 90


def test_predicted_target_and_layer4(tmp_path, tiny_classifier, test_store):
    result = run("gradcam", "--model", tiny_classifier, "--data", test_store, "--n", 4, "--target", "predicted",
                 "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "per_image.csv").read_text().splitlines()[1:]
    assert all(r.split(",")[3] == r.split(",")[4] for r in rows)  # target == predicted


def test_bad_input_is_one_line(tmp_path, tiny_classifier, test_store):
    empty = tmp_path / "empty.h5"
    with StoreWriter(empty, classes=["a"], image_shape=(32, 32), meta=provenance("real", {})):
        pass
    (tmp_path / "model.txt").write_text("not a model")
    cases = [(["--model", tiny_classifier, "--data", empty], "no images"),
             (["--model", tmp_path / "model.txt", "--data", test_store], "not a synthkit safetensors"),
             (["--model", tiny_classifier, "--data", test_store, "--layer", "layer9"], "layer4, layer3")]
    for args, message in cases:
        result = run("gradcam", *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run("gradcam", "--data", test_store, "--out", tmp_path / "out")
    assert result.exit_code == 2  # --model is required
