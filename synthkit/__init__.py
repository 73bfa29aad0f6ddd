"""synthkit: make synthetic training images useful (Diffusion Inversion and the study around it)."""

__version__ = "0.1.0"

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
