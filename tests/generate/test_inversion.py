import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import synthkit.generate.inversion as inversion
from synthkit.core.paths import invert_state_dir as state_dir
from synthkit.generate.diffusion import encode_images, load_diffusion, training_scheduler
from synthkit.generate.inversion import (
    GroupTables,
    InversionConfig,
    draw,
    epoch_steps,
    fixed_loss,
    initial_table,
    inversion_loss,
    invert,
    plan_groups,
)
from synthkit.generate.preview import InversionPreview
from synthkit.io.checkpoint import load_checkpoint, read_meta
from synthkit.io.store import Store

from conftest import run, usage_error

CPU = torch.device("cpu")
FAST = dict(resolution=64, batch_size=4, group_size=3, chunk_groups=1)


class Recorder:
    """Spies on inversion.initial_table and inversion.draw: the starting tables and every step's draws (not those of
    the fixed-draw loss that a chunk records at its start and end, which steps nothing)."""

    def __init__(self, monkeypatch):
        self.tables, self.draws = [], []
        real_table, real_draw, real_fixed = inversion.initial_table, inversion.draw, inversion.fixed_loss
        measuring = []

        def table(*args, **kwargs):
            self.tables.append(real_table(*args, **kwargs))
            return self.tables[-1]

        def draw_(generator, *args, **kwargs):
            out = real_draw(generator, *args, **kwargs)
            if not measuring:
                self.draws.append((generator.initial_seed(), out))
            return out

        def fixed(*args, **kwargs):
            measuring.append(True)
            try:
                return real_fixed(*args, **kwargs)
            finally:
                measuring.pop()

        monkeypatch.setattr(inversion, "initial_table", table)
        monkeypatch.setattr(inversion, "draw", draw_)
        monkeypatch.setattr(inversion, "fixed_loss", fixed)

    def draws_of(self, group: int, seed: int, updates: int) -> list:
        """The draws of one group in step order (a group's generator is seeded per epoch)."""
        seeds = [inversion._seed(seed, group, epoch) for epoch in range(updates)]
        return [d for s in seeds for k, d in self.draws if k == s]


def official_inversion(
    diffusion,
    images: np.ndarray,
    table: torch.Tensor,
    draws: list,
    resolution: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    updates: int,
) -> torch.Tensor:
    """A compact copy of the official update loop (yongchaoz/diffusion_inversion, src/diffuser_inversion.py) for
    one group: a one-hot nn.Linear table, AdamW over the whole group, fixed unshuffled batches, the VAE sampled
    afresh at every step, with the given draws in place of the official torch.randn / randint calls."""
    from diffusers import DDPMScheduler

    num_emb, tokens, hidden = table.shape
    emb = torch.nn.Linear(num_emb, hidden * tokens, bias=False)
    with torch.no_grad():
        emb.weight.copy_(table.reshape(num_emb, tokens * hidden).T)
    optimizer = torch.optim.AdamW(emb.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, eps=1e-08)
    noise_scheduler = DDPMScheduler.from_config(diffusion.scheduler_config)
    pixels = np.stack(
        [np.array(Image.fromarray(im).resize((resolution, resolution), resample=Image.BICUBIC)) for im in images]
    )
    pixel_values = torch.from_numpy((pixels / 127.5 - 1.0).astype(np.float32)).permute(0, 3, 1, 2)
    one_hot = torch.eye(num_emb)
    steps = iter(draws)
    for _epoch in range(updates):
        for start in range(0, num_emb, batch_size):
            batch = slice(start, start + batch_size)
            sample_eps, noise, timesteps = next(steps)
            dist = diffusion.vae.encode(pixel_values[batch].to(diffusion.dtype)).latent_dist
            latents = (dist.mean + dist.std * sample_eps) * 0.18215  # latent_dist.sample(), with the recorded draw
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = emb(one_hot[batch]).view(-1, tokens, hidden).to(diffusion.dtype)
            model_pred = diffusion.unet(noisy_latents, timesteps, encoder_hidden_states).sample
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return emb.weight.detach().T.reshape(num_emb, tokens, hidden)


