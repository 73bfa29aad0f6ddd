"""The classifier: torchvision's ResNet-18 with the CIFAR stem, taking images in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

ARCH = "resnet18-cifar"
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

    def layer(self, name: str) -> nn.Module:
        """A named stage of the network (layer1..layer4), e.g. as a Grad-CAM target."""
        return getattr(self.net, name)
