"""The defaults of generation, in one home: inversion and sampling read them, and so does the CLI
(this module imports no torch, so `synthkit --help` still answers at once)."""

from __future__ import annotations

import math
from dataclasses import dataclass

UNCONDS = ("mixed", "group", "empty")


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


PROMPT_DEFAULTS = {"steps": 50, "guidance": 7.5}


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
