import re
import subprocess
import sys

import h5py
import numpy as np
from PIL import Image

from synthkit.io.store import Store

from conftest import run

# `python -m synthkit --help`, then report which heavy modules it imported.
HELP_WITHOUT_TORCH = """
import runpy, sys
sys.argv = ["synthkit", "--help"]
try:
    runpy.run_module("synthkit", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
heavy = sorted(m for m in ("torch", "torchvision", "diffusers", "pytorch_grad_cam") if m in sys.modules)
print("HEAVY:", ",".join(heavy))
"""


def test_help_explains_the_pipeline_and_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("HEAVY:"), f"--help imported {out.rsplit('HEAVY:', 1)[-1].strip()}"
    assert "invert" in out and "evaluate" in out
    for command in (
        "data",
        "info",
        "show",
        "merge",
        "model",
        "invert",
        "sample",
        "train",
        "evaluate",
        "gradcam",
        "vanish",
        "vanish-score",
        "report",
    ):
        assert command in out


def test_info_on_store_and_checkpoint(tmp_path, real_store):
    result = run("info", real_store)
    assert result.exit_code == 0, result.output
    assert "airplane" in result.output and "120" in result.output
    assert re.search(r"\bkind\W+real\b", result.output), result.output  # the kind row, not the path (which says real)
    import torch

    from synthkit.io.checkpoint import save_checkpoint

    save_checkpoint(
        tmp_path / "m.safetensors", {"emb": torch.zeros(2, 5, 8)}, {"kind": "embeddings", "params": {"lr": 0.03}}
    )
    result = run("info", tmp_path / "m.safetensors")
    assert result.exit_code == 0 and "emb" in result.output and "2x5x8" in result.output and "0.03" in result.output


def test_show_draws_a_row_per_class(tmp_path, real_store):
    result = run("show", real_store, "--out", tmp_path / "grid.png", "--per-row", 4, "--cell", 32)
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "grid.png")
    assert image.height >= 10 * 32 and image.width >= 4 * 32


def test_merge_command(tmp_path, real_store):
    result = run("merge", real_store, real_store, "--out", tmp_path / "double.h5")
    assert result.exit_code == 0, result.output
    assert "240 images" in result.stdout
    with Store(real_store) as one, Store(tmp_path / "double.h5") as two:
        assert one.column_names and two.column_names == one.column_names
        np.testing.assert_array_equal(two.images(), np.concatenate([one.images()] * 2))
        np.testing.assert_array_equal(two.labels, np.concatenate([one.labels] * 2))
        for name in one.column_names:
            assert list(two.column(name)) == list(one.column(name)) * 2, name


