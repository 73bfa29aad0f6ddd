"""synthkit: make synthetic training images useful (Diffusion Inversion and the study around it)."""

from .core.config import CIFAR10_CLASSES as CIFAR10_CLASSES  # re-exported: synthkit.CIFAR10_CLASSES and the rest
from .core.config import DEFAULT_CAPTIONER as DEFAULT_CAPTIONER
from .core.config import DEFAULT_MODEL as DEFAULT_MODEL
from .core.config import DEFAULT_SD_MODEL as DEFAULT_SD_MODEL
from .core.version import __version__ as __version__


def open_store(path, transform=None, target_transform=None):
    """A store as a torch Dataset of (image, label): uint8 tensors (3, H, W) through `transform`, labels through
    `target_transform`, with the store's `classes`, `targets` and `column(name)`; safe under a DataLoader with workers
    (synthkit.io.torchdata.StoreDataset). A bare name means data/NAME.h5."""
    from .io.torchdata import StoreDataset

    return StoreDataset(path, transform=transform, target_transform=target_transform)
