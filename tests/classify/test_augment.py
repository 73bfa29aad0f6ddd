"""Augmentation on the device: seeded, within its ranges, and equal to torchvision's adjustments; unknown names are
refused."""

import pytest
import torch

from synthkit.classify.augment import (
    AUGMENTATIONS,
    augment,
    colour_jitter,
    random_resized_crop,
    rotate_jitter,
    training_batch,
)
from synthkit.core.config import AUGMENTS
from synthkit.core.errors import UserError


def test_augment_crops_and_flips_within_the_padded_image():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    same = augment(images, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, same)
    centre = augment(images, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(c, i) or torch.equal(c, i.flip(-1)) for c, i in zip(centre, images))


def test_the_studys_augmentation_rotates_and_jitters_within_its_ranges():
    images = torch.rand(16, 3, 24, 24)
    a = training_batch((images * 255).to(torch.uint8), torch.Generator().manual_seed(0), "flip-rotate-jitter")
    b = training_batch((images * 255).to(torch.uint8), torch.Generator().manual_seed(0), "flip-rotate-jitter")
    assert torch.equal(a, b) and a.shape == images.shape and 0 <= a.min() and a.max() <= 1
    still = rotate_jitter(images, torch.Generator().manual_seed(0), degrees=0.0, jitter=(0.0, 0.0, 0.0, 0.0))
    assert all(
        torch.allclose(x, y, atol=1e-5) or torch.allclose(x, y.flip(-1), atol=1e-5) for x, y in zip(still, images)
    )
    turned = rotate_jitter(torch.ones(8, 3, 32, 32), torch.Generator().manual_seed(1), jitter=(0.0, 0.0, 0.0, 0.0))
    assert (turned == 0).any()  # black corners from the rotation


def test_colour_jitter_is_torchvisions_adjustments_in_each_images_own_order():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 8, 8, generator=g)
    factors = torch.cat([0.8 + 0.4 * torch.rand(12, 3, generator=g), 0.2 * torch.rand(12, 1, generator=g) - 0.1], 1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(12)])
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)

    def by_hand(orders: torch.Tensor) -> torch.Tensor:
        out = []
        for image, f, o in zip(x, factors, orders):
            for op in o.tolist():
                image = adjust[op](image, f[op].item())
            out.append(image)
        return torch.stack(out)

    jittered = colour_jitter(x, factors, order)
    assert torch.allclose(jittered, by_hand(order), atol=1e-5)
    fixed = torch.arange(4).expand(12, 4)
    assert not torch.allclose(jittered, by_hand(fixed), atol=1e-3)  # the order matters, so it was followed
    plain = training_batch((x * 255).to(torch.uint8), g, "none")
    assert torch.equal(plain, (x * 255).to(torch.uint8).float() / 255)


def test_random_resized_crop_is_seeded_and_covers_the_image_at_full_scale():
    images = torch.rand(6, 3, 80, 80)
    a = random_resized_crop(images, torch.Generator().manual_seed(0))
    b = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.allclose(a, images, atol=0.05)
    whole = random_resized_crop(images, torch.Generator().manual_seed(1), scale=(1, 1), ratio=(1, 1))
    for x, y in zip(whole, images):  # the whole image, flipped or not
        assert torch.allclose(x, y, atol=1e-5) or torch.allclose(x, y.flip(-1), atol=1e-5)
    small = training_batch(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert small.dtype == torch.float32 and small.shape == (4, 3, 32, 32) and small.max() <= 1


def test_every_offered_augmentation_has_an_entry_and_an_unknown_name_is_refused():
    assert tuple(AUGMENTATIONS) == AUGMENTS  # the CLI offers exactly the table's names
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for name in AUGMENTS:
        assert training_batch(images, torch.Generator().manual_seed(0), name).shape == (2, 3, 8, 8)
    with pytest.raises(UserError, match="--augment must be one of crop-flip"):
        training_batch(images, torch.Generator(), "rotate")


FLIPS = ("crop-flip", "resized-crop-flip", "flip-rotate-jitter")  # the augmentations that flip: half the images each


def flipped_share(out: torch.Tensor) -> float:
    """The share of ramp images (dark left, bright right) that come out brighter on the left: flipped. Crops, small
    rotations and colour jitter keep the ramp's direction."""
    third = out.shape[-1] // 3
    left, right = out[..., :third].mean(dim=(1, 2, 3)), out[..., -third:].mean(dim=(1, 2, 3))
    return float((left > right).float().mean())


@pytest.mark.parametrize("name", AUGMENTS)
def test_the_flipping_augmentations_flip_about_half_the_images_and_the_others_none(name):
    """Fails on a crop-flip that never flips or always flips (both kept its shapes and ranges): of 400 asymmetric
    images, the flipped share is within 0.4-0.6 (a fair coin: 0.5 +- 0.025 std)."""
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(400, 3, 32, 32).contiguous()
    share = flipped_share(training_batch(ramp, torch.Generator().manual_seed(0), name))
    if name in FLIPS:
        assert 0.4 <= share <= 0.6, (name, share)
    else:
        assert share == 0, (name, share)
    assert set(FLIPS) <= set(AUGMENTS)
