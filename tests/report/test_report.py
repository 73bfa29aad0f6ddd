"""The report's reading of several seeds and of the sample-complexity sweep, from classifiers' metadata and the
evaluation CSV (the figures are drawn from the same numbers)."""

import json

import numpy as np
import pytest
import torch

from synthkit.classify.evaluation import append_rows, group_rows
from synthkit.io.checkpoint import save_checkpoint
from synthkit.report.results import real_equivalent, spread_notes, sweep_section


def fake_classifier(path, kinds, real_images, classes=10):
    sources = [
        {"path": f"data/sweep/{k}.h5", "kind": k.split("-")[0], "count": 1, "fingerprint": k, "real_images": r}
        for k, r in zip(kinds, real_images)
    ]
    save_checkpoint(
        path,
        {"w": torch.zeros(1)},
        {"kind": "classifier", "sources": sources, "classes": [f"c{i}" for i in range(classes)], "params": {"seed": 0}},
    )
    return path


def test_the_sweep_section_groups_rows_by_kind_and_real_images_per_class(tmp_path):
    (tmp_path / "sweep").mkdir()
    rows, truth = [], {}
    for n in (5, 50):
        for row, kinds in (("real", [f"real-{n}"]), ("inv", [f"inv-{n}"]), ("real+inv", [f"real-{n}", f"inv-{n}"])):
            for seed in (0, 1):
                model = fake_classifier(tmp_path / f"{row}-{n}-{seed}.safetensors", kinds, [10 * n] * len(kinds))
                accuracy = 0.1 + 0.001 * n + 0.01 * seed + (0.05 if "inv" in row else 0)
                truth.setdefault((row, n), []).append(100 * accuracy)
                rows.append(
                    {
                        "model": str(model),
                        "training_data": row,
                        "accuracy": accuracy,
                        "test_fingerprint": "t",
                        "seed": seed,
                        "group": f"{row}-{n}",
                    }
                )
    append_rows(tmp_path / "sweep" / "accuracy.csv", rows)
    lines = "\n".join(sweep_section(tmp_path))
    assert "| real images per class | `real` | `inv` | `real+inv` |" in lines
    for n in (5, 50):
        cells = [
            f"{np.mean(truth[(r, n)]):.2f} ± {np.std(truth[(r, n)], ddof=1):.2f} (2)"
            for r in ("real", "inv", "real+inv")
        ]
        assert f"| {n} | " + " | ".join(cells) + " |" in lines
    assert (tmp_path / "sweep" / "sweep.png").exists() and "![sample complexity](sweep/sweep.png)" in lines
    assert "`inv` at 5 per class ≈ " in lines


def test_real_equivalent_reads_the_real_curve_on_a_log_axis():
    real = {10: [20.0], 100: [40.0], 1000: [60.0]}
    assert real_equivalent(real, 40.0) == "100" and real_equivalent(real, 50.0) == "316"  # half way on the log axis
    assert real_equivalent(real, 10.0) == "≤ 10" and real_equivalent(real, 70.0) == "> 1000"


def test_rows_within_their_spread_are_named():
    rows = [
        {
            "model": f"m{k}",
            "training_data": name,
            "accuracy": acc,
            "test_fingerprint": "t",
            "seed": k % 2,
            "group": name,
            "best_eval_accuracy": "",
        }
        for k, (name, acc) in enumerate(
            [("real", 0.80), ("real", 0.82), ("inv", 0.805), ("inv", 0.815), ("sd", 0.5), ("sd", 0.51)]
        )
    ]
    notes = " ".join(spread_notes(group_rows(rows)))
    assert "real – inv (0.00)" in notes and "sd" not in notes
    one = [r for r in rows if r["seed"] == 0]
    assert "One seed per row: no spread" in " ".join(spread_notes(group_rows(one)))


