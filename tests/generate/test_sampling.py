import numpy as np
import pytest
import torch

import synthkit.generate.sampling as sampling
from synthkit.generate.diffusion import build_tiny_pipeline
from synthkit.generate.inversion import InversionConfig, invert
from synthkit.generate.sampling import choose_partners, group_means, group_members, perturb
from synthkit.io.store import Store, StoreWriter

from conftest import run, usage_error

FAST = ["--steps", 3, "--resolution", 64]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, tiny_sd, small_real):
    out = tmp_path_factory.mktemp("inv") / "emb.safetensors"
    invert(
        small_real,
        out,
        "airplane,cat",
        str(tiny_sd),
        InversionConfig(updates=3, resolution=64, batch_size=4, group_size=2, chunk_groups=2),
    )
    return out


def test_prompt_sampling_counts_labels_prompts_and_metadata(tiny_sd, tmp_path):
    out = tmp_path / "sd.h5"
    result = run(
        "sample",
        "--prompt",
        "a photo of a {class}",
        "--prompt",
        "a {class}",
        "--classes",
        "cat,dog,ship",
        "--per-class",
        3,
        "--model",
        tiny_sd,
        "--seed",
        7,
        "--batch-size",
        4,
        "--scheduler",
        "ddim",
        *FAST,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    with Store(out) as s:
        assert len(s) == 9 and s.classes == ["cat", "dog", "ship"] and s.image_shape == (64, 64, 3)
        assert list(s.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert list(s.column("prompt")[:3]) == ["a photo of a cat", "a cat", "a photo of a cat"]
        assert len(set(s.column("seed"))) == 9
        assert s.meta["kind"] == "sd" and s.meta["params"]["seed"] == 7 and s.meta["params"]["guidance"] == 7.5
        assert s.meta["params"]["templates"] == ["a photo of a {class}", "a {class}"]
        images = s.images()
        assert images.std() > 0 and not np.array_equal(images[0], images[1])


def test_img2img_from_a_real_store_and_save_size(tiny_sd, small_real, tmp_path):
    out = tmp_path / "sd.h5"
    result = run(
        "sample",
        "--prompt",
        "a {class}",
        "--per-class",
        2,
        "--init",
        small_real,
        "--strength",
        0.5,
        "--save-size",
        32,
        "--model",
        tiny_sd,
        *FAST,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    with Store(out) as s, Store(small_real) as real:
        assert s.image_shape == (32, 32, 3) and len(s) == 20
        source = s.column("source_index")
        assert (real.labels[source] == s.labels).all()
        assert s.meta["sources"][0]["fingerprint"] == real.fingerprint


def diffusers_pipeline(tiny_sd, img2img: bool):
    """diffusers' own StableDiffusionPipeline (or its Img2Img twin, as the study's notebook calls it) on the tiny
    model, with the model's own scheduler and no safety checker (the tiny model has none)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if img2img:
        pipe = StableDiffusionImg2ImgPipeline(**pipe.components)
        pipe.set_progress_bar_config(disable=True)
    return pipe


def as_pixels(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(int)


def test_prompt_sampling_equals_diffusers_pipeline(tiny_sd, tmp_path):
    """Each sample is what StableDiffusionPipeline makes of its prompt with a generator seeded by its seed."""
    out = tmp_path / "sd.h5"
    args = ["--prompt", "a photo of a {class}", "--classes", "airplane,cat", "--per-class", 2, "--batch-size", 3]
    result = run("sample", *args, "--model", tiny_sd, "--steps", 4, "--resolution", 64, "--out", out)
    assert result.exit_code == 0, result.output
    with Store(out) as s:
        images, prompts, seeds = s.images(), list(s.column("prompt")), [int(x) for x in s.column("seed")]
    assert len(set(seeds)) == 4
    reference = diffusers_pipeline(tiny_sd, img2img=False)(
        prompts,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(x) for x in seeds],
        output_type="np",
    ).images
    assert np.abs(images.astype(int) - as_pixels(reference)).max() <= 1
    assert images.std() > 5 and not np.array_equal(images[0], images[2])


def test_img2img_equals_diffusers_img2img_pipeline(tiny_sd, small_real, tmp_path):
    """`sample --init` is StableDiffusionImg2ImgPipeline given the init image at the sampling resolution: its
    int(steps x strength) steps (7 of 10 at 0.75, where rounding would run 8), and the init latent drawn from the
    VAE's posterior, then the noise, from one generator per sample seeded by the sample's seed."""
    from synthkit.generate.diffusion import pil_resize

    out = tmp_path / "img2img.h5"
    args = ["--prompt", "a {class}", "--classes", "airplane,cat", "--per-class", 2, "--init", small_real]
    result = run("sample", *args, "--model", tiny_sd, "--steps", 10, "--resolution", 64, "--out", out)
    assert result.exit_code == 0, result.output
    with Store(out) as s, Store(small_real) as real:
        images, prompts, seeds = s.images(), list(s.column("prompt")), [int(x) for x in s.column("seed")]
        init = pil_resize(real.images(s.column("source_index")), 64)  # the resizing is synthkit's (as --resolution)
        assert s.meta["params"]["strength"] == 0.75
    from PIL import Image

    reference = diffusers_pipeline(tiny_sd, img2img=True)(
        prompts,
        image=[Image.fromarray(im) for im in init],
        strength=0.75,
        num_inference_steps=10,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(x) for x in seeds],
        output_type="np",
    ).images
    assert np.abs(images.astype(int) - as_pixels(reference)).max() <= 1
    assert images.std() > 5 and not np.array_equal(images[0], images[1])


def test_a_strength_that_leaves_no_step_is_refused(tiny_sd, small_real, tmp_path):
    out = tmp_path / "x.h5"
    args = ["--prompt", "a {class}", "--init", small_real, "--strength", 0.05, "--steps", 10, "--model", tiny_sd]
    result = run("sample", *args, "--out", out)
    assert result.exit_code == 2 and result.stderr.startswith("error: --strength 0.05 at --steps 10 leaves no step")
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_prompts_take_their_classes_from_the_init_store(tiny_sd, small_real, tmp_path):
    from conftest import cut_store

    mine = cut_store(small_real, tmp_path / "mine.h5", 32, classes=("ship", "cat"))
    out = tmp_path / "sd.h5"
    result = run(
        "sample",
        "--prompt",
        "a photo of a {class}",
        "--per-class",
        1,
        "--init",
        mine,
        "--model",
        tiny_sd,
        *FAST,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    with Store(out) as s:
        assert s.classes == ["ship", "cat"] and list(s.column("prompt")) == ["a photo of a ship", "a photo of a cat"]


def test_partners_are_distinct_members_of_the_own_group_and_perturbation_honours_alpha_lambda():
    emb = torch.randn(8, 5, 8)
    groups = torch.tensor([10, 10, 10, 10, 10, 40, 40, 70])
    members = group_members(groups)
    assert {g: list(m) for g, m in members.items()} == {10: [0, 1, 2, 3, 4], 40: [5, 6], 70: [7]}
    rows = np.array([0, 3, 5, 7])
    source = np.arange(8) * 10 + 3  # the store rows of the embeddings
    partners = choose_partners(groups, members, rows, per_image=3, seed=1, source=source)
    assert partners.shape == (4, 3)
    assert all(groups[j] == groups[i] for i, row in zip(rows, partners) for j in row)
    assert len(set(partners[0])) == 3 and len(set(partners[1])) == 3  # without replacement where the group allows
    assert list(partners[3]) == [7, 7, 7]
    assert np.array_equal(
        choose_partners(groups, members, rows[1:2], 3, seed=1, source=source), partners[1:2]
    )  # per image
    chosen = np.concatenate(
        [choose_partners(groups, members, np.array([0]), 3, seed=s, source=source)[0] for s in range(200)]
    )
    assert set(chosen) == {0, 1, 2, 3, 4}  # the image itself is a candidate, as in the official code
    j, seeds = partners[:, 0], [11, 12, 13, 14]
    assert torch.equal(perturb(emb, rows, j, seeds, interp=0.0, noise=0.0), emb[rows])
    assert torch.allclose(perturb(emb, rows, j, seeds, interp=1.0, noise=0.0), emb[j], atol=1e-6)
    noisy = perturb(emb, rows, j, seeds, interp=0.3, noise=0.5)
    base = emb[rows] + 0.3 * (emb[j] - emb[rows])
    assert (noisy - base).std() == pytest.approx(0.5, rel=0.25)
    means = group_means(emb, groups)
    assert torch.allclose(means[10], emb[:5].mean(0)) and torch.equal(means[70], emb[7])


def spy_denoise(monkeypatch, fast: bool = False) -> list:
    """Records cond, uncond, steps and guidance of every denoise call (and skips the work if fast)."""
    seen = []
    original = sampling.denoise

    def spy(diffusion, scheduler, latents, cond, uncond, steps, guidance, start_step=0, eta=0.0, seeds=None, **more):
        seen.append((cond.clone(), uncond.clone(), steps, guidance))
        return (
            latents
            if fast
            else original(
                diffusion, scheduler, latents, cond, uncond, steps, guidance, start_step, eta=eta, seeds=seeds, **more
            )
        )

    monkeypatch.setattr(sampling, "denoise", spy)
    return seen


def test_di_sampling_store_and_class_mixed_guidance(tiny_sd, embeddings, tmp_path, monkeypatch):
    seen = spy_denoise(monkeypatch)
    out = tmp_path / "inv.h5"
    result = run(
        "sample",
        "--embeddings",
        embeddings,
        "--per-image",
        2,
        "--steps",
        3,
        "--interp",
        0.2,
        "--noise",
        0.05,
        "--batch-size",
        5,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    from synthkit.io.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(embeddings)
    with Store(out) as s:
        assert len(s) == 16 and s.image_shape == (32, 32, 3) and s.meta["kind"] == "inv"
        source, partner, group = s.column("source_index"), s.column("partner"), s.column("group")
        index_of = {int(x): k for k, x in enumerate(tensors["source_index"])}
        for src, par, g, label in zip(source, partner, group, s.labels):
            k, j = index_of[int(src)], index_of[int(par)]
            assert (
                tensors["group"][j] == g == tensors["group"][k] and tensors["label"][k] == label == tensors["label"][j]
            )
        assert (s.column("alpha") == 0.2).all() and (s.column("noise") == 0.05).all()
        assert s.meta["params"]["uncond"] == "mixed" and s.meta["uncond"].startswith(
            "mixed: the mean of all 8 embeddings (2 classes)"
        )
        assert (s.meta["params"]["steps"], s.meta["params"]["guidance"], s.meta["params"]["save_size"]) == (
            3,
            2.0,
            32,
        )  # as run
    mixed = tensors["embeddings"].mean(0)
    assert all(torch.allclose(u, mixed) for _, uncond, _, _ in seen for u in uncond)
    class_means = [tensors["embeddings"][tensors["label"] == c].mean(0) for c in tensors["label"].unique()]
    assert all((mixed - m).abs().max() > 1e-3 for m in class_means)  # not the class mean the official code avoids
    assert all(g == 2.0 for _, _, _, g in seen)


def test_uncond_group_and_empty_are_options_recorded_in_the_store(tiny_sd, embeddings, tmp_path, monkeypatch):
    from synthkit.io.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(embeddings)
    means = group_means(tensors["embeddings"], tensors["group"])
    for mode in ("group", "empty"):
        seen = spy_denoise(monkeypatch, fast=True)
        out = tmp_path / f"{mode}.h5"
        result = run(
            "sample", "--embeddings", embeddings, "--per-image", 1, "--uncond", mode, "--batch-size", 8, "--out", out
        )
        assert result.exit_code == 0, result.output
        with Store(out) as s:
            assert s.meta["params"]["uncond"] == mode and s.meta["uncond"].startswith(mode)
            groups = s.column("group")
        uncond = seen[0][1]
        if mode == "group":
            assert all(torch.allclose(u, means[int(g)]) for u, g in zip(uncond, groups))
        else:
            assert uncond.shape == (8, 5, 32) and torch.allclose(uncond[0], uncond[7])  # the empty prompt, 5 tokens
    result = run("sample", "--embeddings", embeddings, "--uncond", "group-mean", "--out", tmp_path / "x.h5")
    usage_error(result, "--uncond", "'mixed'", "'group'", "'empty'")


@torch.no_grad()
def official_sampling(
    diffusion,
    table: torch.Tensor,
    i: list[int],
    j: list[int],
    strength: float,
    emb_noise: float,
    seeds: list[int],
    latent_shape: tuple[int, ...],
    guidance: float,
    steps: int,
    scheduler,
    eta: float,
    save_resolution: int,
) -> np.ndarray:
    """A compact copy of the official sampling (yongchaoz/diffusion_inversion: di/sample_dataset.py's cifar/stl branch,
    :155-203, and src/pipeline_emb.py's __call__, :439-602) for one group whose table is `table` (num_emb, tokens,
    hidden): soft one-hot prompts through the nn.Linear table, embedding noise on the conditional tokens only, the
    group's mean embedding as the unconditional input, guidance, the scheduler's loop with eta where its step takes it,
    the VAE decode and PIL bicubic resizing. Its draws are its own, with the official semantics (every sample its own
    starting latent, embedding noise and step noise), from generators seeded as synthkit documents it: the latent from
    the sample's seed, the embedding noise from stream 1 of it, the step noise from stream 2, one draw per step."""
    import inspect

    from PIL import Image

    def generator(seed: int, stream: int | None = None) -> torch.Generator:
        return torch.Generator().manual_seed(seed if stream is None else official_seed(seed, stream))

    latents = torch.stack([torch.randn(latent_shape, generator=generator(x)) for x in seeds])
    eps = torch.stack([torch.randn(table.shape[1:], generator=generator(x, 1)) for x in seeds])
    step_generators = [generator(x, 2) for x in seeds]

    num_emb, tokens, hidden = table.shape
    weight = table.reshape(num_emb, tokens * hidden).T  # nn.Linear(num_emb, hidden * tokens).weight
    one_hot = np.eye(num_emb)
    prompt = torch.from_numpy(
        np.stack([one_hot[a] + strength * (one_hot[b] - one_hot[a]) for a, b in zip(i, j)])
    ).float()
    text = (prompt @ weight.T).view(-1, tokens, hidden)  # EmbModel.forward
    text = text + eps * emb_noise  # pipeline_emb.py:299-302
    uncond = weight.mean(dim=1).view(1, tokens, hidden).expand(len(i), -1, -1)  # :306-332, avg_uncond_embeddings
    text_embeddings = torch.cat([uncond, text])
    latents = latents * scheduler.init_noise_sigma  # :435
    scheduler.set_timesteps(steps)
    extra = {"eta": eta} if "eta" in inspect.signature(scheduler.step).parameters else {}  # :368-385
    for t in scheduler.timesteps:
        latent_model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise_pred = diffusion.unet(latent_model_input, t, encoder_hidden_states=text_embeddings).sample
        noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
        noise_pred = noise_pred_uncond + guidance * (noise_pred_text - noise_pred_uncond)
        step_noise = (
            {"variance_noise": torch.stack([torch.randn(latent_shape, generator=g) for g in step_generators])}
            if extra and eta > 0
            else {}
        )
        latents = scheduler.step(noise_pred, t, latents, **extra, **step_noise).prev_sample
    image = diffusion.vae.decode(1 / 0.18215 * latents).sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    pil = [Image.fromarray((im * 255).round().astype("uint8")) for im in image]  # numpy_to_pil
    return np.stack([np.asarray(im.resize((save_resolution, save_resolution), resample=Image.BICUBIC)) for im in pil])


def official_seed(*parts: int) -> int:
    """synthkit's documented seed of a sample or stream: a 63-bit hash of its integer parts (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@pytest.mark.parametrize("scheduler", ["pndm", "ddim"])
def test_synthkit_matches_the_official_sampling(tiny_sd, embeddings, tmp_path, scheduler):
    """Given the same partners, synthkit's DI samples are the official pipeline's, pixel for pixel up to rounding:
    with SD 1.x's own PNDM (which takes no eta) and with DDIM at the official eta 1. The reference draws its own
    randomness, every sample of every image its own: collapsed seeds or restarted step noise would differ."""
    import diffusers

    from synthkit.core.config import DIConfig, SamplingConfig
    from synthkit.generate.diffusion import load_diffusion
    from synthkit.generate.inversion import load_embeddings

    out, job_seed, per_image = tmp_path / f"inv-{scheduler}.h5", 3, 2
    sampling.sample_embeddings(
        out,
        [embeddings],
        DIConfig(per_image=per_image, noise=0.3, interp=0.25),
        SamplingConfig(steps=4, scheduler=scheduler, batch_size=5, seed=job_seed),
        device="cpu",
    )
    tensors, meta = load_embeddings([embeddings])
    d = load_diffusion(str(tiny_sd), torch.device("cpu"), torch.float32)
    with Store(out) as s:
        source, partner, stored_seeds, images = (
            s.column("source_index"),
            s.column("partner"),
            s.column("seed"),
            s.images(),
        )
        assert s.meta["params"]["eta"] == 1.0
    rows = tensors["source_index"].numpy()
    assert list(source) == [int(r) for r in rows for _ in range(per_image)]  # every image, per_image samples each
    seeds = [official_seed(job_seed, int(r), k) for r in rows for k in range(per_image)]
    assert len(set(seeds)) == len(seeds) == 16 and [int(x) for x in stored_seeds] == seeds
    index_of = {int(row): k for k, row in enumerate(rows)}
    i, j = [index_of[int(r)] for r in source], [index_of[int(r)] for r in partner]
    table = tensors["embeddings"].float()  # the 8 embeddings of the fixture, as one official group of 8
    official_scheduler = getattr(diffusers, {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler"}[scheduler]).from_config(
        d.scheduler_config
    )
    latent_shape = d.latent_shape(meta["resolution"])
    starts = torch.stack([torch.randn(latent_shape, generator=torch.Generator().manual_seed(x)) for x in seeds])
    assert torch.pdist(starts.flatten(1)).min() > 1  # every sample starts from its own latent
    reference = official_sampling(d, table, i, j, 0.25, 0.3, seeds, latent_shape, 2.0, 4, official_scheduler, 1.0, 32)
    assert images.shape == reference.shape == (16, 32, 32, 3)
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1
    assert images.std() > 5  # not an empty comparison


def test_a_python_caller_gets_the_official_di_defaults(embeddings, tmp_path, monkeypatch):
    seen = spy_denoise(monkeypatch, fast=True)
    out = sampling.sample_embeddings(tmp_path / "inv.h5", [embeddings])
    with Store(out) as s:
        p = s.meta["params"]
        assert (p["per_image"], p["interp"], p["noise"], p["guidance"], p["steps"], p["uncond"], p["eta"]) == (
            5,
            0.1,
            0.1,
            2.0,
            100,
            "mixed",
            1.0,
        )
        assert len(s) == 40 and s.image_shape == (32, 32, 3)  # saved at the size of the images it inverted
    assert {(steps, guidance) for _, _, steps, guidance in seen} == {(100, 2.0)}


def test_per_class_files_as_the_makefile_makes_them_keep_partners_in_class(tiny_sd, small_real, tmp_path, monkeypatch):
    """The Makefile inverts each class into its own file, then samples them all in one run."""
    files = []
    for name in ("airplane", "automobile", "bird"):
        files.append(tmp_path / "inv" / f"{name}.safetensors")
        result = run(
            "invert",
            "--class",
            name,
            "--data",
            small_real,
            "--model",
            tiny_sd,
            "--resolution",
            64,
            "--updates",
            1,
            "--group-size",
            2,
            "--batch-size",
            2,
            "--out",
            files[-1],
        )
        assert result.exit_code == 0, result.output
    spy_denoise(monkeypatch, fast=True)
    out = tmp_path / "inv.h5"
    result = run(
        "sample", *(x for f in files for x in ("--embeddings", f)), "--per-image", 5, "--batch-size", 16, "--out", out
    )
    assert result.exit_code == 0, result.output
    with Store(out) as s, Store(small_real) as real:
        labels = real.labels
        assert len(s) == 60 and set(s.labels) == {0, 1, 2}
        assert (labels[s.column("partner")] == s.labels).all() and (labels[s.column("source_index")] == s.labels).all()
        groups = s.column("group")
        assert len(set(groups)) == 6  # two groups per class file, none shared between files
        for g in set(groups):
            assert len(set(s.labels[groups == g])) == 1
        forward = {int(seed): (int(p), im) for seed, p, im in zip(s.column("seed"), s.column("partner"), s.images())}
    reverse = tmp_path / "reverse.h5"
    result = run(
        "sample", *(x for f in reversed(files) for x in ("--embeddings", f)), "--per-image", 5, "--out", reverse
    )
    assert result.exit_code == 0, result.output
    with Store(reverse) as s:  # the same samples of every image, whatever the order of the files
        reversed_ = {int(seed): (int(p), im) for seed, p, im in zip(s.column("seed"), s.column("partner"), s.images())}
    assert reversed_.keys() == forward.keys()
    for seed, (partner, image) in forward.items():
        # Other batches sum in another order: with one thread a pixel may round to the next level (seen: 1).
        assert reversed_[seed][0] == partner
        assert np.abs(reversed_[seed][1].astype(int) - image.astype(int)).max() <= 1, seed


def test_embeddings_that_would_cross_or_repeat_are_refused(tiny_sd, small_real, embeddings, tmp_path):
    from synthkit.io.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(embeddings)
    old = tmp_path / "old.safetensors"
    save_checkpoint(old, tensors, {k: v for k, v in meta.items() if k != "group_ids"})
    result = run("sample", "--embeddings", old, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "older synthkit" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run("sample", "--embeddings", embeddings, "--embeddings", embeddings, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "both hold store row" in result.stderr
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, tensors, meta | {"sources": [{"path": "elsewhere.h5", "fingerprint": "0123"}]})
    result = run("sample", "--embeddings", embeddings, "--embeddings", other, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "another real store" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_prompt_shards_merged_equal_an_unsharded_run(tiny_sd, tmp_path):
    args = [
        "--prompt",
        "a {class}",
        "--classes",
        "cat,dog,frog",
        "--per-class",
        3,
        "--model",
        tiny_sd,
        "--batch-size",
        2,
        *FAST,
    ]
    assert run("sample", *args, "--out", tmp_path / "all.h5").exit_code == 0
    for i in range(3):
        assert run("sample", *args, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}.h5").exit_code == 0
    result = run("merge", tmp_path / "s1.h5", tmp_path / "s0.h5", tmp_path / "s2.h5", "--out", tmp_path / "m.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "all.h5") as a, Store(tmp_path / "m.h5") as b:
        assert a.fingerprint == b.fingerprint
        assert list(a.column("prompt")) == list(b.column("prompt")) and list(a.column("seed")) == list(b.column("seed"))


def test_di_resume_equals_uninterrupted(tiny_sd, embeddings, tmp_path, monkeypatch):
    args = ["--embeddings", embeddings, "--per-image", 2, "--steps", 2, "--batch-size", 3]
    assert run("sample", *args, "--out", tmp_path / "ref.h5").exit_code == 0
    calls = {"n": 0}
    original = StoreWriter.append

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(StoreWriter, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        sampling.sample_embeddings(
            tmp_path / "x.h5",
            [embeddings],
            sampling.DIConfig(per_image=2),
            sampling.SamplingConfig(steps=2, guidance=2.0, batch_size=3, save_size=32),
        )
    monkeypatch.setattr(StoreWriter, "append", original)
    assert not (tmp_path / "x.h5").exists()
    result = run("sample", *args, "--out", tmp_path / "x.h5", "--resume")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "ref.h5") as a, Store(tmp_path / "x.h5") as b:
        assert a.fingerprint == b.fingerprint


def test_embeddings_from_a_model_of_another_hidden_size_are_refused(embeddings, tmp_path):
    wide = build_tiny_pipeline(tmp_path / "wide", hidden=48)
    result = run("sample", "--embeddings", embeddings, "--model", wide, "--steps", 1, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "hidden size 32" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.h5").exists()


def test_not_embeddings_and_mixed_modes_are_refused(tiny_classifier, embeddings, tmp_path):
    result = run("sample", "--embeddings", tiny_classifier, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "not a synthkit embeddings file" in result.stderr
    result = run("sample", "--embeddings", embeddings, "--prompt", "a {class}", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "not --embeddings and" in result.stderr


def test_classes_can_come_from_a_store(tiny_sd, small_real, tmp_path):
    result = run(
        "sample",
        "--prompt",
        "{class}",
        "--classes",
        small_real,
        "--per-class",
        1,
        "--model",
        tiny_sd,
        "--steps",
        1,
        "--resolution",
        64,
        "--batch-size",
        10,
        "--out",
        tmp_path / "sd.h5",
    )
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "sd.h5") as s, Store(small_real) as real:
        assert s.classes == real.classes and list(s.column("prompt")) == real.classes


def test_only_samples_the_embeddings_of_a_subsets_images(tiny_sd, small_real, tmp_path, monkeypatch):
    """A sweep's smaller store reuses the larger one's inversion: `--only` takes the embeddings of its images alone,
    regrouped as its own inversion would group them, with partners and the unconditional mean from them alone."""
    from synthkit.io.checkpoint import load_checkpoint

    from conftest import cut_store

    two = cut_store(small_real, tmp_path / "two.h5", 32, classes=("airplane", "cat"))  # 4 images of each class
    emb = tmp_path / "two.safetensors"
    invert(two, emb, "all", str(tiny_sd), InversionConfig(updates=1, resolution=64, batch_size=4, group_size=4))
    assert run("subset", two, "--per-class", 3, "--seed", 1, "--out", tmp_path / "three.h5").exit_code == 0
    assert (
        run("subset", tmp_path / "three.h5", "--per-class", 2, "--seed", 1, "--out", tmp_path / "pair.h5").exit_code
        == 0
    )
    tensors, _ = load_checkpoint(emb)
    by_row = {int(r): e for r, e in zip(tensors["source_index"], tensors["embeddings"])}
    seen = spy_denoise(monkeypatch, fast=True)
    out = tmp_path / "inv-pair.h5"
    result = run("sample", "--embeddings", emb, "--only", tmp_path / "pair.h5", "--per-image", 2, "--out", out)
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "pair.h5") as pair, Store(tmp_path / "three.h5") as three, Store(out) as s:
        rows_in_two = three.column("parent_row")[pair.column("parent_row")]  # through the chain of subsets
        assert len(s) == 8 and set(s.column("source_index")) == {0, 1, 2, 3}  # rows of pair.h5
        assert set(s.column("partner")) <= {0, 1, 2, 3}
        assert all(pair.labels[p] == pair.labels[i] for i, p in zip(s.column("source_index"), s.column("partner")))
        assert s.meta["sources"][0]["fingerprint"] == pair.fingerprint and s.meta["real_images"] == 4
        assert sorted(set(s.column("group"))) == [0, 2]  # one group per class, named by its first row of pair.h5
    mean = torch.stack([by_row[int(r)] for r in rows_in_two]).mean(0)
    assert all(torch.allclose(u, mean) for u in seen[0][1])  # the unconditional input: the mean of these 4 alone
    result = run("sample", "--embeddings", emb, "--only", small_real, "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "not the embeddings' airplane, cat" in result.stderr
    other = cut_store(small_real, tmp_path / "other.h5", 32, classes=("airplane", "cat"), kind="real")
    with (
        Store(other) as o,
        StoreWriter(tmp_path / "flipped.h5", classes=o.classes, image_shape=(32, 32), meta=o.meta, total=len(o)) as w,
    ):
        w.append(o.images()[:, ::-1].copy(), o.labels)  # other pixels: not the inverted images
    result = run("sample", "--embeddings", emb, "--only", tmp_path / "flipped.h5", "--out", tmp_path / "x.h5")
    assert result.exit_code == 2 and "are not the ones inverted" in result.stderr
