"""Training-time augmentation of uint8 image batches, all on the device with tensor operations (no workers, no PIL),
each draw from the step's own generator so that any step can be redrawn alone: the official crop and flip, an
Inception-style resized crop, and the original study's flip, rotation and colour jitter."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.config import lookup


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 batch, all on the device."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    crops = padded[
        torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols
    ]
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Inception-style crops of a float batch (a random area share and aspect ratio, resized back to the batch's
    size) and horizontal flips, as one batched affine resampling on the device."""
    b, _, h, w = images.shape
    dev = images.device
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator, device=dev)
    log_ratio = math.log(ratio[0]) + math.log(ratio[1] / ratio[0]) * torch.rand(b, generator=generator, device=dev)
    cw = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    ch = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = (1 - cw) * (2 * torch.rand(b, generator=generator, device=dev) - 1)
    cy = (1 - ch) * (2 * torch.rand(b, generator=generator, device=dev) - 1)
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, cx, ch, cy
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rotate_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 20.0,
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.1),
) -> torch.Tensor:
    """The original study's augmentation of a float batch: horizontal flip, a rotation within +-`degrees` (nearest
    pixel, black corners, as torchvision's RandomRotation) and ColorJitter(*jitter): brightness, contrast and
    saturation factors in 1 +- jitter, a hue shift within +-jitter[3], in an order drawn per image (colour_jitter)."""
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 6, generator=generator, device=dev)
    order = torch.rand(b, 4, generator=generator, device=dev).argsort(dim=1)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    angle = torch.deg2rad((2 * u[:, 1] - 1) * degrees)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) * flip, -torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) * flip, torch.cos(angle)
    x = F.grid_sample(
        images,
        F.affine_grid(theta, [b, 3, h, w], align_corners=False),
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    )
    factors = torch.stack(
        [1 + (2 * u[:, 2 + k] - 1) * jitter[k] for k in range(3)] + [(2 * u[:, 5] - 1) * jitter[3]], 1
    )
    return colour_jitter(x, factors, order, active=tuple(j > 0 for j in jitter))


def colour_jitter(
    x: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    active: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> torch.Tensor:
    """torchvision's ColorJitter on a float batch (B, 3, H, W) in [0, 1], each image with its own draws: factors (B, 4)
    of brightness, contrast, saturation and hue, applied in the image's order (B, 4), a permutation of 0..3 as
    ColorJitter draws one per call; an adjustment whose range is 0 is skipped, as there."""
    from torchvision.transforms.v2 import functional as TF

    x = x.clone()
    for slot in range(4):
        for op in range(4):
            rows = (order[:, slot] == op).nonzero().flatten()
            if not active[op] or rows.numel() == 0:
                continue
            part, f = x[rows], factors[rows, op]
            if op == 3:
                x[rows] = torch.stack([TF.adjust_hue(image, shift) for image, shift in zip(part, f.tolist())])
                continue
            toward = (
                torch.zeros_like(part)
                if op == 0
                else TF.rgb_to_grayscale(part).mean((1, 2, 3), keepdim=True)
                if op == 1
                else TF.rgb_to_grayscale(part)
            )
            x[rows] = (toward + (part - toward) * f[:, None, None, None]).clamp(0, 1)
    return x


# Every --augment by name (config.AUGMENTS offers these): a uint8 batch and the step's generator to a float batch in
# [0, 1]. crop-flip is the official RandomCrop(res, padding=res // 8) and flip; none is what the study's script trained
# with in effect (it replaces its datasets' transform by the test one before training).
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop-flip": lambda x, g: augment(x, g, pad=max(1, x.shape[-1] // 8)).float().div_(255),
    "resized-crop-flip": lambda x, g: random_resized_crop(x.float().div_(255), g),
    "flip-rotate-jitter": lambda x, g: rotate_jitter(x.float().div_(255), g),
    "none": lambda x, g: x.float().div_(255),
}


def training_batch(images: torch.Tensor, generator: torch.Generator, how: str = "crop-flip") -> torch.Tensor:
    """A uint8 batch augmented by `how` (a name in AUGMENTATIONS), in [0, 1]."""
    return lookup(AUGMENTATIONS, how, "--augment")(images, generator)
