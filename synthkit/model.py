"""The classifier: torchvision's ResNet-18 taking images in [0, 1], with the CIFAR stem up to 64 px and the ImageNet
stem above; loading a trained one, and fitting stores to it (class order, image size)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, read_meta
from .device import memory_format
from .errors import UserError
from .meta import Kind, check_record

ARCHS = ("resnet18-cifar", "resnet18-imagenet")  # the stem: 3x3 stride 1 without max-pool, or torchvision's own
IMAGE_SIZE = 32  # CIFAR's, and that of classifiers written before the size was recorded
CIFAR_STEM_MAX = 64
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def arch_for(image_size: int) -> str:
    """The CIFAR stem keeps small images' resolution (up to 64 px); larger images take the ImageNet stem
    (7x7 stride-2 convolution and max-pool), which is 16x cheaper there."""
    return ARCHS[0] if image_size <= CIFAR_STEM_MAX else ARCHS[1]


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with the stem of `arch` (see arch_for); normalises its own input."""

    def __init__(self, num_classes: int = 10, arch: str = ARCHS[0], image_size: int = IMAGE_SIZE):
        super().__init__()
        from torchvision.models import resnet18

        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        self.arch, self.image_size = arch, image_size  # the size it was trained at, which its inputs are resized to
        self.net = resnet18(num_classes=num_classes)
        if arch == "resnet18-cifar":
            self.net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images x (B, 3, H, W) with values in [0, 1]."""
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (B, 512): what the last layer sees, used to compare image sets."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1((x - self.mean) / self.std))))
        return torch.flatten(n.avgpool(n.layer4(n.layer3(n.layer2(n.layer1(x))))), 1)

    def layer(self, name: str) -> nn.Module:
        """A named stage of the network (layer1..layer4), e.g. as a Grad-CAM target."""
        return getattr(self.net, name)


def kaiming_normal_init(model: nn.Module) -> nn.Module:
    """The original study's initialisation (cifake-classifier.py:128): kaiming_normal_ on every convolution and
    linear weight, torch's defaults elsewhere."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
    return model


def class_mapping(classes: Sequence[str], reference: Sequence[str], where: str) -> np.ndarray:
    """Index map from a store's class order to the reference order; classes must match by name."""
    if list(classes) == list(reference):
        return np.arange(len(classes))
    if sorted(classes) != sorted(reference):
        raise UserError(f"{where} has classes {', '.join(classes)}, which do not match {', '.join(reference)}")
    return np.array([list(reference).index(c) for c in classes])


def resize_images(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize uint8 (N, 3, H, W) images to size x size once, with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def classifier_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a synthkit classifier; refuses any other file with one clear line."""
    meta = check_record(
        read_meta(path), Kind.CLASSIFIER, path, "a synthkit classifier (give a file written by synthkit train)"
    )
    if meta["arch"] not in ARCHS:
        raise UserError(
            f"{path} is a classifier of an unknown architecture '{meta['arch']}': give a file written by synthkit train"
        )
    meta.setdefault("image_size", IMAGE_SIZE)
    return meta


def load_classifier(path: str | Path, device: torch.device) -> tuple[ResNet18, dict[str, Any]]:
    """A trained classifier in eval mode on `device`, and its metadata (its input size is meta["image_size"])."""
    meta = classifier_meta(path)
    tensors, _ = load_checkpoint(path, device)
    model = ResNet18(len(meta["classes"]), meta["arch"], meta["image_size"]).to(
        device, memory_format=memory_format(device)
    )
    model.load_state_dict(tensors)
    return model.eval(), meta
