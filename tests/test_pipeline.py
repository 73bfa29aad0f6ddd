"""The study's graph, shrunken to a few images and steps, run end to end through the CLI."""

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run

ROOT = Path(__file__).resolve().parents[1]


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, f"synthkit {' '.join(map(str, args))}\n{result.output}"
    return result


def test_shrunken_study_end_to_end(tmp_path, monkeypatch, cifar_small_archive, tiny_sd):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_sd, "models/tiny-sd")
    ok("data", "cifar10", "--source", cifar_small_archive, "--split", "train", "--per-class", 4, "--out", "data/real.h5")
    ok("data", "cifar10", "--source", cifar_small_archive, "--split", "test", "--out", "data/test.h5")
    ok("sample", "--prompt", "a photo of a {class}", "--per-class", 4, "--model", "models/tiny-sd", "--steps", 2,
       "--resolution", 64, "--init", "real", "--out", "data/sd.h5")
    ok("invert", "--class", "all", "--data", "real", "--model", "models/tiny-sd", "--resolution", 64, "--updates", 2,
       "--out", "models/inv/all.safetensors")
    ok("sample", "--embeddings", "models/inv/all.safetensors", "--per-image", 1, "--steps", 2, "--out", "data/inv.h5")
    for data in ("real", "inv", "sd", "real+inv", "real+sd"):
        mix = ["--mix", "balanced"] if "+" in data else []
        ok("train", "--data", data.replace("+", ","), "--out", f"models/resnet18-{data}.safetensors", "--steps", 2,
           "--batch-size", 20, "--device", "cpu", *mix)
    models = [f"models/resnet18-{d}.safetensors" for d in ("real", "inv", "sd", "real+inv", "real+sd")]
    ok("evaluate", *(x for m in models for x in ("--model", m)), "--device", "cpu")
    ok("gradcam", "--model", models[0], "--model", models[1], "--model", models[2], "--n", 4, "--device", "cpu")
    ok("vanish", "--data", "real", "--data", "sd", "--data", "inv", "--n", 5)
    for name in ("real", "sd", "inv"):
        ok("show", name, "--out", f"results/grids/{name}.png", "--per-row", 3)
    ok("report")

    readme = Path("results/README.md").read_text()
    rows = {r["model"]: r for r in csv.DictReader(open("results/accuracy.csv"))}
    table = re.findall(r"^\| .*\(`(.+?)`\) \| ([\d.]+) \| ([\d.-]+) \| (\d+) \|.*\| `(.+?)` \|$", readme, re.M)
    assert [t[0] for t in table] == ["real", "inv", "sd", "real+inv", "real+sd"]
    for _, ours, _, train_images, model in table:
        assert ours == f"{100 * float(rows[model]['accuracy']):.2f}" and train_images == rows[model]["train_images"]
    assert [t[2] for t in table] == ["81.80", "78.63", "52.57", "86.14", "83.94"]
    assert "These synthetic images are noise" in readme
    for figure in ("grids/real.png", "grids/sd.png", "grids/inv.png", "gradcam/gradcam_grid.png", "vanish/histograms.png"):
        assert f"]({figure})" in readme and (Path("results") / figure).exists()
    assert "| n_segments |" in readme and "How many lines a small image really yields" in readme

    Path("elsewhere").mkdir()
    Path("data").rename("elsewhere/data")
    ok("report", "--models", Path("models").resolve(), "--data", "elsewhere/data")
    again = Path("results/README.md").read_text()
    assert again.count("models/resnet18-") >= 10 and "`elsewhere/data/sd.h5` (sd)" in again


def test_report_without_results_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("report")
    assert result.exit_code == 2 and "run the pipeline first" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_shows_the_plan(tmp_path):
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "reproduce", f"STAMPS={tmp_path}/stamps", f"VENV={tmp_path}/venv"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for step in ("data cifar10", "sample --prompt", "invert --class airplane", "sample --embeddings", "train --data real,inv",
                 "evaluate", "gradcam", "vanish", "report"):
        assert step in out.stdout, step
    help_text = subprocess.run(["make", "-C", str(ROOT), "help"], capture_output=True, text=True).stdout
    for var in ("MODEL", "PER_CLASS", "PER_IMAGE", "SD_PER_CLASS", "EPOCHS", "SEED", "DEVICE", "SHARDS"):
        assert var + "=" in help_text
