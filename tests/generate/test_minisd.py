"""`synthkit model train` (synthkit.generate.minisd) on a small real store at a tiny width: the folder it writes
loads as Stable Diffusion loads and says how it was made; a run killed in the UNet stage and resumed ends with the same
weights as one that was never stopped."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import synthkit

from conftest import SMALL, run


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
    assert note["synthkit_version"] == synthkit.__version__
    result = run("sample", "--prompt", "a photo of a {class}", "--model", out, "--per-class", 1, "--steps", 2,
                 "--classes", real_store, "--out", tmp_path / "s.h5")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, real_store, monkeypatch):
    from synthkit.generate import minisd

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


SEEN = replace(SMALL, steps=12, batch_size=16, uncond_prob=0.3, instance_share=0.25)


@pytest.fixture(scope="module")
def watched(tmp_path_factory, real_store):
    """A small `model train` run whose UNet and text-encoder inputs are recorded by forward hooks on the modules it
    builds: what the stage-2 networks were really shown, read from outside the training loop."""
    from synthkit.generate import minisd

    seen = {"ids": [], "unet": []}
    build = minisd.build_components

    def recorded(spec, seed=0):
        parts = build(spec, seed)
        parts["text_encoder"].register_forward_pre_hook(lambda m, args: seen["ids"].append(args[0].clone()))

        def on_unet(module, args, kwargs):
            seen["unet"].append((args[0].detach().float().clone(), args[1].clone(), kwargs["encoder_hidden_states"]))

        parts["unet"].register_forward_pre_hook(on_unet, with_kwargs=True)
        return parts

    mp = pytest.MonkeyPatch()
    mp.setattr(minisd, "build_components", recorded)
    out = tmp_path_factory.mktemp("watched") / "mini"
    try:
        minisd.train_mini(real_store, out, SEEN, device="cpu", say=lambda *_: None)
    finally:
        mp.undo()
    return out, seen


def test_the_empty_prompt_is_dropped_in_at_uncond_prob(watched):
    """The token ids the text encoder sees hold the empty prompt in about `uncond_prob` of the prompt rows (fails when
    uncond_prob is ignored: 0 empty rows)."""
    from synthkit.generate.diffusion import offline_tokenizer

    _, seen = watched
    empty = offline_tokenizer()([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    ids = torch.cat(seen["ids"])
    share = (ids == empty).all(1).float().mean().item()
    assert len(ids) == 12 * 12 and abs(share - SEEN.uncond_prob) < 0.13, share


def test_the_unet_learns_on_latents_of_unit_spread_and_the_recorded_scale_makes_them(watched, real_store):
    """SD's latent scale: the UNet's noisy inputs a·z + (1-a)·eps imply clean latents z of unit variance, nearer 1
    than the 1/scale² that unscaled latents would have (fails when the latents are not multiplied by the scaling
    factor: 1.23 where 0.98 is measured), and the recorded scaling_factor is 1/std of the VAE's
    encoded latents (fails when it is fixed at 1.0)."""
    from diffusers import AutoencoderKL, DDPMScheduler

    from synthkit.generate.diffusion import SD_SCHEDULE
    from synthkit.io.store import Store

    out, seen = watched
    alphas = DDPMScheduler.from_config(SD_SCHEDULE).alphas_cumprod
    noisy = torch.cat([x for x, _, _ in seen["unet"]])
    a = alphas[torch.cat([t for _, t, _ in seen["unet"]])]
    clean_var = ((noisy.var(dim=(1, 2, 3)) - (1 - a)).sum() / a.sum()).item()
    vae = AutoencoderKL.from_pretrained(out / "vae").float()
    unscaled = 1 / vae.config.scaling_factor**2  # the clean variance the UNet would see were the latents not scaled
    assert abs(unscaled - 1) > 0.15  # this run's scale (0.90) sets the two apart: 1.24 against 1
    assert abs(clean_var - 1) < abs(clean_var - unscaled) / 2, (clean_var, unscaled)  # measured 0.98; unscaled 1.23
    with Store(real_store) as store, torch.no_grad():
        x = torch.from_numpy(store.images()).permute(0, 3, 1, 2).float() / 127.5 - 1
        dist = vae.encode(x).latent_dist
        std = (dist.mean.var() + dist.var.mean()).sqrt().item()  # of the posterior's samples, as LDM measured it
    assert vae.config.scaling_factor == pytest.approx(1 / std, rel=0.05)
    assert abs(vae.config.scaling_factor - 1) > 0.05  # else the check above could not tell a scale of 1.0 apart


def test_the_text_encoder_trains_with_the_unet(watched, real_store):
    """The saved text encoder moved from its seeded start by far more than fp16 rounding (fails when it is frozen
    during the UNet stage)."""
    from transformers import CLIPTextModel

    from synthkit.generate.diffusion import build_components
    from synthkit.generate.minisd import mini_spec

    out, _ = watched
    start = build_components(mini_spec(SEEN, 32), SEEN.seed)["text_encoder"].state_dict()
    saved = CLIPTextModel.from_pretrained(out / "text_encoder").float().state_dict()
    moved = sum((saved[k] - start[k]).abs().sum().item() for k in start if k in saved)
    rounding = sum((start[k].half().float() - start[k]).abs().sum().item() for k in start if k in saved)
    assert moved > 20 * rounding, (moved, rounding)


def test_a_share_of_every_batch_is_conditioned_on_instance_codes_in_dis_format(watched, real_store):
    """Each step shows the UNet its prompt rows (77 CLIP tokens) and `instance_share` of the batch as instance codes of
    DI's shape (5 tokens x hidden), which differ from row to row; the encoder that made them is saved and reads its
    latent (fails when the codes are dropped, or made without the latent)."""
    _, seen = watched
    shapes = [tuple(c.shape) for _, _, c in seen["unet"]]
    codes = round(SEEN.batch_size * SEEN.instance_share)
    assert shapes == [(SEEN.batch_size - codes, 77, SEEN.text_hidden), (codes, 5, SEEN.text_hidden)] * SEEN.steps
    code = seen["unet"][1][2].detach()
    assert (code[0] - code[1]).abs().mean() > 0.1
    from synthkit.generate.minisd import ENCODER_FILE, load_encoder

    out, _ = watched
    encoder = load_encoder(out, SEEN, 32)  # saved beside the pipeline, which loads without it
    with torch.no_grad():
        codes = encoder(torch.randn(2, SEEN.latent_channels, 8, 8))
    assert codes.shape == (2, 5, SEEN.text_hidden) and (out / ENCODER_FILE).is_file()
    assert (codes[0] - codes[1]).abs().mean() > 1e-3  # a code depends on its latent


def test_the_log_is_written_as_the_run_goes_and_ends_with_the_final_figures(tmp_path, real_store, monkeypatch, watched):
    """The JSON-lines log holds every row as soon as it is logged, not only at the (two-minute) checkpoints, and a
    finished run's last line holds its final loss and PSNR (fails when the log is written only with the state); the
    record claims nothing that was not measured."""
    from synthkit.generate import minisd

    real_generators = minisd._step_generators

    def killed_at_unet_step_2(seed, stage, step, device):
        if stage == 2 and step == 2:
            raise KeyboardInterrupt
        return real_generators(seed, stage, step, device)

    monkeypatch.setattr(minisd, "_step_generators", killed_at_unet_step_2)
    out = tmp_path / "mini"
    with pytest.raises(KeyboardInterrupt):
        minisd.train_mini(real_store, out, replace(SMALL, checkpoint_every=1e9), device="cpu", say=lambda *_: None)
    rows = [json.loads(line) for line in minisd.log_path(out).read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["vae", "vae", "unet"] and not minisd.state_path(out).exists()
    finished, _ = watched
    rows = [json.loads(line) for line in minisd.log_path(finished).read_text().splitlines()]
    note = json.loads((finished / "synthkit.json").read_text())
    assert rows[-1] == {"stage": "done", **{k: note[k] for k in ("final_vae_psnr", "final_loss", "seconds")}}
    assert "pictures of its training classes" not in note["note"]


def test_start_from_keeps_the_vae_and_refuses_another_shape(tmp_path, real_store, watched):
    """`--start-from FOLDER` skips stage 1 with the folder's VAE as it is and records where it started; a folder of
    another width is one error line."""
    start, _ = watched
    out = tmp_path / "again"
    result = run("model", "train", "--data", real_store, "--out", out, "--start-from", start, "--steps", 1,
                 "--batch-size", 8, "--width", 32, "--vae-width", 16, "--preview-every", 0)  # fmt: skip
    assert result.exit_code == 2 and "another shape" in result.output and not out.exists()
    from synthkit.generate import minisd

    config = replace(SEEN, steps=1, start_from=str(start))
    note = minisd.train_mini(real_store, out, config, device="cpu", say=lambda *_: None)
    vae = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(start / vae), load_file(out / vae)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in minisd.log_path(out).read_text().splitlines()]
    assert "vae" not in {r["stage"] for r in rows} and note["start_from"]["model"] == str(start)