def test_groups_are_class_pure_and_consecutive():
    labels = np.array([0, 1, 0, 0, 1, 0, 2])
    groups = plan_groups(labels, [0, 1], group_size=3)
    assert [(c, list(rows)) for c, rows in groups] == [(0, [0, 2, 3]), (0, [5]), (1, [1, 4])]


def test_epoch_steps_are_the_official_fixed_batches_and_short_groups_skip():
    steps = epoch_steps([5, 2], batch_size=2)
    assert steps == [[(0, slice(0, 2)), (1, slice(0, 2))], [(0, slice(2, 4))], [(0, slice(4, 5))]]


def test_initial_table_is_nn_linear_default_init():
    table = initial_table(100, 5, 768, fan_in=100, generator=torch.Generator().manual_seed(0))
    reference = torch.nn.Linear(100, 5 * 768, bias=False).weight  # the official table: (tokens x hidden, group size)
    assert table.abs().max() <= 0.1 and reference.abs().max() <= 0.1
    assert (
        table.std().item()
        == pytest.approx(reference.std().item(), rel=0.02)
        == pytest.approx(0.1 / math.sqrt(3), rel=0.02)
    )
    again = initial_table(100, 5, 768, fan_in=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(table, again)


def test_invert_starts_every_group_as_the_official_nn_linear_of_the_group_size(
    tiny_sd, small_real, tmp_path, monkeypatch
):
    """Through `invert`: every group starts from nn.Linear(num_emb = group size, tokens * hidden)'s default init,
    uniform in +-1/sqrt(group size), a short last group too (a class of 4 images in groups of 3: 3 rows and 1 row,
    both within +-1/sqrt(3)). The reference draws are seeded, so the comparison cannot fail by chance."""
    from scipy import stats

    recorder = Recorder(monkeypatch)
    invert(small_real, tmp_path / "frog.safetensors", "frog", str(tiny_sd), InversionConfig(updates=1, **FAST))
    assert [len(t) for t in recorder.tables] == [3, 1]
    bound = 1 / math.sqrt(FAST["group_size"])
    torch.manual_seed(0)
    for table in recorder.tables:
        reference = torch.nn.Linear(FAST["group_size"], table.shape[1] * table.shape[2], bias=False).weight.detach()
        assert table.abs().max() <= bound and reference.abs().max() <= bound
        assert table.abs().max() > 0.95 * bound  # not the narrower +-1/sqrt(rows) of a short group
        assert stats.kstest(table.flatten().numpy(), stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
        assert stats.ks_2samp(table.flatten().numpy(), reference[: len(table)].flatten().numpy()).pvalue > 1e-3


def test_the_draws_follow_the_official_distributions(tiny_sd, small_real, tmp_path, monkeypatch):
    """The official step draws latent_dist.sample() (mean + std * N(0, 1)), noise = randn_like(latents) and timesteps
    = randint(0, num_train_timesteps): `invert` takes every step's draws from `draw`, whose draws are those."""
    from scipy import stats

    recorder = Recorder(monkeypatch)
    invert(small_real, tmp_path / "ship.safetensors", "ship", str(tiny_sd), InversionConfig(updates=3, **FAST))
    assert len(recorder.draws) == 3 * 2  # 3 updates of a group of 3 (2 batches) and of 1 (1 batch)
    eps, noise, t = draw(torch.Generator().manual_seed(0), 4000, (4, 2, 2), 1000, CPU)
    for sample in (
        eps,
        noise,
        torch.cat([d[0].flatten() for _, d in recorder.draws]),
        torch.cat([d[1].flatten() for _, d in recorder.draws]),
    ):
        assert stats.kstest(sample.flatten().numpy(), "norm").pvalue > 1e-3
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.int64
    assert stats.chisquare(np.bincount(t.numpy() // 100, minlength=10)).pvalue > 1e-3  # uniform over [0, 1000)
    assert t.min() < 10 and t.max() > 990
    assert all(0 <= int(d[2].min()) and int(d[2].max()) < 1000 for _, d in recorder.draws)
    assert (
        torch.corrcoef(torch.stack([eps.flatten()[:4000], noise.flatten()[:4000]]))[0, 1].abs() < 0.1
    )  # separate draws


def test_adamw_skips_a_group_without_a_batch_but_decays_the_rows_outside_a_batch():
    config = InversionConfig(lr=0.1, weight_decay=0.5)
    tables = GroupTables([torch.ones(3, 1, 2), torch.ones(2, 1, 2)], config)
    tables.tables[0].grad = torch.zeros(3, 1, 2)
    tables.tables[0].grad[0] = 1.0
    tables.optimizer.step()
    first = tables.embeddings()
    assert torch.allclose(first[0], torch.full((1, 2), 1 - 0.1 * 0.5 - 0.1))  # decay, then Adam's first step of lr
    assert torch.allclose(first[1:3], torch.full((2, 1, 2), 1 - 0.1 * 0.5))  # outside the batch: decay only
    assert torch.equal(first[3:], torch.ones(2, 1, 2))  # the other group did not step at all
    assert tables.tables[1] not in tables.optimizer.state


def test_each_embedding_gets_gradient_from_its_own_image_only(tiny_sd, small_real):
    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    with Store(small_real) as s:
        mean, std = encode_images(d, s.images([0, 1, 2]), 64)
    emb = initial_table(3, 5, d.hidden_size, 100, torch.Generator().manual_seed(0)).requires_grad_(True)
    schedule = training_scheduler(d)
    draws = draw(torch.Generator().manual_seed(0), 3, mean.shape[1:], schedule.config.num_train_timesteps, CPU)
    losses = inversion_loss(d, schedule, emb, mean, std, draws)
    losses[1].backward()
    assert emb.grad[1].abs().sum() > 0
    assert emb.grad[0].abs().sum() == 0 and emb.grad[2].abs().sum() == 0


@pytest.mark.parametrize("group_size, batch_size, chunk_groups", [(2, 1, 1), (3, 2, 2)])
def test_synthkit_matches_the_official_update_loop(
    tiny_sd, small_real, tmp_path, monkeypatch, group_size, batch_size, chunk_groups
):
    """The proof that synthkit's inversion is the published one: same start, same draws, same embeddings.
    The second case packs a group of 3 (two batches) and a group of 1 (one batch) into one forward pass."""
    d = load_diffusion(str(tiny_sd), CPU, torch.float64)  # see the tolerance below
    assert d.latent_scale == 0.18215
    recorder = Recorder(monkeypatch)
    monkeypatch.setattr(inversion, "load_diffusion", lambda *a, **k: d)
    config = InversionConfig(
        resolution=64,
        group_size=group_size,
        batch_size=batch_size,
        chunk_groups=chunk_groups,
        updates=4,
        lr=0.03,
        weight_decay=0.01,
        seed=3,
    )
    out = tmp_path / "bird.safetensors"
    invert(small_real, out, "bird", str(tiny_sd), config, preview_every=100)
    tensors, _ = load_checkpoint(out)
    groups = tensors["group"].unique().tolist()
    assert len(groups) == 2 and len(recorder.tables) == 2
    with Store(small_real) as s:
        for table, group in zip(recorder.tables, groups):
            members = (tensors["group"] == group).nonzero().flatten()
            images = s.images(tensors["source_index"][members].numpy())
            reference = official_inversion(
                d,
                images,
                table,
                recorder.draws_of(group, config.seed, config.updates),
                config.resolution,
                config.lr,
                config.weight_decay,
                batch_size,
                config.updates,
            )
            learned = tensors["embeddings"][members]
            assert (learned - table).abs().max() > 1e-3  # it did move
            # In float32 the summation order (several groups in one forward pass, another CPU's kernels) changed
            # gradients by ~1e-7 relative, which Adam's g/sqrt(v) turned into 2e-4 where a gradient was near eps (CI,
            # an AMD EPYC). In float64 the two loops differ by float32's last bit (measured here: at most 4e-7), so
            # 1e-5 is 25x that while one AdamW step moves an element by up to lr, 3e-2.
            torch.testing.assert_close(learned, reference, rtol=0, atol=1e-5)
            assert (learned - reference).abs().median() < 1e-6


def test_every_token_vector_learns(tiny_sd, small_real, tmp_path, monkeypatch):
    recorder = Recorder(monkeypatch)
    out = tmp_path / "dog.safetensors"
    invert(small_real, out, "dog", str(tiny_sd), InversionConfig(tokens=4, updates=2, weight_decay=0.0, **FAST))
    tensors, _ = load_checkpoint(out)
    start = torch.cat(recorder.tables)
    moved = (tensors["embeddings"] - start).norm(dim=-1)  # (images, tokens); without weight decay only gradients move
    assert moved.shape == (4, 4) and (moved > 1e-3).all(), moved


def test_inversion_lowers_the_loss_and_changes_only_the_embeddings(tiny_sd, small_real, tmp_path, monkeypatch):
    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    frozen = {
        k: v.clone()
        for k, v in list(d.unet.state_dict().items()) + [("vae." + k, v) for k, v in d.vae.state_dict().items()]
    }
    monkeypatch.setattr(inversion, "load_diffusion", lambda *a, **k: d)
    recorder = Recorder(monkeypatch)
    out = tmp_path / "airplane.safetensors"
    meta = invert(small_real, out, "airplane", str(tiny_sd), InversionConfig(updates=100, lr=0.1, **FAST))
    after = {
        k: v for k, v in list(d.unet.state_dict().items()) + [("vae." + k, v) for k, v in d.vae.state_dict().items()]
    }
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    tensors, _ = load_checkpoint(out)
    assert tensors["embeddings"].shape == (4, 5, 32) and set(tensors["label"].tolist()) == {0}
    with Store(small_real) as s:
        mean, std = encode_images(d, s.images(tensors["source_index"].numpy()), 64)
        assert (s.labels[tensors["source_index"].numpy()] == 0).all()
    before = fixed_loss(d, torch.cat(recorder.tables), mean, std, draws=32)
    learned = fixed_loss(d, tensors["embeddings"], mean, std, draws=32)
    assert (learned < 0.95 * before).all() and learned.mean() < 0.92 * before.mean()
    first_rows = [int(r) for r in tensors["source_index"][[0, 3]]]
    assert [meta["group_loss"][str(g)][1] < meta["group_loss"][str(g)][0] for g in first_rows] == [True, True]
    assert list(tensors["group"]) == [first_rows[0]] * 3 + [first_rows[1]]  # a group is named by its first store row
    assert meta["hidden"] == 32 and meta["params"]["lr"] == 0.1 and meta["model"] == str(tiny_sd)
    assert meta["image_size"] == 32 and meta["adamw_steps_per_group"] == 100 and meta["params"]["precision"] == "fp32"


def test_preview_is_drawn_at_the_start_every_k_updates_and_at_the_end(tiny_sd, small_real, tmp_path, monkeypatch):
    drawn = []
    original = InversionPreview.draw

    def spy(self, samples, history, done):
        drawn.append((done, len(history), samples.shape))
        return original(self, samples, history, done)

    monkeypatch.setattr(InversionPreview, "draw", spy)
    out = tmp_path / "inv" / "cat.safetensors"
    result = run(
        "invert",
        "--class",
        "cat",
        "--data",
        small_real,
        "--model",
        tiny_sd,
        "--updates",
        5,
        "--preview-every",
        2,
        "--resolution",
        64,
        "--group-size",
        4,
        "--batch-size",
        4,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert [(d, h) for d, h, _ in drawn] == [(0, 0), (2, 2), (4, 4), (5, 5)]
    assert all(shape == (4, 64, 64, 3) for _, _, shape in drawn)
    preview = tmp_path / "inv" / "cat.preview.png"
    assert preview.exists() and "cat.preview.png" in result.output and read_meta(out)["preview"] == str(preview)
    with Image.open(preview) as image:
        assert image.width >= 4 * 96 and image.height > 2 * 96  # two rows of images and the loss curve below


def test_shards_merged_equal_an_unsharded_run(tiny_sd, small_real, tmp_path):
    config = [
        "--updates",
        3,
        "--resolution",
        64,
        "--batch-size",
        4,
        "--group-size",
        3,
        "--chunk-groups",
        1,
        "--model",
        tiny_sd,
        "--data",
        small_real,
        "--class",
        "cat,dog",
    ]
    assert run("invert", *config, "--out", tmp_path / "all.safetensors").exit_code == 0
    for i in (1, 0, 2):
        result = run("invert", *config, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}.safetensors")
        assert result.exit_code == 0, result.output
    result = run(
        "merge", *(tmp_path / f"s{i}.safetensors" for i in (2, 0, 1)), "--out", tmp_path / "merged.safetensors"
    )
    assert result.exit_code == 0, result.output
    a, _ = load_checkpoint(tmp_path / "all.safetensors")
    b, _ = load_checkpoint(tmp_path / "merged.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta = read_meta(tmp_path / "merged.safetensors")
    assert meta["shard"] == "" and len(meta["group_loss"]) == 4 and len(a["group"].unique()) == 4


def test_resume_equals_an_uninterrupted_run(tiny_sd, small_real, tmp_path, monkeypatch):
    config = InversionConfig(updates=6, **FAST)
    invert(small_real, tmp_path / "ref.safetensors", "frog,ship", str(tiny_sd), config)
    calls = {"n": 0}
    original = GroupTables.step

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:  # in the third chunk (6 steps a chunk), after a checkpoint
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GroupTables, "step", dying)
    out = tmp_path / "x.safetensors"
    with pytest.raises(KeyboardInterrupt):
        invert(small_real, out, "frog,ship", str(tiny_sd), config, checkpoint_every=2)
    assert (state_dir(out) / "current.safetensors").exists() and not out.exists()
    assert len(list(state_dir(out).glob("chunk-*.safetensors"))) == 2  # the finished chunks are kept
    monkeypatch.setattr(GroupTables, "step", original)
    invert(small_real, out, "frog,ship", str(tiny_sd), config, checkpoint_every=2, resume=True)
    a, _ = load_checkpoint(tmp_path / "ref.safetensors")
    b, _ = load_checkpoint(out)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not state_dir(out).exists()


def test_bf16_precision_runs_and_is_recorded(tiny_sd, small_real, tmp_path):
    out = tmp_path / "x.safetensors"
    result = run(
        "invert",
        "--class",
        "ship",
        "--data",
        small_real,
        "--model",
        tiny_sd,
        "--precision",
        "bf16",
        "--updates",
        2,
        "--resolution",
        64,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    tensors, meta = load_checkpoint(out)
    assert meta["params"]["precision"] == "bf16"
    assert tensors["embeddings"].dtype == torch.float32 and torch.isfinite(tensors["embeddings"]).all()


def test_unknown_precision_is_a_usage_error(tiny_sd, small_real, tmp_path):
    result = run(
        "invert",
        "--class",
        "cat",
        "--data",
        small_real,
        "--model",
        tiny_sd,
        "--precision",
        "fp8",
        "--out",
        tmp_path / "x.safetensors",
    )
    usage_error(result, "--precision", "'fp32'", "'bf16'")
    assert not (tmp_path / "x.safetensors").exists()


def test_unknown_class_is_one_line(tiny_sd, small_real, tmp_path):
    result = run(
        "invert", "--class", "unicorn", "--data", small_real, "--model", tiny_sd, "--out", tmp_path / "x.safetensors"
    )
    assert result.exit_code == 2 and "unknown class 'unicorn'" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_resolution_not_multiple_of_8_is_refused(tiny_sd, small_real, tmp_path):
    result = run(
        "invert",
        "--class",
        "cat",
        "--data",
        small_real,
        "--model",
        tiny_sd,
        "--resolution",
        100,
        "--out",
        tmp_path / "x.safetensors",
    )
    assert result.exit_code == 2 and "multiple of 8" in result.stderr


def test_merging_shards_made_with_other_options_is_one_error_line(tiny_sd, small_real, tmp_path):
    config = [
        "--resolution",
        64,
        "--batch-size",
        4,
        "--group-size",
        3,
        "--chunk-groups",
        1,
        "--model",
        tiny_sd,
        "--data",
        small_real,
        "--class",
        "cat",
    ]
    for i, updates in ((0, 1), (1, 2)):  # the two halves of a job, but with other --updates
        result = run(
            "invert", *config, "--updates", updates, "--shard", f"{i}/2", "--out", tmp_path / f"s{i}.safetensors"
        )
        assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "s0.safetensors")["params"] != read_meta(tmp_path / "s1.safetensors")["params"]
    result = run(
        "merge", tmp_path / "s1.safetensors", tmp_path / "s0.safetensors", "--out", tmp_path / "merged.safetensors"
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "different options" in lines[0], result.stderr
    assert not (tmp_path / "merged.safetensors").exists()
