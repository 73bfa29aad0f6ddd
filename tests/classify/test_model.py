"""Classifiers plug in at one place (classifiers.CLASSIFIERS): every architecture builds at both stems, declares its
features, head and Grad-CAM layers, and goes through train, evaluate, gradcam and fidelity like ResNet-18."""

import json

import pytest
import torch

from synthkit.classify.classifiers import CLASSIFIERS
from synthkit.classify.model import build_classifier, load_classifier
from synthkit.classify.training import TrainJob, train, train_many
from synthkit.core.config import TrainConfig
from synthkit.core.errors import UserError
from synthkit.io.checkpoint import read_meta

from conftest import copy_store_as, run

CPU = torch.device("cpu")


ARCHS = tuple(CLASSIFIERS)


def test_the_default_classifier_is_the_studys_and_the_cli_offers_the_tables():
    assert ARCHS[0] == TrainConfig().arch == "resnet18"
    shown = run("train", "--help")
    assert all(name in shown.output for name in ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size,stem", [(32, "cifar"), (96, "imagenet")])
def test_every_classifier_declares_its_features_head_and_grad_cam_layers(arch, size, stem):
    model = build_classifier(arch, 7, size).eval()
    x = torch.rand(2, 3, size, size)
    features = model.features(x)
    assert model.stem == stem and features.ndim == 2 and torch.allclose(model.head(features), model(x))
    assert model(x).shape == (2, 7)
    maps = {}
    for name in model.cam_layers:  # each a real module whose output is a spatial map
        layer = model.layer(name)
        hook = layer.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, o.shape))
        model(x)
        hook.remove()
        assert len(maps[name]) == 4 and maps[name][-1] >= 1
    assert model.layer() is model.layer(model.cam_layers[0])  # the default is the first declared
    if stem == "cifar":  # the small-image stem keeps the default layer's map larger than 1x1
        assert maps[model.cam_layers[0]][-1] >= 2
    with pytest.raises(UserError, match=f"{arch}'s Grad-CAM layers are"):
        model.layer("nope")


# How much larger each Grad-CAM map is with the CIFAR stem than with torchvision's own (ImageNet) stem at 32 px: the
# stride the CIFAR stem removes (ResNet-18 and ShuffleNet: a stride-2 convolution and a max pool; MobileNetV3: its
# stride-2 convolution).
STEM_STRIDE = {"resnet18": 4, "mobilenet_v3_small": 2, "shufflenet_v2_x1_0": 4}


def map_sizes(net: torch.nn.Module, layers: tuple[str, ...], x: torch.Tensor) -> dict[str, int]:
    """The side of each named layer's output for input x."""
    sizes = {}
    hooks = [
        net.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-1]))
        for name in layers
    ]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("arch", ARCHS)
