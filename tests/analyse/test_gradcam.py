import json

import numpy as np
import pytest

from synthkit.analyse.gradcam import agreement, concentration
from synthkit.core.meta import provenance
from synthkit.io.store import StoreWriter

from conftest import run


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
    result = run(
        "gradcam",
        "--model",
        tiny_classifier,
        "--model",
        tiny_classifier,
        "--data",
        test_store,
        "--n",
        10,
        "--layer",
        "layer3",
        "--batch-size",
        4,
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 10 and summary["layer"] == "layer3" and len(summary["models"]) == 2
    for stats in summary["models"].values():
        for key in ("entropy", "gini", "top10_mass", "area_above_half"):
            assert 0 <= stats[key]["mean"] <= 1
        assert 0 <= stats["spread"]["mean"] < 0.71 and -1 <= stats["confidence_change"]["mean"] <= 1
        assert -1 <= stats["road"]["mean"] <= 1
    (pair,) = summary["agreement"].values()
    assert pair["correlation"] == pytest.approx(1) and pair["top_iou"] == pytest.approx(1)
    assert len((out / "per_image.csv").read_text().splitlines()) == 21
    from PIL import Image

    assert Image.open(out / "gradcam_grid.png").size[1] > 8 * 90


def test_predicted_target_and_layer4(tmp_path, tiny_classifier, test_store):
    result = run(
        "gradcam",
        "--model",
        tiny_classifier,
        "--data",
        test_store,
        "--n",
        4,
        "--target",
        "predicted",
        "--out",
        tmp_path,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "per_image.csv").read_text().splitlines()[1:]
    assert all(r.split(",")[3] == r.split(",")[4] for r in rows)  # target == predicted


def test_bad_input_is_one_line(tmp_path, tiny_classifier, test_store):
    empty = tmp_path / "empty.h5"
    with StoreWriter(empty, classes=["a"], image_shape=(32, 32), meta=provenance("real", {})):
        pass
    (tmp_path / "model.txt").write_text("not a model")
    cases = [
        (["--model", tiny_classifier, "--data", empty], "no images"),
        (["--model", tmp_path / "model.txt", "--data", test_store], "not a synthkit safetensors"),
    ]
    bad = run(
        "gradcam", "--model", tiny_classifier, "--data", test_store, "--layer", "layer9", "--out", tmp_path / "out"
    )
    assert bad.exit_code == 2 and "(resnet18) must be one of layer3, layer4, layer2, got 'layer9'" in bad.stderr
    for args, message in cases:
        result = run("gradcam", *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run("gradcam", "--data", test_store, "--out", tmp_path / "out")
    assert result.exit_code == 2  # --model is required


def hand_grad_cam(model, layer, images, classes):
    """Grad-CAM written out: the target logit's gradient, averaged over space, weighs the layer's
    channels; ReLU, min-max scaled, resized to the input (cv2, bilinear) and scaled again."""
    import cv2
    import torch

    saved = {}

    def keep(module, inputs, output):
        saved["act"] = output
        output.register_hook(lambda grad: saved.update(grad=grad))

    handle = layer.register_forward_hook(keep)
    try:
        model.zero_grad()
        logits = model(images)
        logits[torch.arange(len(images)), torch.as_tensor(classes)].sum().backward()
    finally:
        handle.remove()
    act, grad = saved["act"].detach().double().numpy(), saved["grad"].double().numpy()
    cams = np.maximum((grad.mean(axis=(2, 3))[:, :, None, None] * act).sum(axis=1), 0)
    out = []
    for cam in cams:
        cam = cam - cam.min()
        cam = cv2.resize(np.float32(cam / (1e-7 + cam.max())), images.shape[-1:-3:-1])
        cam = cam - cam.min()
        out.append(cam / (1e-7 + cam.max()))
    return np.float32(out)


def test_gradcam_numbers_are_those_of_a_hand_computed_grad_cam(tmp_path, tiny_classifier, test_store):
    import csv

    import torch

    from synthkit.classify.model import load_classifier
    from synthkit.io.store import Store

    result = run(
        "gradcam",
        "--model",
        tiny_classifier,
        "--data",
        test_store,
        "--n",
        8,
        "--layer",
        "layer3",
        "--out",
        tmp_path,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    assert len(rows) == 8
    model, meta = load_classifier(tiny_classifier, torch.device("cpu"))
    with Store(test_store) as s:
        index = [int(r["image"]) for r in rows]
        images = torch.from_numpy(s.images(index)).permute(0, 3, 1, 2).float() / 255
        labels = s.labels[index]
        assert [r["label"] for r in rows] == [s.classes[c] for c in labels]
    assert [r["target"] for r in rows] == [meta["classes"][c] for c in labels]  # --target true
    cams = hand_grad_cam(model, model.layer("layer3"), images, labels)
    with torch.no_grad():
        probs = model(images).softmax(1)
        masked = model(images * torch.from_numpy(cams)[:, None]).softmax(1)
    assert [r["predicted"] for r in rows] == [meta["classes"][c] for c in probs.argmax(1)]
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    # ROAD's margin is set by the computation: ROAD ranks pixels by their map value, and Grad-CAM maps hold many
    # ties (zeros after the ReLU, flat bilinear patches), so maps that agree to float rounding (the float64 hand
    # maps against grad-cam's float32 ones, or one thread's sums against two's) can rank tied pixels differently.
    # Measured on this store: a 1e-7 change of the maps moves one image's ROAD from 3.5e-3 to 1.5e-3, ten times
    # the value's own size, so no tolerance on the hand maps' ROAD is both honest and safe. ROAD is computed here
    # from grad-cam's own maps of the same images, which must equal the hand-computed ones to 1e-4, with the noise
    # seed gradcam uses: the same pixels rank the same way, and the values agree to float32 rounding.
    with GradCAM(model=model, target_layers=[model.layer("layer3")]) as library:
        library_cams = library(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    np.testing.assert_allclose(library_cams, cams, atol=1e-4)
    torch.manual_seed(0)  # the seed of the pick, which gradcam also gives ROAD's noise
    road = ROADCombined(percentiles=[20, 40, 60, 80])(
        images, library_cams, [ClassifierOutputSoftmaxTarget(int(c)) for c in labels], model
    )
    for k, row in enumerate(rows):
        expected = concentration(cams[k]) | {
            "confidence": float(probs[k, labels[k]]),
            "road": float(road[k]),
            "confidence_change": float(masked[k, labels[k]] - probs[k, labels[k]]),
        }
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-3, abs=1e-4, nan_ok=True), (k, key)
    assert sum(cam.max() > 0.5 for cam in cams) >= len(cams) // 2, "most maps should not be empty"
    summary = json.loads((tmp_path / "summary.json").read_text())
    (stats,) = summary["models"].values()
    for key in ("entropy", "gini", "top10_mass", "area_above_half", "spread", "confidence_change", "road"):
        assert stats[key]["mean"] == pytest.approx(np.nanmean([float(r[key]) for r in rows]), rel=1e-6), (
            key
        )  # NaN: empty map
    assert stats["accuracy_on_these_images"] == pytest.approx(np.mean([r["target"] == r["predicted"] for r in rows]))


def test_the_gradcam_table_and_agreement_have_one_home(tmp_path):
    """The report's Grad-CAM table and agreement lines are gradcam's own: a column per MEASURES entry, '–' where a
    model's summary lacks a measure."""
    from synthkit.analyse.gradcam import MEASURES, agreement_lines, markdown_rows
    from synthkit.report.results import gradcam_section

    stats = {key: {"mean": 0.25, "median": 0.25} for key in MEASURES}
    summary = {
        "data": "data/test.h5",
        "images": 4,
        "layer": "layer3",
        "target": "true",
        "models": {"real": stats, "inv": {k: v for k, v in stats.items() if k != "road"}},
        "agreement": {"real vs inv": {"correlation": 0.5, "top_iou": 0.25}},
    }
    (tmp_path / "gradcam").mkdir()
    (tmp_path / "gradcam" / "summary.json").write_text(json.dumps(summary))
    table = markdown_rows(summary)
    assert table[0] == "| model | " + " | ".join(MEASURES) + " |" and table[3].endswith("| 0.250 | – |")
    section = gradcam_section(tmp_path)
    assert section[section.index(table[0]) : section.index(table[0]) + len(table)] == table
    assert agreement_lines(summary) == ["agreement real vs inv: correlation 0.500, IoU of top 20% 0.250"]
    assert "- " + agreement_lines(summary)[0] in section
