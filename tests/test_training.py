import json

import numpy as np
import pytest
import torch

from conftest import copy_store_as, run
from synthkit.checkpoint import load_checkpoint, read_meta, save_checkpoint
from synthkit.meta import provenance
from synthkit.device import pick_device
from synthkit.errors import UserError
from synthkit.evaluation import predict
from synthkit.store import Store, StoreWriter
from synthkit.model import load_classifier
from synthkit.training import TrainConfig, augment, epoch_batches, load_stores, log_path, lr_factor, state_path, train

CPU = torch.device("cpu")


def test_a_few_steps_lower_the_loss(tmp_path, real_store):
    out = tmp_path / "m.safetensors"
    train([real_store], out, TrainConfig(steps=12, batch_size=30, lr=0.05, seed=0), device="cpu")
    log = [json.loads(line) for line in log_path(out).read_text().splitlines()]
    assert len(log) == 3 and log[-1]["loss"] < log[0]["loss"]


def test_overfits_twenty_images(tmp_path, real_store):
    out = tmp_path / "m.safetensors"
    train([real_store], out, TrainConfig(steps=40, batch_size=20, lr=0.05, per_class=2, seed=1, warmup=0.1), device="cpu")
    model, meta = load_classifier(out, CPU)
    data = load_stores([real_store], CPU, per_class=2, seed=1)
    assert len(data) == 20
    preds = predict(model, data.images, CPU)
    assert (preds == data.labels).float().mean() >= 0.9
    assert meta["final_train_acc"] > 0.5


def test_balanced_batches_are_half_real_half_synthetic(tmp_path, real_store):
    synthetic = copy_store_as(real_store, tmp_path / "inv.h5", "inv")
    data = load_stores([real_store, synthetic], CPU, per_class=3, seed=0)
    data.images = data.images[:, :, :1, :1]
    config = TrainConfig(batch_size=8, mix="balanced")
    batches = epoch_batches(data, config, torch.Generator().manual_seed(0))
    assert len(batches) == 30 // 4
    for rows in batches:
        assert data.is_real[rows].sum() == 4 and len(rows) == 8
    assert len(set(torch.cat(batches).tolist())) == 56  # each part is covered without repeats in an epoch
    only_real = load_stores([real_store], CPU, per_class=1)
    with pytest.raises(UserError, match="balanced needs"):
        epoch_batches(only_real, config, torch.Generator().manual_seed(0))


def test_augment_crops_and_flips_within_the_padded_image():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    same = augment(images, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, same)
    centre = augment(images, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(c, i) or torch.equal(c, i.flip(-1)) for c, i in zip(centre, images))


def test_resume_after_interrupted_epoch_gives_the_same_weights(tmp_path, real_store, monkeypatch):
    config = TrainConfig(epochs=3, batch_size=20, lr=0.05, per_class=2, seed=3)
    ref = tmp_path / "ref.safetensors"
    train([real_store], ref, config, device="cpu")
    import synthkit.training as training

    calls = {"n": 0}
    original = training.augment

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first step of epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "augment", interrupted)
    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train([real_store], out, config, device="cpu")
    assert not out.exists() and state_path(out).exists()
    monkeypatch.setattr(training, "augment", original)
    result = run("train", "--data", real_store, "--out", out, "--epochs", 3, "--batch-size", 20, "--lr", 0.05,
                 "--per-class", 2, "--seed", 3, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    a, _ = load_classifier(out, CPU)
    b, _ = load_classifier(ref, CPU)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not state_path(out).exists()
    assert len(log_path(out).read_text().splitlines()) == 3


def test_checkpoint_metadata_round_trips(tiny_classifier, real_store):
    meta = read_meta(tiny_classifier)
    assert meta["kind"] == "classifier" and meta["arch"] == "resnet18-cifar"
    assert meta["classes"][0] == "airplane" and len(meta["classes"]) == 10
    with Store(real_store) as s:
        assert meta["sources"] == [{"path": str(real_store), "kind": "real", "count": 120, "fingerprint": s.fingerprint, "image_size": 32}]
    assert meta["params"]["lr"] == 0.05 and meta["params"]["seed"] == 0 and meta["steps"] == 6
    assert meta["versions"]["torch"] and meta["seconds"] >= 0 and np.isfinite(meta["final_loss"])


def test_stores_of_other_sizes_are_resized_and_classes_matched_by_name(tmp_path, real_store):
    from synthkit.meta import provenance
    from synthkit.store import StoreWriter

    with Store(real_store) as s:
        classes = list(reversed(s.classes))
        big = np.repeat(np.repeat(s.images(slice(0, 4)), 2, axis=1), 2, axis=2)
        labels = 9 - s.labels[:4]
    with StoreWriter(tmp_path / "big.h5", classes=classes, image_shape=(64, 64), meta=provenance("sd", {}), total=4) as w:
        w.append(big, labels)
    data = load_stores([real_store, tmp_path / "big.h5"], CPU)
    assert data.images.shape == (124, 3, 32, 32)
    with Store(real_store) as s:
        assert torch.equal(data.labels[120:], torch.from_numpy(s.labels[:4]))
        diff = (data.images[120:].float() - torch.from_numpy(s.images(slice(0, 4))).permute(0, 3, 1, 2).float()).abs().mean()
    assert diff < 8  # antialiased resizing blurs a little; a wrong image or label order differs by ~50


def test_nan_loss_stops_with_a_clear_message(tmp_path, real_store):
    out = tmp_path / "m.safetensors"
    result = run("train", "--data", real_store, "--out", out, "--epochs", 5, "--batch-size", 40, "--lr", 1e30,
                 "--per-class", 4, "--device", "cpu")
    assert result.exit_code == 2, result.output
    assert "loss became" in result.stderr and "lower --lr" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "classes", "not_store", "not_classifier", "balanced_without_synthetic"])
