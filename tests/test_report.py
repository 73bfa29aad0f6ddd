"""The report's reading of several seeds and of the sample-complexity sweep, from classifiers' metadata and the
evaluation CSV (the figures are drawn from the same numbers)."""

import numpy as np
import torch

from synthkit.checkpoint import save_checkpoint
from synthkit.evaluation import append_rows, group_rows
from synthkit.report import real_equivalent, spread_notes, sweep_section


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

    from synthkit import evaluation
    from synthkit.cli import app
    from synthkit.report import write_report

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
    from synthkit.checkpoint import load_checkpoint
    from synthkit.evaluation import classifier_files, evaluate
    from synthkit.report import write_report

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