def test_the_cifar_stem_keeps_every_grad_cam_map_larger_than_the_imagenet_stem_by_the_stride_it_removes(arch):
    """Fails on a stem left unapplied (MobileNetV3 keeping its stride 2), which every other test accepts."""
    import torchvision.models

    assert set(STEM_STRIDE) == set(ARCHS)
    model = build_classifier(arch, 10, 32).eval()
    assert model.stem == "cifar"
    x = torch.rand(1, 3, 32, 32)
    cifar = map_sizes(model.net, model.cam_layers, x)
    imagenet = map_sizes(getattr(torchvision.models, arch)(num_classes=10).eval(), model.cam_layers, x)
    assert cifar == {name: side * STEM_STRIDE[arch] for name, side in imagenet.items()}, (cifar, imagenet)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_classifier_trains_evaluates_explains_and_scores_fidelity(tmp_path, real_store, test_store, arch):
    out = tmp_path / f"{arch}-real.safetensors"
    trained = run(
        "train", "--data", real_store, "--out", out, "--arch", arch, "--recipe", "quick", "--steps", 3,
        "--batch-size", 12, "--test", test_store, "--evals", 1, "--device", "cpu",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    meta = read_meta(out)
    assert (meta["arch"], meta["stem"], meta["params"]["arch"]) == (arch, "cifar", arch) and len(meta["evals"]) == 1
    assert load_classifier(out, CPU)[0].arch == arch
    evaluated = run("evaluate", "--model", out, "--test", test_store, "--out", tmp_path / "results", "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "results" / "confusion" / f"{out.stem}.png").is_file()
    explained = run(
        "gradcam", "--model", out, "--data", test_store, "--out", tmp_path / "gradcam", "--n", 6, "--device", "cpu"
    )
    assert explained.exit_code == 0, explained.output
    summary = json.loads((tmp_path / "gradcam" / "summary.json").read_text())
    assert summary["layer"] == CLASSIFIERS[arch].cam_layers[0]  # the architecture's own default layer
    wrong = run("gradcam", "--model", out, "--data", test_store, "--out", tmp_path / "g2", "--layer", "layer9")
    assert wrong.exit_code == 2 and f"({arch})" in wrong.stderr and not (tmp_path / "g2").exists()
    synthetic = copy_store_as(test_store, tmp_path / "sd.h5", "sd")
    scored = run(
        "fidelity", "--real", test_store, "--data", synthetic, "--classifier", out, "--per-class", 3,
        "--out", tmp_path / "fidelity", "--device", "cpu",
    )  # fmt: skip
    assert scored.exit_code == 0, scored.output
    assert "agreement" in (tmp_path / "fidelity" / "fidelity.md").read_text()


def test_dropout_draws_are_each_steps_own_so_a_classifier_trained_beside_others_equals_its_run_alone(
    tmp_path, real_store
):
    """mobilenet_v3_small has dropout, which draws from torch's global generator: each step reseeds it, so the
    classifier's weights do not depend on what else the job steps in between."""
    config = TrainConfig.from_recipe("quick", arch="mobilenet_v3_small", steps=4, batch_size=10, warmup_steps=1)
    alone = tmp_path / "alone.safetensors"
    train([real_store], alone, config, device="cpu")
    jobs = [
        TrainJob([real_store], tmp_path / "beside.safetensors", config),
        TrainJob([real_store], tmp_path / "other.safetensors", TrainConfig.from_recipe("quick", steps=4, seed=1)),
    ]
    train_many(jobs, device="cpu")
    a, b = load_classifier(alone, CPU)[0].state_dict(), load_classifier(jobs[0].out, CPU)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unknown_architecture_is_refused_in_one_line(tmp_path, real_store):
    bad = run("train", "--data", real_store, "--out", tmp_path / "m.safetensors", "--arch", "vgg99")
    assert bad.exit_code == 2 and "vgg99" in bad.output and not list(tmp_path.iterdir())
    with pytest.raises(UserError, match="--arch must be one of resnet18, mobilenet_v3_small"):
        train([real_store], tmp_path / "m.safetensors", TrainConfig.from_recipe("quick", arch="vgg99"), device="cpu")


def test_the_studys_kaiming_init_draws_in_the_order_of_the_old_resnet18():
    """kaiming_normal_init draws in modules() order: the head comes last, as when it sat inside the network (the
    ResNet-18 synthkit built before --arch), so a seed gives the study's recipe the same initial weights."""
    from torch import nn
    from torchvision.models import resnet18

    from synthkit.classify.model import kaiming_normal_init

    torch.manual_seed(3)
    old = resnet18(num_classes=10)
    old.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    old.maxpool = nn.Identity()
    kaiming_normal_init(old)
    torch.manual_seed(3)
    new = kaiming_normal_init(build_classifier("resnet18", 10, 32))
    ours = new.state_dict()
    assert all(
        torch.equal(v, ours["head." + k[3:] if k.startswith("fc.") else "net." + k])
        for k, v in old.state_dict().items()
    )