def test_bad_input_one_line_exit_2(tmp_path, real_store, case):
    out = tmp_path / "m.safetensors"
    if case == "missing":
        args = ["train", "--data", tmp_path / "nope.h5", "--out", out]
    elif case == "classes":
        other = copy_store_as(real_store, tmp_path / "other.h5", "sd", classes=[f"c{i}" for i in range(10)])
        args = ["train", "--data", f"{real_store},{other}", "--out", out]
    elif case == "not_store":
        (tmp_path / "x.h5").write_text("text")
        args = ["train", "--data", tmp_path / "x.h5", "--out", out]
    elif case == "balanced_without_synthetic":
        args = ["train", "--data", real_store, "--mix", "balanced", "--out", out]
    else:
        save_checkpoint(tmp_path / "emb.safetensors", {"e": torch.zeros(2)}, {"kind": "embeddings"})
        args = ["evaluate", "--model", tmp_path / "emb.safetensors", "--test", real_store]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_matches_a_hand_count(tmp_path, tiny_classifier, test_store):
    results = tmp_path / "results"
    result = run("evaluate", "--model", tiny_classifier, "--test", test_store, "--results", results, "--device", "cpu",
                 "--batch-size", 7)
    assert result.exit_code == 0, result.output
    model, _ = load_classifier(tiny_classifier, CPU)
    with Store(test_store) as s:
        correct = 0
        for image, label in zip(s.images(), s.labels):
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            with torch.no_grad():
                correct += int(model(x).argmax(1).item() == label)
    import csv

    rows = list(csv.DictReader(open(results / "accuracy.csv")))
    assert len(rows) == 1 and rows[0]["training_data"] == "real"
    assert float(rows[0]["accuracy"]) == pytest.approx(correct / 60)
    per_class = json.loads(rows[0]["per_class"])
    assert np.mean(list(per_class.values())) == pytest.approx(correct / 60)
    assert (results / "confusion" / f"{tiny_classifier.stem}.png").exists()
    assert f"{100 * correct / 60:.2f}" in (results / "accuracy.md").read_text()
    run("evaluate", "--model", tiny_classifier, "--test", test_store, "--results", results, "--device", "cpu")
    assert len(list(csv.DictReader(open(results / "accuracy.csv")))) == 2
    assert (results / "accuracy.md").read_text().count("| real |") == 1


def test_evaluate_refuses_a_synthetic_test_store(tmp_path, tiny_classifier, test_store):
    fake = copy_store_as(test_store, tmp_path / "sdtest.h5", "sd")
    result = run("evaluate", "--model", tiny_classifier, "--test", fake, "--results", tmp_path)
    assert result.exit_code == 2 and "real test images only" in result.stderr


