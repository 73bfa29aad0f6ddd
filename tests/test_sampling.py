import numpy as np
import pytest
import torch

import synthkit.sampling as sampling
from conftest import run
from synthkit.diffusion import build_tiny_pipeline
from synthkit.inversion import InversionConfig, invert
from synthkit.sampling import group_means, group_members, perturb
from synthkit.store import Store, StoreWriter

FAST = ["--steps", 3, "--resolution", 64]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, tiny_sd, small_real):
    out = tmp_path_factory.mktemp("inv") / "emb.safetensors"
    invert(small_real, out, "airplane,cat", str(tiny_sd),
           InversionConfig(updates=3, resolution=64, batch_size=4, group_size=2, chunk_groups=2))
    return out


def test_prompt_sampling_counts_labels_prompts_and_metadata(tiny_sd, tmp_path):
    out = tmp_path / "sd.h5"
    result = run("sample", "--prompt", "a photo of a {class}", "--prompt", "a {class}", "--classes", "cat,dog,ship",
                 "--per-class", 3, "--model", tiny_sd, "--seed", 7, "--batch-size", 4, "--scheduler", "ddim", *FAST, "--out", out)
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
    result = run("sample", "--prompt", "a {class}", "--per-class", 2, "--init", small_real, "--strength", 0.5,
                 "--save-size", 32, "--model", tiny_sd, *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    with Store(out) as s, Store(small_real) as real:
        assert s.image_shape == (32, 32, 3) and len(s) == 20
        source = s.column("source_index")
        assert (real.labels[source] == s.labels).all()
        assert s.meta["sources"][0]["fingerprint"] == real.fingerprint


def test_perturbation_honours_alpha_lambda_and_partners():
    emb = torch.randn(6, 5, 8)
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    rows = np.array([0, 1, 3, 5])
    seeds = [11, 12, 13, 14]
    members = group_members(groups)
    assert {g: list(m) for g, m in members.items()} == {0: [0, 1, 2], 1: [3, 4], 2: [5]}
    same, partners = perturb(emb, groups, members, rows, seeds, interp=0.0, noise=0.0)
    assert torch.equal(same, emb[rows])
    towards, partners = perturb(emb, groups, members, rows, seeds, interp=1.0, noise=0.0)
    assert torch.allclose(towards, emb[partners], atol=1e-6)
    assert all(groups[j] == groups[i] and (j != i or i == 5) for i, j in zip(rows, partners))
    noisy, again = perturb(emb, groups, members, rows, seeds, interp=0.3, noise=0.5)
    assert np.array_equal(again, partners)
    base = emb[rows] + 0.3 * (emb[partners] - emb[rows])
    assert (noisy - base).std() == pytest.approx(0.5, rel=0.25)
    means = group_means(emb, groups)
    assert torch.allclose(means[0], emb[:3].mean(0)) and torch.equal(means[2], emb[5])


def test_di_sampling_store_and_group_mean_guidance(tiny_sd, embeddings, tmp_path, monkeypatch):
    seen = []
    original = sampling.denoise

    def spy(diffusion, scheduler, latents, cond, uncond, steps, guidance, start_step=0):
        seen.append((cond.clone(), uncond.clone(), guidance))
        return original(diffusion, scheduler, latents, cond, uncond, steps, guidance, start_step)

    monkeypatch.setattr(sampling, "denoise", spy)
    out = tmp_path / "inv.h5"
    result = run("sample", "--embeddings", embeddings, "--per-image", 2, "--steps", 3, "--interp", 0.2, "--noise", 0.05,
                 "--batch-size", 5, "--out", out)
    assert result.exit_code == 0, result.output
    from synthkit.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(embeddings)
    with Store(out) as s:
        assert len(s) == 16 and s.image_shape == (32, 32, 3) and s.meta["kind"] == "inv"
        source, partner, group = s.column("source_index"), s.column("partner"), s.column("group")
        index_of = {int(x): k for k, x in enumerate(tensors["source_index"])}
        for src, par, g, label in zip(source, partner, group, s.labels):
            k, j = index_of[int(src)], index_of[int(par)]
            assert tensors["group"][j] == g == tensors["group"][k] and tensors["label"][k] == label
        assert (s.column("alpha") == 0.2).all() and (s.column("noise") == 0.05).all()
        uncond = torch.cat([u for _, u, _ in seen])
        means = group_means(tensors["embeddings"], tensors["group"])
        for u, g in zip(uncond, group):
            assert torch.allclose(u, means[int(g)])
        assert all(gd == 2.0 for _, _, gd in seen)


def test_prompt_shards_merged_equal_an_unsharded_run(tiny_sd, tmp_path):
    args = ["--prompt", "a {class}", "--classes", "cat,dog,frog", "--per-class", 3, "--model", tiny_sd, "--batch-size", 2, *FAST]
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
        sampling.sample_embeddings(tmp_path / "x.h5", [embeddings], sampling.DIConfig(per_image=2),
                                   sampling.SamplingConfig(steps=2, guidance=2.0, batch_size=3, save_size=32))
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
    assert result.exit_code == 2 and "not both" in result.stderr


def test_classes_can_come_from_a_store(tiny_sd, small_real, tmp_path):
    result = run("sample", "--prompt", "{class}", "--classes", small_real, "--per-class", 1, "--model", tiny_sd,
                 "--steps", 1, "--resolution", 64, "--batch-size", 10, "--out", tmp_path / "sd.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "sd.h5") as s, Store(small_real) as real:
        assert s.classes == real.classes and list(s.column("prompt")) == real.classes
