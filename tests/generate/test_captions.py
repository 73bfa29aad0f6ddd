"""BLIP captions stay with their images, survive an interruption, and become each image's img2img prompt: the
original study's Stable Diffusion row, on the tiny random captioner and generator."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import synthkit.generate.captions as captions
from synthkit.core.paths import partial_path
from synthkit.io.store import Store

from conftest import run

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, test_store, tiny_blip) -> Path:
    out = tmp_path_factory.mktemp("captions") / "test-captions.h5"
    result = run(
        "caption", "--data", test_store, "--model", tiny_blip, "--batch-size", 16, "--device", "cpu", "--out", out
    )
    assert result.exit_code == 0, result.output
    return out


def test_captions_are_stored_with_their_images_row_by_row(captioned, test_store, tiny_blip):
    processor, captioner = captions.load_captioner(str(tiny_blip), CPU)
    with Store(captioned) as c, Store(test_store) as s:
        assert c.fingerprint == s.fingerprint and c.classes == s.classes and np.array_equal(c.labels, s.labels)
        assert c.column_names == sorted(s.column_names + ["caption"]) and c.meta["kind"] == "real"
        text = c.column("caption")
        assert len(set(text)) > 10 and all(isinstance(t, str) and t for t in text)  # random words, image by image
        for row in (0, 17, 59):  # a caption is its own image's, made alone or in a batch of 16
            assert text[row] == captions.caption_images(processor, captioner, s.images([row]), CPU)[0]
        assert c.meta["captions"]["model"] == str(tiny_blip) and c.meta["sources"][0]["fingerprint"] == s.fingerprint
    shown = run("info", captioned)
    assert (
        shown.exit_code == 0
        and "the first 5 captions" in shown.output
        and text[0][:20] in " ".join(shown.output.split())
    )


def test_an_interrupted_captioning_resumes_to_the_same_captions(
    tmp_path, test_store, tiny_blip, captioned, monkeypatch
):
    original, calls = captions.caption_images, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # the third batch of 16
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(captions, "caption_images", interrupted)
    out = tmp_path / "captions.h5"
    with pytest.raises(KeyboardInterrupt):
        captions.caption_store(test_store, out, model=str(tiny_blip), batch_size=16, device="cpu")
    assert partial_path(out).exists() and not out.exists()
    monkeypatch.setattr(captions, "caption_images", original)
    result = run(
        "caption", "--data", test_store, "--model", tiny_blip, "--batch-size", 16, "--device", "cpu", "--out", out
    )
    assert result.exit_code == 2 and "--resume" in result.stderr
    result = run(
        "caption",
        "--data",
        test_store,
        "--model",
        tiny_blip,
        "--batch-size",
        16,
        "--device",
        "cpu",
        "--out",
        out,
        "--resume",
    )
    assert result.exit_code == 0, result.output
    with Store(out) as a, Store(captioned) as b:
        assert list(a.column("caption")) == list(b.column("caption"))


def test_img2img_from_captions_records_each_samples_caption_and_source(tmp_path, captioned, tiny_sd, tiny_blip):
    out = tmp_path / "sd.h5"
    result = run(
        "sample",
        "--prompt-from",
        "caption",
        "--init",
        captioned,
        "--per-class",
        8,
        "--model",
        tiny_sd,
        "--steps",
        2,
        "--resolution",
        64,
        "--save-size",
        32,
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    with Store(out) as sd, Store(captioned) as init:
        source, prompt = sd.column("source_index"), sd.column("prompt")
        text = init.column("caption")
        assert len(sd) == 80 and all(p == text[s] for p, s in zip(prompt, source))  # each sample: its image's caption
        assert np.array_equal(sd.labels, init.labels[source])  # and its image's class
        counts = np.bincount(source, minlength=len(init))
        assert set(counts) == {1, 2}  # 8 samples from each class's 6 images: every image once or twice
        assert sd.meta["params"]["prompt_from"] == "caption" and sd.meta["prompts"] == "each init image's caption"
    result = run(
        "train",
        "--data",
        f"{captioned},{out}",
        "--recipe",
        "quick",
        "--steps",
        2,
        "--batch-size",
        8,
        "--device",
        "cpu",
        "--out",
        tmp_path / "clf.safetensors",
    )  # caption -> sample -> train
    assert result.exit_code == 0 and "4 real + 4 synthetic" in result.output, result.output
    for args, message in (
        (["--prompt-from", "caption", "--model", tiny_sd], "give --init"),
        (
            ["--prompt-from", "caption", "--prompt", "a {class}", "--init", captioned, "--model", tiny_sd],
            "not --prompt",
        ),
        (["--prompt-from", "nothing", "--init", captioned, "--model", tiny_sd], "no text column of that name"),
    ):
        bad = run("sample", *args, "--device", "cpu", "--out", tmp_path / "x.h5")
        assert bad.exit_code == 2 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / "x.h5").exists()


def test_a_hub_id_that_cannot_be_reached_is_one_line(tmp_path, test_store, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("caption", "--data", test_store, "--model", "Salesforce/no-such-captioner", "--out", tmp_path / "c.h5")
    assert result.exit_code == 2 and "cannot load model 'Salesforce/no-such-captioner'" in result.stderr
    assert "synthkit model tiny-blip" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "folder").mkdir()
    result = run("caption", "--data", test_store, "--model", tmp_path / "folder", "--out", tmp_path / "c.h5")
    assert result.exit_code == 2 and "is not a BLIP captioning folder" in result.stderr
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_makes_the_studys_sd_row_from_captions_or_a_template(tmp_path):
    def plan(*variables):
        out = subprocess.run(
            ["make", "-n", "-f", str(ROOT / "Makefile"), "sd", "STAMPS=stamps", "VENV=venv", *variables],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.split())

    captioned = plan()
    assert "synthkit caption --data data/real.h5 --model Salesforce/blip-image-captioning-base" in captioned
    assert "--out data/real-captions.h5 --resume" in captioned
    assert (
        "synthkit sample --prompt-from caption --per-class 2500 --model runwayml/stable-diffusion-v1-5 "
        "--init data/real-captions.h5"
    ) in captioned and "--prompt 'a photo" not in captioned
    template = plan("SD_PROMPTS=template", "SD_MODEL=my-sd")
    assert "synthkit caption" not in template
    assert (
        "sample --prompt 'a photo of a {class}' --classes data/real.h5 --per-class 2500 --model my-sd --init "
        "data/real.h5" in template
    )
    wrong = subprocess.run(
        [
            "make",
            "-n",
            "-f",
            str(ROOT / "Makefile"),
            "sd",
            "STAMPS=stamps",
            "VENV=venv",
            "SD_PROMPTS=captions",
            "SD_INIT=",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0 and "needs SD_INIT" in wrong.stderr