def test_device_choice(monkeypatch):
    monkeypatch.delenv("SYNTHKIT_DEVICE", raising=False)
    assert pick_device("cpu").type == "cpu"
    for cuda, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert pick_device("auto").type == expected and pick_device(None).type == expected
        assert pick_device("AUTO").type == expected
    # without CUDA: asking for it is a UserError, and $SYNTHKIT_DEVICE sets the default
    with pytest.raises(UserError, match="no CUDA"):
        pick_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu0")
    monkeypatch.setenv("SYNTHKIT_DEVICE", "cuda")
    with pytest.raises(UserError, match="no CUDA"):
        pick_device(None)
    monkeypatch.setenv("SYNTHKIT_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None).type == "cpu" and pick_device("auto").type == "cuda"


def test_lr_factor_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warmup = 100, 0.1  # 10 warm-up steps
    factors = [lr_factor(step, total, warmup) for step in range(total)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[9] == 1.0 and factors[10] == 1.0  # peak at the end of warm-up, where the cosine starts
    assert factors[10 + 45] == pytest.approx(0.5)  # half way through the decay
    assert factors[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and 0 < factors[-1] < 1e-3
    assert lr_factor(total, total, warmup) == pytest.approx(0.0)  # would be the step after the last: zero
    # no warm-up, or fewer steps than a warm-up step: at least one step, never a division by zero
    assert lr_factor(0, 10, 0.0) == 1.0 and lr_factor(0, 1, 0.05) == 1.0
    assert lr_factor(5, 10, 0.0) == pytest.approx(0.5 * (1 + np.cos(np.pi * 4 / 9)))


@pytest.mark.parametrize("size,arch", [(40, "resnet18-cifar"), (72, "resnet18-imagenet")])
def test_any_size_and_classes_train_evaluate_and_gradcam(tmp_path, real_store, test_store, size, arch):
    """A 3-class store at 40 or 72 px: the stem follows the size, the checkpoint records it, and evaluate, gradcam,
    filter and fidelity feed the model at its own size."""
    from conftest import cut_store

    train_store, test = cut_store(real_store, tmp_path / "mine.h5", size), cut_store(test_store, tmp_path / "mine-test.h5", size)
    out = tmp_path / "m.safetensors"
    result = run("train", "--data", train_store, "--out", out, "--steps", 4, "--batch-size", 12)
    assert result.exit_code == 0, result.output
    assert f"{arch} at {size} px" in result.output
    meta = read_meta(out)
    assert meta["arch"] == arch and meta["image_size"] == size and meta["classes"] == ["airplane", "cat", "ship"]
    model, _ = load_classifier(out, CPU)
    assert (model.net.maxpool.__class__.__name__ == "MaxPool2d") == (size > 64) and model.image_size == size
    assert model(torch.rand(2, 3, size, size)).shape == (2, 3)
    result = run("evaluate", "--model", out, "--test", test, "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    import csv

    with open(tmp_path / "results" / "accuracy.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["test_images"] == "18" and set(json.loads(row["per_class"])) == {"airplane", "cat", "ship"}
    assert (tmp_path / "results" / "confusion" / "m.png").exists()
    others = [tiny_classifier_at(tmp_path, real_store)] if size > 64 else []  # models of two input sizes compared
    result = run("gradcam", "--model", out, *(x for o in others for x in ("--model", o)), "--data", test,
                 "--n", 6, "--out", tmp_path / "cam")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cam" / "summary.json").read_text())
    assert len(summary["models"]) == 1 + len(others) and (summary["agreement"] or not others)
    result = run("filter", "--data", test, "--classifier", out, "--by", "cam", "--real", train_store, "--keep", 0.5,
                 "--out", tmp_path / "kept.h5")
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "kept.h5") as kept:
        assert list(kept.counts()) == [3, 3, 3]
    result = run("fidelity", "--real", train_store, "--data", test, "--classifier", out, "--per-class", 6, "--out", tmp_path / "fid")
    assert result.exit_code == 0, result.output


def tiny_classifier_at(tmp_path, real_store, size: int = 32):
    """A 3-class classifier at another size, so that gradcam compares models of different input sizes."""
    from conftest import cut_store

    out = tmp_path / f"other-{size}.safetensors"
    train([cut_store(real_store, tmp_path / f"other-{size}.h5", size)], out, TrainConfig(steps=2, batch_size=12), device="cpu")
    return out


def test_training_stores_must_agree_on_classes_by_name(tmp_path, real_store):
    from conftest import cut_store

    mine = cut_store(real_store, tmp_path / "mine.h5", 32)
    other = cut_store(real_store, tmp_path / "other.h5", 32, classes=("airplane", "cat", "dog"))
    reordered = cut_store(real_store, tmp_path / "reordered.h5", 32, classes=("ship", "airplane", "cat"))
    result = run("train", "--data", f"{mine},{other}", "--out", tmp_path / "m.safetensors", "--steps", 1)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"store {other} has classes airplane, cat, dog" in result.stderr and not (tmp_path / "m.safetensors").exists()
    data = load_stores([mine, reordered], CPU)
    with Store(mine) as a, Store(reordered) as b:
        assert torch.equal(data.labels, torch.from_numpy(np.concatenate([a.labels, [[2, 0, 1][c] for c in b.labels]])))


def test_random_resized_crop_is_seeded_and_covers_the_image_at_full_scale():
    from synthkit.training import random_resized_crop, training_batch

    images = torch.rand(6, 3, 80, 80)
    a = random_resized_crop(images, torch.Generator().manual_seed(0))
    b = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.allclose(a, images, atol=0.05)
    whole = random_resized_crop(images, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1))
    for x, y in zip(whole, images):  # the whole image, flipped or not
        assert torch.allclose(x, y, atol=1e-5) or torch.allclose(x, y.flip(-1), atol=1e-5)
    small = training_batch(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert small.dtype == torch.float32 and small.shape == (4, 3, 32, 32) and small.max() <= 1


def test_a_set_over_the_memory_limit_streams_and_trains_the_same_weights(tmp_path, real_store, monkeypatch):
    """Two stores (120 real and 60 synthetic images, mixed half and half per batch, so rows repeat) trained at 40 px
    take 864 KiB: under a 300 KB limit they are read from the stores a window of batches at a time, and the weights
    equal those of the run that held them all on the device."""
    with Store(real_store) as s, StoreWriter(tmp_path / "half.h5", classes=s.classes, image_shape=(32, 32),
                                             meta=provenance("sd", {}), total=60) as w:
        w.append(s.images(np.arange(0, 120, 2)), s.labels[0::2])
    stores = [real_store, tmp_path / "half.h5"]
    held, streamed = tmp_path / "held.safetensors", tmp_path / "streamed.safetensors"
    config = TrainConfig(steps=4, batch_size=24, lr=0.05, seed=3, mix="balanced", image_size=40)
    train(stores, held, config, device="cpu")
    monkeypatch.setenv("SYNTHKIT_MEMORY_LIMIT", "300KB")
    reads = []
    original = Store.images
    monkeypatch.setattr(Store, "images", lambda self, index=None: reads.append(index) or original(self, index))
    result = run("train", "--data", f"{stores[0]},{stores[1]}", "--out", streamed, "--steps", 4, "--batch-size", 24,
                 "--lr", 0.05, "--seed", 3, "--mix", "balanced", "--image-size", 40)
    assert result.exit_code == 0, result.output
    assert "streaming: 180 images at 40 px" in result.output
    # 300 KB hold 64 rows at 40 px: a window is two batches of 24 (the next batch is counted before it is added),
    # so 4 steps are 2 windows, each read from both stores
    assert len(reads) == 2 * 2 and all(len(r) <= 48 for r in reads)
    assert read_meta(streamed)["streamed"] and not read_meta(held)["streamed"]
    a, _ = load_classifier(held, CPU)
    b, _ = load_classifier(streamed, CPU)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    reads.clear()
    whole = run("evaluate", "--model", held, "--test", real_store, "--results", tmp_path / "whole")
    chunked = run("evaluate", "--model", held, "--test", real_store, "--results", tmp_path / "chunked", "--memory-limit", "20KB")
    assert whole.exit_code == 0 and chunked.exit_code == 0, whole.output + chunked.output
    assert len(reads) > 2  # the test store is read in chunks too
    rows = [(tmp_path / r / "accuracy.csv").read_text().splitlines()[1].split(",")[9:] for r in ("whole", "chunked")]
    assert rows[0] == rows[1]  # the same accuracy and per-class accuracy
    bad = run("train", "--data", real_store, "--out", tmp_path / "x.safetensors", "--memory-limit", "lots")
    assert bad.exit_code == 2 and "memory limit 'lots' is not a size" in bad.stderr


def test_a_classifier_written_before_sizes_were_recorded_still_loads(tmp_path, tiny_classifier, test_store):
    tensors, meta = load_checkpoint(tiny_classifier, CPU)
    old = tmp_path / "old.safetensors"
    save_checkpoint(old, tensors, {k: v for k, v in meta.items() if k not in ("image_size", "streamed")} | {"arch": "resnet18-cifar"})
    model, loaded = load_classifier(old, CPU)
    assert model.image_size == 32 and loaded["image_size"] == 32
    result = run("evaluate", "--model", old, "--model", tiny_classifier, "--test", test_store, "--results", tmp_path / "r")
    assert result.exit_code == 0, result.output


def test_confusion_figures_stay_readable_for_a_hundred_classes(tmp_path):
    from PIL import Image

    from synthkit.evaluation import save_confusion_figure

    rng = np.random.default_rng(0)
    for n in (3, 100):
        counts = rng.integers(0, 5, (n, n))
        path = save_confusion_figure(counts, [f"class{i}" for i in range(n)], tmp_path / f"{n}.png", "t")
        width, height = Image.open(path).size
        assert height == 600 if n == 3 else height >= 20 * n  # 20 px a row at 100 dpi: room for its 6 pt label
