import re
import subprocess
import sys

import h5py
import numpy as np
from PIL import Image

from synthkit.store import Store

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

    from synthkit.checkpoint import save_checkpoint

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
        (("evaluate", "--out", "x"), "No such option: --out"),
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
