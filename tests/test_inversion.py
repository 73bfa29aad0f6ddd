import numpy as np
import pytest
import torch

import synthkit.inversion as inversion
from conftest import run
from synthkit.checkpoint import load_checkpoint, read_meta
from synthkit.diffusion import encode_images, load_diffusion, training_scheduler
from synthkit.inversion import (InversionConfig, adamw_rows, fixed_loss, initial_embeddings, invert, inversion_loss,
                                plan_groups, state_dir)
from synthkit.store import Store

CPU = torch.device("cpu")
FAST = dict(resolution=64, batch_size=4, group_size=3, chunk_groups=1)


def test_groups_are_class_pure_and_consecutive():
    labels = np.array([0, 1, 0, 0, 1, 0, 2])
    groups = plan_groups(labels, [0, 1], group_size=3)
    assert [(c, list(rows)) for c, rows in groups] == [(0, [0, 2, 3]), (0, [5]), (1, [1, 4])]


def test_adamw_rows_touches_only_the_batch():
    param = torch.randn(5, 2, 3)
    before = param.clone()
    m, v, count = torch.zeros_like(param), torch.zeros_like(param), torch.zeros(5, dtype=torch.long)
    rows = torch.tensor([1, 3])
    adamw_rows(param, torch.ones(2, 2, 3), rows, m, v, count, lr=0.1, weight_decay=0.0)
    assert torch.equal(param[[0, 2, 4]], before[[0, 2, 4]])
    assert torch.allclose(param[rows], before[rows] - 0.1, atol=1e-5)  # Adam's first step moves by lr
    assert list(count) == [0, 1, 0, 1, 0] and torch.all(m[[0, 2, 4]] == 0)


def test_each_embedding_gets_gradient_from_its_own_image_only(tiny_sd, small_real):
    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    with Store(small_real) as s:
        mean, std = encode_images(d, s.images([0, 1, 2]), 64)
    emb = initial_embeddings(d, 3, 5).requires_grad_(True)
    losses = inversion_loss(d, training_scheduler(d), emb, mean, std, torch.Generator().manual_seed(0))
    losses[1].backward()
    assert emb.grad[1].abs().sum() > 0
    assert emb.grad[0].abs().sum() == 0 and emb.grad[2].abs().sum() == 0


def test_inversion_lowers_the_loss_and_changes_only_the_embeddings(tiny_sd, small_real, tmp_path, monkeypatch):
    d = load_diffusion(str(tiny_sd), CPU, torch.float32)
    frozen = {k: v.clone() for k, v in list(d.unet.state_dict().items()) + [("vae." + k, v) for k, v in d.vae.state_dict().items()]}
    monkeypatch.setattr(inversion, "load_diffusion", lambda *a, **k: d)
    out = tmp_path / "airplane.safetensors"
    meta = invert(small_real, out, "airplane", str(tiny_sd), InversionConfig(updates=100, lr=0.1, **FAST))
    after = {k: v for k, v in list(d.unet.state_dict().items()) + [("vae." + k, v) for k, v in d.vae.state_dict().items()]}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    tensors, _ = load_checkpoint(out)
    assert tensors["embeddings"].shape == (4, 5, 32) and set(tensors["label"].tolist()) == {0}
    with Store(small_real) as s:
        mean, std = encode_images(d, s.images(tensors["source_index"].numpy()), 64)
        assert (s.labels[tensors["source_index"].numpy()] == 0).all()
    before = fixed_loss(d, initial_embeddings(d, 4, 5), mean, std, draws=32)
    learned = fixed_loss(d, tensors["embeddings"], mean, std, draws=32)
    assert (learned < 0.95 * before).all() and learned.mean() < 0.92 * before.mean()
    assert meta["group_loss"]["0"][1] < meta["group_loss"]["0"][0]
    assert list(tensors["group"]) == [0, 0, 0, 1]  # groups of 3: a full one and the remainder
    assert meta["hidden"] == 32 and meta["params"]["lr"] == 0.1 and meta["model"] == str(tiny_sd)


def test_shards_merged_equal_an_unsharded_run(tiny_sd, small_real, tmp_path):
    config = ["--updates", 3, "--resolution", 64, "--batch-size", 4, "--group-size", 3, "--chunk-groups", 1,
              "--model", tiny_sd, "--data", small_real, "--class", "cat,dog"]
    assert run("invert", *config, "--out", tmp_path / "all.safetensors").exit_code == 0
    for i in (1, 0, 2):
        result = run("invert", *config, "--shard", f"{i}/3", "--out", tmp_path / f"s{i}.safetensors")
        assert result.exit_code == 0, result.output
    result = run("merge", *(tmp_path / f"s{i}.safetensors" for i in (2, 0, 1)), "--out", tmp_path / "merged.safetensors")
    assert result.exit_code == 0, result.output
    a, _ = load_checkpoint(tmp_path / "all.safetensors")
    b, _ = load_checkpoint(tmp_path / "merged.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta = read_meta(tmp_path / "merged.safetensors")
    assert meta["shard"] == "" and len(meta["group_loss"]) == 4


def test_resume_equals_an_uninterrupted_run(tiny_sd, small_real, tmp_path, monkeypatch):
    config = InversionConfig(updates=6, **FAST)
    invert(small_real, tmp_path / "ref.safetensors", "frog,ship", str(tiny_sd), config)
    calls = {"n": 0}
    original = inversion.adamw_rows

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 17:  # in the second chunk, after a checkpoint
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(inversion, "adamw_rows", dying)
    out = tmp_path / "x.safetensors"
    with pytest.raises(KeyboardInterrupt):
        invert(small_real, out, "frog,ship", str(tiny_sd), config, checkpoint_every=2)
    assert (state_dir(out) / "current.safetensors").exists() and not out.exists()
    assert len(list(state_dir(out).glob("chunk-*.safetensors"))) == 2  # the finished chunks are kept
    monkeypatch.setattr(inversion, "adamw_rows", original)
    invert(small_real, out, "frog,ship", str(tiny_sd), config, checkpoint_every=2, resume=True)
    a, _ = load_checkpoint(tmp_path / "ref.safetensors")
    b, _ = load_checkpoint(out)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not state_dir(out).exists()


def test_unknown_class_is_one_line(tiny_sd, small_real, tmp_path):
    result = run("invert", "--class", "unicorn", "--data", small_real, "--model", tiny_sd, "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "unknown class 'unicorn'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()


def test_resolution_not_multiple_of_8_is_refused(tiny_sd, small_real, tmp_path):
    result = run("invert", "--class", "cat", "--data", small_real, "--model", tiny_sd, "--resolution", 100,
                 "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "multiple of 8" in result.stderr
