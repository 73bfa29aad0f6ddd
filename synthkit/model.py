"""The classifier: torchvision's ResNet-18 with the CIFAR stem, taking images in [0, 1]; loading a trained one,
and fitting stores to it (class order, image size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, read_meta
from .device import memory_format
from .errors import UserError

ARCH = "resnet18-cifar"
IMAGE_SIZE = 32
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet18(nn.Module):
    """ResNet-18 with a 3x3 stride-1 first convolution and no max-pool; normalises its own input."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(num_classes=num_classes)
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
    meta = read_meta(path)
    if meta.get("kind") != "classifier" or meta.get("arch") != ARCH:
        raise UserError(f"{path} is not a synthkit classifier (its kind is '{meta.get('kind')}'): give a file written by synthkit train")
    return meta


def load_classifier(path: str | Path, device: torch.device) -> tuple[CifarResNet18, dict[str, Any]]:
    """A trained classifier in eval mode on `device`, and its metadata."""
    meta = classifier_meta(path)
    tensors, _ = load_checkpoint(path, device)
    model = CifarResNet18(len(meta["classes"])).to(device, memory_format=memory_format(device))
    model.load_state_dict(tensors)
    return model.eval(), meta
