"""Classifiers of other architectures trained on one store are told apart wherever they appear (issue 37, item 4):
Grad-CAM's models, the legend of accuracy against step, the confusion figures' titles; and the original study's
figure stands only beside the ResNet-18 row, the classifier the study trained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ARCHS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0")


@pytest.fixture(scope="module")
def three(tmp_path_factory, real_store, test_store) -> Path:
    """models/ with a classifier of each architecture trained on real.h5 for two steps, each scored on the test store
    once while training (so that accuracy against step has a point per classifier)."""
    from synthkit.classify.training import TrainConfig, train

    root = tmp_path_factory.mktemp("labels")
    for arch in ARCHS:
        config = TrainConfig.from_recipe("quick", arch=arch, steps=2, batch_size=16, evals=1)
        train([real_store], root / "models" / f"{arch}-real.safetensors", config, device="cpu", test=test_store)
    return root


def models(root: Path) -> list[Path]:
    return [root / "models" / f"{arch}-real.safetensors" for arch in ARCHS]


def test_gradcam_names_each_classifier_by_its_architecture(three, test_store):
    """Before: real, real#2, real#3."""
    from synthkit.analyse.gradcam import explain

    summary = explain(models(three), test_store, three / "gradcam", n=4, device="cpu")
    assert list(summary["models"]) == [f"real ({arch})" for arch in ARCHS]
    assert "real (resnet18) vs real (mobilenet_v3_small)" in summary["agreement"]


def test_accuracy_against_step_has_a_legend_entry_per_architecture(three):
    """Before: three entries, each `real (n=1)`."""
    from synthkit.report.results import accuracy_curves

    labels = sorted(label for label, _, _ in accuracy_curves(three / "models", {}))
    assert labels == [f"real ({arch}, n=1)" for arch in sorted(ARCHS)]


def test_each_confusion_figure_is_titled_with_its_architecture(three, test_store, monkeypatch):
    """Before: every title `real: ...`. Scored one at a time too, each title names its architecture, since the
    report shows the figures of every evaluation side by side."""
    from synthkit.classify import evaluation

    titles = []
    drawn = evaluation.save_confusion_figure
    monkeypatch.setattr(evaluation, "save_confusion_figure", lambda *a: titles.append(a[3]) or drawn(*a))
    evaluation.evaluate(models(three), test_store, three / "results", device="cpu")
    evaluation.evaluate(models(three)[1:2], test_store, three / "alone", device="cpu")
    assert [t.split(":")[0] for t in titles] == [f"real ({arch})" for arch in ARCHS] + ["real (mobilenet_v3_small)"]


def test_the_study_figure_stands_beside_the_resnet18_row_only(three, test_store):
    """Before: 81.80 beside the MobileNet and ShuffleNet rows too."""
    from synthkit.classify.evaluation import evaluate
    from synthkit.report.results import write_report

    evaluate(models(three), test_store, three / "report", device="cpu")
    readme = write_report(three / "report", three / "models", three).read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| training data |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in re.findall(r"^\| real \(`real`\).*", readme, re.M)
    ]
    study = {row[columns.index("classifier")].split()[0]: row[columns.index("original study %")] for row in rows}
    assert study == {"resnet18": "81.80", "mobilenet_v3_small": "-", "shufflenet_v2_x1_0": "-"}


def test_names_say_only_what_tells_classifiers_apart():
    """The training data alone where it is enough, then the architecture, then the file name, then the path; a file
    given twice is numbered."""
    from synthkit.classify.evaluation import distinct_names

    real = {"sources": [{"path": "data/real.h5"}], "arch": "resnet18"}
    inv = {"sources": [{"path": "data/inv.h5"}], "arch": "resnet18"}
    mobile = real | {"arch": "mobilenet_v3_small"}
    paths = [Path("m/a.safetensors"), Path("m/b.safetensors"), Path("m/c.safetensors"), Path("m/d.safetensors")]
    assert distinct_names([real, inv], paths[:2]) == ["real", "inv"]
    assert distinct_names([real, inv], paths[:2], least=2) == ["real (resnet18)", "inv (resnet18)"]
    assert distinct_names([real, real, mobile], paths[:3]) == [
        "real (resnet18, a.safetensors)",
        "real (resnet18, b.safetensors)",
        "real (mobilenet_v3_small)",
    ]
    elsewhere = [Path("m/a.safetensors"), Path("n/a.safetensors")]
    assert distinct_names([real, real], elsewhere) == [
        "real (resnet18, m/a.safetensors)",
        "real (resnet18, n/a.safetensors)",
    ]
    assert distinct_names([real, real], [paths[0]] * 2, notes=["n=1", "n=1"]) == [
        "real (resnet18, m/a.safetensors, n=1)",
        "real (resnet18, m/a.safetensors, n=1)#2",
    ]
