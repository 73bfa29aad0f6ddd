"""Every command's defaults, in one home: the library reads them, and so does the CLI (this module
imports no torch, so `synthkit --help` still answers at once). The Makefile overrides only what the study sets."""

from __future__ import annotations

import math
from dataclasses import dataclass

UNCONDS = ("mixed", "group", "empty")
MIXES = ("concat", "balanced")


@dataclass
class InversionConfig:
    """The official scripts' settings: AdamW lr 0.03, weight decay 0.01, groups of 100 at batch 50, 128 px, 3000
    updates per image (train_steps 3000, loaded for CIFAR as learned_embeds-steps-6000: 2 AdamW steps per epoch)."""

    tokens: int = 5
    resolution: int = 128
    lr: float = 0.03
    weight_decay: float = 0.01
    group_size: int = 100
    batch_size: int = 50
    updates: int = 3000
    chunk_groups: int = 8
    precision: str = "fp32"
    seed: int = 0

    def steps_per_update(self) -> int:
        """AdamW steps a full group takes per update of each of its images (per epoch)."""
        return math.ceil(self.group_size / self.batch_size)


@dataclass
class SamplingConfig:
    """What both sampling modes share. steps, guidance and save_size left None take the mode's own
    defaults: PROMPT_DEFAULTS for prompts, DIConfig's for Diffusion Inversion."""

    steps: int | None = None
    guidance: float | None = None
    scheduler: str = "model"
    resolution: int | None = None
    save_size: int | None = None
    batch_size: int = 16
    seed: int = 0
    dtype: str = "auto"


PROMPT_DEFAULTS = {"steps": 50, "guidance": 7.5, "strength": 0.75}  # strength: img2img's share of the schedule re-noised


@dataclass
class DIConfig:
    """Diffusion Inversion sampling as the official di/sample_dataset.py: c = e_i + alpha (e_j - e_i) + lambda eps,
    guidance 2.0 against a class-mixed mean, 100 steps, 5 samples per image, saved at the training images' size
    (save_size None)."""

    per_image: int = 5
    interp: float = 0.1
    noise: float = 0.1
    uncond: str = "mixed"
    guidance: float = 2.0
    steps: int = 100
    save_size: int | None = None


@dataclass
class TrainConfig:
    """Every hyperparameter of a training run; defaults follow the Diffusion Inversion paper's CIFAR setup."""

    epochs: int = 30
    steps: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05
    mix: str = "concat"
    per_class: int | None = None
    image_size: int | None = None  # None: the first store's own size
    seed: int = 0
    compile: bool = False


@dataclass(frozen=True)
class EvalConfig:
    """Scoring classifiers on the real test set."""

    batch_size: int = 1000


@dataclass(frozen=True)
class GradcamConfig:
    """Grad-CAM: how many real images (a seeded pick, the same for every model), which layer, which class."""

    n: int = 64
    layer: str = "layer3"  # the most faithful by ROAD on a full-data model: bench/README.md
    target: str = "true"
    seed: int = 0
    batch_size: int = 64


@dataclass(frozen=True)
class VanishConfig:
    """Line segments and vanishing points: images per store, upsampling (None: shorter side to >= 256 px),
    focal length in pixels (None: estimated per image), and the seed of the pick and of RANSAC."""

    n: int = 500
    upsample: int | None = None
    focal: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class FidelityConfig:
    """Synthetic stores against real data: images per class (the same for every store), k nearest neighbours,
    the seed of the pick, and the metric drawn per class."""

    per_class: int = 1000
    k: int = 5
    seed: int = 0
    metric: str = "coverage"
    batch_size: int = 500


FILTER_CRITERIA = ("confidence", "margin", "cam", "geometry")


@dataclass(frozen=True)
class FilterConfig:
    """Keep the best share of each class by a criterion (see synthkit/filtering.py)."""

    keep: float = 0.8
    by: str = "confidence"
    batch_size: int = 500


EVAL, GRADCAM, VANISH = EvalConfig(), GradcamConfig(), VanishConfig()
FIDELITY, FILTER = FidelityConfig(), FilterConfig()
