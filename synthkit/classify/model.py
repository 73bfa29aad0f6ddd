"""A classifier as every command uses it: one of the torchvision networks of classifiers.CLASSIFIERS, taking images in
[0, 1], with its features, head and Grad-CAM layers; building one, loading a trained one, and fitting stores to it
(class order, image size)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.device import memory_format
from ..core.errors import UserError
from ..core.meta import Kind, check_record
from ..io.checkpoint import load_checkpoint, read_meta
from .classifiers import CLASSIFIERS, STEMS, arch_spec, stem_for

IMAGE_SIZE = 32  # CIFAR's, and that of classifiers written before the size was recorded
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Classifier(nn.Module):
    """A torchvision classifier taking images in [0, 1] (it normalises its own input): `net` gives the pooled
    features and `head` the logits, so that every command reads any architecture the same way."""

    def __init__(self, arch: str, num_classes: int = 10, image_size: int = IMAGE_SIZE):
        super().__init__()
        import torchvision.models

        spec = arch_spec(arch)
        self.arch, self.image_size = arch, image_size  # the size it was trained at, which its inputs are resized to
        self.stem = stem_for(image_size)
        net = getattr(torchvision.models, arch)(num_classes=num_classes)
        if self.stem == "cifar":
            spec.cifar_stem(net)
        head = getattr(net, spec.head)
        setattr(net, spec.head, nn.Identity())
        self.net, self.head = net, head  # in this order: modules() (and so an initialisation) meets the head last
        self.cam_layers = spec.cam_layers
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images x (B, 3, H, W) with values in [0, 1]."""
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features (B, D) the head sees, used to compare image sets."""
        return self.net((x - self.mean) / self.std)

    def layer(self, name: str | None = None) -> nn.Module:
        """A layer Grad-CAM may use, by its module name (None: the architecture's default)."""
        name = name or self.cam_layers[0]
        if name not in self.cam_layers:
            raise UserError(f"--layer {name}: {self.arch}'s Grad-CAM layers are {', '.join(self.cam_layers)}")
        return self.net.get_submodule(name)

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a state dict, also one written before the head was its own module (net.fc.* is head.*)."""
        old = f"net.{arch_spec(self.arch).head}."
        self.load_state_dict({("head." + k[len(old) :] if k.startswith(old) else k): v for k, v in tensors.items()})


def build_classifier(arch: str, classes: int, size: int) -> Classifier:
    """A fresh classifier of `arch` for `classes` classes at `size` px: the one place a classifier is made."""
    return Classifier(arch, classes, size)


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
    meta.setdefault("image_size", IMAGE_SIZE)
    arch, _, stem = str(meta.get("arch")).partition("-")  # before the stem had its own key: resnet18-cifar
    if arch not in CLASSIFIERS or (stem or meta.get("stem", stem_for(meta["image_size"]))) not in STEMS:
        raise UserError(
            f"{path} is a classifier of an unknown architecture '{meta.get('arch')}': give a file written by synthkit "
            "train"
        )
    meta["arch"], meta["stem"] = arch, stem or meta.get("stem", stem_for(meta["image_size"]))
    return meta


def load_classifier(path: str | Path, device: torch.device) -> tuple[Classifier, dict[str, Any]]:
    """A trained classifier in eval mode on `device`, and its metadata (its input size is meta["image_size"])."""
    meta = classifier_meta(path)
    tensors, _ = load_checkpoint(path, device)
    model = build_classifier(meta["arch"], len(meta["classes"]), meta["image_size"])
    if model.stem != meta["stem"]:
        raise UserError(f"{path} records the {meta['stem']} stem at {meta['image_size']} px: a damaged record")
    model.to(device, memory_format=memory_format(device)).load_weights(tensors)
    return model.eval(), meta
