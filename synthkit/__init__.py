"""synthkit: make synthetic training images useful (Diffusion Inversion and the study around it)."""

from .version import __version__ as __version__  # re-exported: synthkit.__version__

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"  # the Stable Diffusion checkpoint Diffusion Inversion used
DEFAULT_SD_MODEL = "runwayml/stable-diffusion-v1-5"  # the original study's Stable Diffusion row (img2img, captions)
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"  # the original study's captioning model


def open_store(path, transform=None, target_transform=None):
    """A store as a torch Dataset of (image, label): uint8 tensors (3, H, W) through `transform`, labels through
    `target_transform`, with the store's `classes`, `targets` and `column(name)`; safe under a DataLoader with workers
    (synthkit.torchdata.StoreDataset). A bare name means data/NAME.h5."""
    from .torchdata import StoreDataset

    return StoreDataset(path, transform=transform, target_transform=target_transform)
