"""The classifiers synthkit trains, in one table that imports no torch (the CLI offers its names at once): for each
torchvision network, the attribute holding its head, how its stem keeps a small image's resolution, the layers
Grad-CAM may use and its activations. model.Classifier builds from it; another classifier is another entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError

CIFAR_STEM_MAX = 64
STEMS = ("cifar", "imagenet")  # a stride-1 stem that keeps small images' resolution, or the network's own


def _resnet_cifar_stem(net: Any) -> None:
    from torch import nn

    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)  # train_net.py's CIFAR ResNet
    net.maxpool = nn.Identity()


def _mobilenet_cifar_stem(net: Any) -> None:
    net.features[0][0].stride = (1, 1)


def _shufflenet_cifar_stem(net: Any) -> None:
    from torch import nn

    net.conv1[0].stride = (1, 1)
    net.maxpool = nn.Identity()


@dataclass(frozen=True)
class Arch:
    """How one torchvision classifier plugs in: the attribute holding its head (the layers after the pooled
    features), how its stem keeps a small image's resolution, the layers Grad-CAM may use (the default first), and its
    training activations per image as a multiple of the image in float32, with the CIFAR stem (at 32 px) and the
    ImageNet one (at 224 px), for the memory check before training: the sum of every layer's output in a training
    forward pass, measured with forward hooks (ResNet-18's ImageNet figure is the 40 synthkit has always used; the
    hooks give 50)."""

    head: str
    cifar_stem: Callable[[Any], None]
    cam_layers: tuple[str, ...]
    activations: tuple[int, int]


# The one table of classifiers, the CLI's --arch choices; each is torchvision.models.<name>.
CLASSIFIERS: dict[str, Arch] = {
    "resnet18": Arch("fc", _resnet_cifar_stem, ("layer3", "layer4", "layer2"), (600, 40)),
    "mobilenet_v3_small": Arch(
        "classifier", _mobilenet_cifar_stem, ("features.8", "features.12", "features.3"), (120, 30)
    ),
    "shufflenet_v2_x1_0": Arch("fc", _shufflenet_cifar_stem, ("stage3", "conv5", "stage2"), (510, 40)),
}


def stem_for(image_size: int) -> str:
    """The CIFAR stem keeps small images' resolution (up to 64 px); larger images take the network's own ImageNet
    stem (a stride-2 convolution and pooling), which is 16x cheaper there."""
    return STEMS[0] if image_size <= CIFAR_STEM_MAX else STEMS[1]


def arch_spec(name: str) -> Arch:
    """The table entry of a classifier name, or one error line naming those there are."""
    if name not in CLASSIFIERS:
        raise UserError(f"--arch must be one of {', '.join(CLASSIFIERS)}, got '{name}'")
    return CLASSIFIERS[name]
