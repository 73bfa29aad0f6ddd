"""`synthkit model train` (synthkit.minisd) on a small real store at a tiny width: the folder it writes loads as Stable
Diffusion loads and says how it was made; a run killed in the UNet stage and resumed ends with the same weights as one
that was never stopped."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from synthkit.config import MiniConfig

from conftest import run

SMALL = MiniConfig(
    vae_steps=3, vae_batch_size=8, steps=4, batch_size=8, warmup_steps=1, unet_channels=(32, 32, 32),
    vae_channels=(16, 16, 16), text_hidden=32, preview_every=0, checkpoint_every=0,
)  # fmt: skip


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_model_train_writes_a_pipeline_that_loads_and_samples(tmp_path, real_store):
    out = tmp_path / "mini"
    options = ["--vae-steps", 2, "--steps", 2, "--vae-batch-size", 8, "--batch-size", 8]
    options += ["--width", 32, "--vae-width", 16]
    result = run("model", "train", "--data", real_store, "--out", out, *options, "--preview-every", 0)
    assert result.exit_code == 0, result.output
    note = json.loads((out / "synthkit.json").read_text())
    assert note["kind"] == "mini" and note["vae_steps"] == 2 and note["unet_steps"] == 2 and note["images"] == 120
    assert note["config"]["unet_channels"] == [32, 64, 64] and note["config"]["vae_channels"] == [16, 32, 32]
    assert note["command"] and note["machine"] and note["seconds"] > 0  # (in-process, the command is pytest's)
    result = run("sample", "--prompt", "a photo of a {class}", "--model", out, "--per-class", 1, "--steps", 2,
                 "--classes", real_store, "--out", tmp_path / "s.h5")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, real_store, monkeypatch):
    from synthkit import minisd

    whole = tmp_path / "whole"
    minisd.train_mini(real_store, whole, SMALL, device="cpu", say=lambda *_: None)
    real_generators = minisd._step_generators

    def killed_at_unet_step_3(seed, stage, step, device):
        if stage == 2 and step == 2:
            raise KeyboardInterrupt  # as a kill after UNet step 2 (states are saved every step here)
        return real_generators(seed, stage, step, device)

    monkeypatch.setattr(minisd, "_step_generators", killed_at_unet_step_3)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        minisd.train_mini(real_store, part, SMALL, device="cpu", say=lambda *_: None)
    assert not (part / "synthkit.json").exists() and minisd.state_path(part).exists()
    monkeypatch.setattr(minisd, "_step_generators", real_generators)
    minisd.train_mini(real_store, part, SMALL, device="cpu", resume=True, say=lambda *_: None)
    a, b = weights(whole), weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    minisd.train_mini(real_store, other, replace(SMALL, seed=1), device="cpu", say=lambda *_: None)
    assert not all(torch.equal(a[k], weights(other)[k]) for k in a)  # the seed decides
