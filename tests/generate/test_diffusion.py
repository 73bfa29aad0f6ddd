import dataclasses

import torch

from synthkit.generate.diffusion import build_tiny_pipeline, check_resolution, encode_text, load_diffusion

from conftest import run

CPU = torch.device("cpu")


def test_tiny_model_round_trips_offline(tiny_sd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd / part).is_dir()
    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    assert d.hidden_size == 32 and d.vae_scale == 8 and d.native_resolution == 64
    assert not any(p.requires_grad for p in d.unet.parameters())
    hidden = encode_text(d, ["a photo of a cat", "a photo of a dog"])
    assert hidden.shape == (2, 77, 32) and not torch.allclose(hidden[0], hidden[1])
    again = load_diffusion(str(tiny_sd), CPU, torch.float32)
    for a, b in zip(d.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)


def test_tiny_model_samples_with_stable_diffusions_own_scheduler(tiny_sd):
    """SD 1.x's scheduler_config.json: PNDM without the PRK warm-up; --scheduler pndm keeps it so on any model."""
    from test_model_random import SD15_SCHEDULER, _same

    from synthkit.generate.diffusion import make_scheduler

    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    for name in ("model", "pndm"):
        scheduler = make_scheduler(d, name)
        assert type(scheduler).__name__ == "PNDMScheduler" and _same(scheduler.config, SD15_SCHEDULER), name
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) == 5 and len(scheduler.prk_timesteps) == 0  # PLMS only, as SD 1.x runs it
    ddim_config = {k: v for k, v in d.scheduler_config.items() if k != "skip_prk_steps"}
    assert make_scheduler(dataclasses.replace(d, scheduler_config=ddim_config), "pndm").config.skip_prk_steps


def test_tiny_model_refuses_to_overwrite(tiny_sd):
    result = run("model", "tiny", "--out", tiny_sd)
    assert result.exit_code == 2 and "--overwrite" in result.stderr


def test_missing_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("sample", "--prompt", "a {class}", "--model", "nobody/no-such-model", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2, result.output
    assert "synthkit model tiny" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "folder").mkdir()
    result = run("sample", "--prompt", "a {class}", "--model", tmp_path / "folder", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "not a diffusers Stable Diffusion folder" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_resolution_must_be_a_multiple_of_8(tiny_sd, tmp_path):
    result = run("sample", "--prompt", "a {class}", "--model", tiny_sd, "--resolution", 60, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "multiple of 8" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_other_hidden_sizes_can_be_built(tmp_path):
    d = load_diffusion(str(build_tiny_pipeline(tmp_path / "wide", hidden=48)), CPU, torch.float32)
    assert d.hidden_size == 48
    check_resolution(64, d)


def guided_by_hand(d, latents, cond, uncond, steps, guidance):
    """Classifier-free guidance written out: the two branches run one after the other, then combined."""
    from synthkit.generate.diffusion import make_scheduler

    scheduler = make_scheduler(d, "ddim")
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(latents, t)
        eps_u = d.unet(x, t, encoder_hidden_states=uncond).sample
        eps_c = d.unet(x, t, encoder_hidden_states=cond).sample
        latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
    return latents


@torch.no_grad()
def test_guidance_with_cond_and_uncond_of_different_lengths_equals_the_branches_by_hand(tiny_sd):
    from synthkit.generate.diffusion import denoise, initial_noise, make_scheduler

    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    latents = initial_noise([1, 2], (4, 8, 8), CPU, torch.float32)
    cond = torch.randn(2, 5, d.hidden_size, generator=torch.Generator().manual_seed(0))  # 5 tokens, as DI embeddings
    uncond = encode_text(d, ["", ""])  # 77 tokens
    assert cond.shape[1] != uncond.shape[1]
    guided = denoise(d, make_scheduler(d, "ddim"), latents, cond, uncond, steps=3, guidance=4.0)
    torch.testing.assert_close(guided, guided_by_hand(d, latents, cond, uncond, 3, 4.0), rtol=1e-5, atol=1e-5)
    unguided = denoise(d, make_scheduler(d, "ddim"), latents, cond, uncond, steps=3, guidance=1.0)
    torch.testing.assert_close(
        unguided, denoise(d, make_scheduler(d, "ddim"), latents, cond, None, steps=3, guidance=4.0)
    )
    assert (guided - unguided).abs().max() > 1e-3  # the uncond branch really changes the result
    # the same-length branch (one batched call) agrees with the branches by hand too
    uncond5 = encode_text(d, ["", ""], length=5)
    torch.testing.assert_close(
        denoise(d, make_scheduler(d, "ddim"), latents, cond, uncond5, steps=3, guidance=4.0),
        guided_by_hand(d, latents, cond, uncond5, 3, 4.0),
        rtol=1e-4,
        atol=1e-4,
    )