def test_the_accuracy_columns_have_one_home(tmp_path, monkeypatch, tiny_classifier, test_store):
    """accuracy.md, the report's table and `synthkit evaluate`'s table all render from evaluation.ACCURACY_COLUMNS:
    a header changed there changes in all three."""
    from dataclasses import replace

    from typer.testing import CliRunner

    from synthkit.classify import evaluation
    from synthkit.cli import app
    from synthkit.report.results import write_report

    columns = [replace(c, header="R9") if c.key == "recipe" else c for c in evaluation.ACCURACY_COLUMNS]
    monkeypatch.setattr(evaluation, "ACCURACY_COLUMNS", tuple(columns))
    models, results = tmp_path / "models", tmp_path / "r"
    models.mkdir()
    model = models / "resnet18-real.safetensors"
    model.write_bytes(tiny_classifier.read_bytes())
    args = ["evaluate", "--model", str(model), "--test", str(test_store), "--device", "cpu", "--out", str(results)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert " R9 " in result.stdout and " recipe " not in result.stdout
    assert "| R9 |" in (results / "accuracy.md").read_text()
    readme = write_report(results, models, tmp_path).read_text()
    assert "| R9 |" in readme and "| recipe |" not in readme


def test_the_report_finds_classifiers_by_kind_and_names_their_architecture(tmp_path, tiny_classifier, test_store):
    """A classifier of any file name and architecture is a row of the report, named in its heading; a file that is not
    a synthkit checkpoint, or holds no classifier, is passed over."""
    from synthkit.classify.evaluation import classifier_files, evaluate
    from synthkit.io.checkpoint import load_checkpoint
    from synthkit.report.results import write_report

    models, results = tmp_path / "models", tmp_path / "r"
    models.mkdir()
    other = models / "mobilenet_v3_small-real-s0.safetensors"
    other.write_bytes(tiny_classifier.read_bytes())
    (models / "notes.safetensors").write_bytes(b"not a checkpoint")
    save_checkpoint(models / "emb.safetensors", {"w": torch.zeros(1)}, {"kind": "embeddings"})
    evaluate([other], test_store, results, device="cpu")
    readme = write_report(results, models, tmp_path).read_text()
    assert classifier_files(models) == [other]
    assert "## Test accuracy (ResNet-18, real CIFAR-10 test images)" in readme and f"- `{other}`: " in readme
    tensors, meta = load_checkpoint(other)
    save_checkpoint(other, tensors, meta | {"arch": "mobilenet_v3_small"})
    readme = write_report(results, models, tmp_path).read_text()
    assert "## Test accuracy (mobilenet_v3_small, real CIFAR-10 test images)" in readme
    assert f"- `{other}`: mobilenet_v3_small (cifar stem) at " in readme


def seed_rows(accuracies: dict[str, list[float]]) -> list[dict]:
    """Evaluation rows by hand: one per row name and seed, each accuracy a share."""
    return [
        {"model": f"{name}-{seed}", "training_data": name, "accuracy": acc, "test_fingerprint": "t", "seed": seed}
        | {"group": name, "best_eval_accuracy": "", "classifier": "resnet18 (cifar stem)"}
        for name, accs in accuracies.items()
        for seed, acc in enumerate(accs)
    ]


def test_each_claim_is_held_not_held_or_too_close_to_call_given_the_rows_spreads():
    from synthkit.report.results import A_FEW_POINTS, CLAIMS, claim_verdict, claims_section

    beats, within, over_sd = CLAIMS
    groups = group_rows(
        seed_rows(
            {
                "real": [0.40, 0.42],  # 41 ± 1.41
                "real+inv": [0.45, 0.47],  # 46 ± 1.41: 5 points ahead, 1.8 spreads (2.83)
                "inv": [0.30, 0.50],  # 40 ± 14.1: 1 point behind, + 5 allowed, within its spread
                "sd": [0.60, 0.62],  # 61 ± 1.41: inv is 21 points behind, more than 15.6 of spread
            }
        )
    )
    verdicts = {c.words: claim_verdict(c, groups) for c in CLAIMS}
    assert verdicts[beats.words]["verdict"] == "held" and round(verdicts[beats.words]["margin"], 6) == 5
    assert verdicts[within.words]["verdict"] == "too close to call"
    assert round(verdicts[within.words]["margin"], 6) == A_FEW_POINTS - 1
    assert verdicts[over_sd.words]["verdict"] == "not held" and round(verdicts[over_sd.words]["margin"], 6) == -21
    lines = "\n".join(claims_section(groups))
    assert f'"A few points" is {A_FEW_POINTS:g}' in lines and within.words == "DI alone comes within 5 points of real"
    assert (
        "- **real+DI beats real** (`real+inv` against `real`): **held** here. `real+inv` 46.00 ± 1.41% (n=2) "
        "against `real` 41.00 ± 1.41% (n=2): +5.00 points, a margin of +5.00 points, +1.8 times the rows' spread "
        "(2.83 points). In the original study: +4.34." in lines
    )
    assert "-1.00 points (+ 5 allowed), a margin of +4.00 points, +0.3 times the rows' spread (15.56 points)" in lines
    assert "In the original study: +1.83." in lines and "In the original study: +26.06." in lines
    assert "original study" not in "\n".join(claims_section(groups, cifar=False))


def test_a_claim_is_not_called_on_one_seed_and_left_out_without_its_rows():
    from synthkit.report.results import CLAIMS, claim_verdict, claims_section

    one = group_rows(seed_rows({"real": [0.40], "real+inv": [0.60], "inv": [0.5, 0.52]}))
    assert claim_verdict(CLAIMS[0], one)["verdict"] == "not called"
    assert claim_verdict(CLAIMS[2], one) is None  # no sd row
    lines = claims_section(one)
    assert sum(line.startswith("- **") for line in lines) == 2 and "DI beats prompt samples" not in "\n".join(lines)
    assert "**not called** (a row has one seed: its spread is unknown)" in "\n".join(lines)
    assert claims_section(group_rows(seed_rows({"real": [0.4, 0.5]}))) == []


def test_the_miniatures_report_says_what_differs_from_the_study(tmp_path, small_real):
    """With stores from the shipped miniature, the report's first note says it learned CIFAR-10's 50,000 training
    images, the real row's sources among them, and that its images are 32 px."""
    from synthkit.core.paths import MINI_ASSET
    from synthkit.io.store import Store, StoreWriter
    from synthkit.report.results import generator_warning

    data = tmp_path / "data"
    data.mkdir()
    for name, meta in (
        ("inv", {"kind": "inv", "params": {"model": "mini"}}),
        ("real", {"kind": "real", "params": {"split": "train"}}),
    ):
        with Store(small_real) as s, StoreWriter(
            data / f"{name}.h5", classes=s.classes, image_shape=s.image_shape[:2], meta=meta, total=len(s)
        ) as w:  # fmt: skip
            w.append(s.images(), s.labels)
            per_class = len(s) // len(s.classes)
    note = " ".join(generator_warning(data))
    assert "A miniature generator" in note and "What differs from the study" in note
    shipped = json.loads((MINI_ASSET / "synthkit.json").read_text())["data"]  # the store it learned, as recorded
    assert f"all 50,000 images of `{shipped}`, CIFAR-10's training set, which `" in note
    assert "the real row's sources are among them" in note and f"beyond the real row's {per_class} per class" in note
    assert "Its images are 32 px" in note
    (data / "real.h5").unlink()
    assert "among them" not in " ".join(generator_warning(data)) and "What differs" in " ".join(generator_warning(data))


def test_fidelity_ranks_stores_by_one_architectures_mean_accuracy():
    """A store's accuracy beside its fidelity is the mean over seeds of ResNet-18's rows, not the last row read (a
    MobileNet's, or one seed's)."""
    from synthkit.report.results import store_accuracy

    rows = [
        {"training_data": "inv", "classifier": "resnet18 (cifar stem)", "accuracy": "0.30"},
        {"training_data": "inv", "classifier": "resnet18 (cifar stem)", "accuracy": "0.40"},
        {"training_data": "sd", "classifier": "resnet18 (cifar stem)", "accuracy": "0.20"},
        {"training_data": "inv", "classifier": "mobilenet_v3_small (cifar stem)", "accuracy": "0.10"},
    ]
    accuracy, arch = store_accuracy(rows)
    assert arch == "resnet18" and accuracy == pytest.approx({"inv": 0.35, "sd": 0.20})
    accuracy, arch = store_accuracy(rows[3:])
    assert arch == "mobilenet_v3_small" and accuracy == pytest.approx({"inv": 0.10})