def test_not_a_store_is_one_line_exit_2(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(2)
    for args in (("info", path), ("show", path, "--out", tmp_path / "g.png"), ("info", tmp_path / "nope.h5")):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_malformed_options_get_a_short_usage_message(tmp_path):
    for args, error in [
        (("evaluate", "--output", "x"), "No such option: --output"),
        (("train", "--data", "real", "--out", tmp_path / "m.safetensors", "--steps", 0), "'--steps'"),
        (("vanish-score",), "Missing option '--gt'"),
    ]:
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 4, result.stderr
        assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: ") and error in lines[-1]
        assert "Traceback" not in result.output and "╭" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_info_on_a_model_folder_and_a_plain_folder(tmp_path, tiny_sd):
    result = run("info", tiny_sd)
    assert result.exit_code == 0 and "UNet2DConditionModel" in result.output and "tiny-random" in result.output
    result = run("info", tmp_path)
    assert result.exit_code == 2 and "not a diffusers model" in result.stderr


def test_a_bare_store_name_means_data_name_h5_in_info(tmp_path, monkeypatch, real_store):
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(real_store, "data/real.h5")
    result = run("info", "real")
    assert result.exit_code == 0, result.output
    assert "data/real.h5" in result.output and re.search(r"\bkind\W+real\b", result.output)
    missing = run("info", "nope")
    assert missing.exit_code == 2 and missing.stderr.startswith("error:") and "data/nope.h5" in missing.stderr


def test_show_refuses_to_replace_a_grid_without_overwrite(tmp_path, real_store):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"mine")
    refused = run("show", real_store, "--out", grid, "--per-row", 2, "--cell", 16)
    assert refused.exit_code == 2 and refused.stderr.startswith("error:") and "--overwrite" in refused.stderr
    assert grid.read_bytes() == b"mine"
    replaced = run("show", real_store, "--out", grid, "--per-row", 2, "--cell", 16, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert Image.open(grid).width >= 2 * 16


def test_evaluate_writes_results_to_out_keeps_one_row_per_classifier_and_still_takes_results(
    tmp_path, tiny_classifier, test_store
):
    import csv

    def rows(folder):
        return list(csv.DictReader(open(folder / "accuracy.csv")))

    args = ("evaluate", "--model", tiny_classifier, "--test", test_store, "--device", "cpu")
    first = run(*args, "--out", tmp_path / "r")
    assert first.exit_code == 0, first.output
    again = run(*args, "--out", tmp_path / "r")
    assert again.exit_code == 0, again.output
    assert len(rows(tmp_path / "r")) == 1 and rows(tmp_path / "r")[0]["model"] == str(tiny_classifier)
    old = run(*args, "--results", tmp_path / "old")  # the old name, kept hidden
    assert old.exit_code == 0, old.output
    assert [r["accuracy"] for r in rows(tmp_path / "old")] == [r["accuracy"] for r in rows(tmp_path / "r")]
    helped = run("evaluate", "--help").stdout + run("report", "--help").stdout
    assert "--out" in helped and "--results" not in helped


def test_report_reads_and_writes_the_results_folder_given_by_out_or_results(tmp_path, tiny_classifier, test_store):
    models = tmp_path / "models"
    models.mkdir()
    model = models / "resnet18-real.safetensors"
    model.write_bytes(tiny_classifier.read_bytes())
    scored = run("evaluate", "--model", model, "--test", test_store, "--device", "cpu", "--out", tmp_path / "r")
    assert scored.exit_code == 0, scored.output
    for option in ("--out", "--results"):
        (tmp_path / "r" / "README.md").unlink(missing_ok=True)
        result = run("report", option, tmp_path / "r", "--models", models, "--data", tmp_path)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "r" / "README.md").exists()


def test_version():
    from synthkit import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.stdout == f"synthkit {__version__}\n"


def test_info_on_a_classifier_shows_how_it_was_made_its_evaluations_and_its_curve(tmp_path, real_store, test_store):
    import os

    from synthkit.classify.training import TrainConfig, train

    out = tmp_path / "m.safetensors"
    config = TrainConfig.from_recipe("quick", steps=4, batch_size=20, warmup_steps=1, evals=2)
    train([real_store], out, config, device="cpu", test=test_store)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == os.stat(real_store).st_mode & 0o777 == 0o666 & ~mask  # colleagues read it
    result = run("info", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.index("how it was made") < text.index("test accuracy during training") < text.index("tensors: ")
    assert re.search(r"kind\W+classifier", text) and len(text.splitlines()) < 120  # not a row per tensor
    assert "conv1.weight" not in text and re.search(r"tensors: \d+, [\d,]+ values \(F32", text)
    plotted = run("info", out, "--plot", tmp_path / "curve.png")
    assert plotted.exit_code == 0, plotted.output
    assert Image.open(tmp_path / "curve.png").width > 100
    again = run("info", out, "--plot", tmp_path / "curve.png")
    assert again.exit_code == 2 and again.stderr.startswith("error:") and again.stdout == ""
    store = run("info", real_store, "--plot", tmp_path / "other.png")
    assert store.exit_code == 2 and store.stderr.startswith("error:") and not (tmp_path / "other.png").exists()
