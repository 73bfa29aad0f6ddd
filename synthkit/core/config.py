"""Every command's defaults, in one home: the library reads them, and so does the CLI (this module
imports no torch, so `synthkit --help` still answers at once). The Makefile overrides only what the study sets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import UserError

# ---- the names every stage shares: CIFAR-10's classes and the checkpoints the study used
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

SEED = 0  # every command's seed unless --seed says otherwise
SEED_MAX = 2**32 - 1  # seeds are combined in 64-bit arithmetic (train: seed * 2**32 + step), so they must fit 32 bits
REAL_STORE, TEST_STORE = "real", "test"  # the store names (data/<name>.h5) commands read unless told otherwise

# ---- the choices of every option that has a few, beside the defaults (the CLI offers exactly these)
UNCONDS = ("mixed", "group", "empty")
SPLITS = ("train", "test")
PRECISIONS = ("fp32", "bf16")
DTYPES = ("auto", "fp32", "fp16", "bf16")
SCHEDULERS = ("model", "ddim", "dpm++", "pndm")
LIKES = ("sd15",)
GRADCAM_TARGETS = ("true", "predicted")
FIDELITY_METRICS = ("frechet", "kid", "precision", "recall", "density", "coverage", "agreement", "confidence")
FILTER_CRITERIA = ("confidence", "margin", "cam", "geometry")
MIXES = ("auto", "balanced", "concat")
AUGMENTS = ("crop-flip", "resized-crop-flip", "flip-rotate-jitter", "none")
INITS = ("torchvision", "kaiming-normal")
EXPORT_FORMATS = ("imagefolder", "webdataset")  # synthkit export --format: what other tools read


def check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    """One error line when `value` is none of `choices`: the one home of a library caller's 'must be one of'."""
    if value not in choices:
        raise UserError(f"{option} must be one of {', '.join(choices)}, got '{value}'")


def lookup(table: dict[str, Any], name: str, option: str) -> Any:
    """The entry `name` of a table of choices (optimisers, schedules, augmentations): an unknown name is one error
    line, never a silent default."""
    check_choice(name, tuple(table), option)
    return table[name]


@dataclass(frozen=True)
class DataConfig:
    """Imports: where --download puts what it fetches, and the split by default."""

    download_root: str = "data/downloads"
    split: str = "train"
    batch_size: int = 2000  # images decoded and written at a time
    folder_batch_size: int = 256  # image-folder files decoded at a time


@dataclass(frozen=True)
class ShowConfig:
    """`synthkit show`: images per class and pixels per image of the grid."""

    per_row: int = 10
    cell: int = 64


@dataclass(frozen=True)
class CaptionConfig:
    """`synthkit caption`: images per BLIP batch."""

    batch_size: int = 32


OFFICIAL_RESOLUTION = 128  # the official code's CIFAR resolution (sample_dataset.py sampling_resolution)


@dataclass
class InversionConfig:
    """The official inversion's settings (yongchaoz/diffusion_inversion, src/diffuser_inversion.py and README.md:44-51):
    AdamW lr 0.03 (--learning_rate=3e-02), weight decay 0.01 (the adam_weight_decay default), groups of 100
    (--num_emb=100)
    at batch 50 (--train_batch_size=50), 5 tokens (--num_tokens=5). `updates` 3000 per image is the README's
    --train_steps=3000, which di/sample_dataset.py:110-112 loads for CIFAR as learned_embeds-steps-6000 (2 AdamW steps a
    group epoch); the script's own default is train_steps 2000. The resolution 128 is sample_dataset.py's
    sampling_resolution default (its README inverts STL-10 at 256)."""

    tokens: int = 5
    resolution: int | None = None  # None: OFFICIAL_RESOLUTION, or the model's own size when that is smaller
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


@dataclass(frozen=True)
class InvertJobConfig:
    """How an inversion job reports and saves, apart from what it computes: resumable state about every
    `checkpoint_every` AdamW steps, the preview redrawn every `preview_every` updates (0: none)."""

    checkpoint_every: int = 200
    preview_every: int = 500


@dataclass
class SamplingConfig:
    """What both sampling modes share. steps, guidance and save_size left None take the mode's own
    defaults: PromptConfig's for prompts, DIConfig's for Diffusion Inversion."""

    steps: int | None = None
    guidance: float | None = None
    scheduler: str = "model"
    resolution: int | None = None
    save_size: int | None = None
    batch_size: int = 16
    seed: int = 0
    dtype: str = "auto"


@dataclass(frozen=True)
class PromptConfig:
    """Prompt sampling (text to image, or img2img from a real store): diffusers' pipeline defaults of 50 steps and
    guidance 7.5, and img2img's strength 0.75 (the share of the schedule re-noised), which the original study used."""

    steps: int = 50
    guidance: float = 7.5
    strength: float = 0.75
    per_class: int = 10


@dataclass
class DIConfig:
    """Diffusion Inversion sampling: c = e_i + interp (e_j - e_i) + noise * eps, guidance against a class-mixed mean.

    The official repository has no CIFAR-10 command. Its README's STL-10 command (README.md:57-63) passes
    --num_inference_steps=100 --emb_noise=0.1 --interpolation_strength=0.1 --num_samples=5 --train_steps=3000;
    di/sample_dataset.py's own defaults (:46-49, with a CIFAR-10 output folder) are 200 steps, emb_noise 0.0,
    interpolation 0.1, 5 samples, train_steps 2000, guidance 2.0. synthkit takes the README's command, the one the
    authors published, and the script's guidance; each value says where it comes from."""

    per_image: int = 5  # README.md:59 --num_samples=5 (sample_dataset.py:47 default 5)
    interp: float = 0.1  # README.md:59 --interpolation_strength=0.1 (sample_dataset.py:47 default 0.1)
    noise: float = 0.1  # README.md:59 --emb_noise=0.1 (sample_dataset.py:47 default 0.0)
    uncond: str = (
        "mixed"  # pipeline_emb.py:306-332 avg_uncond_embeddings: the mean of the group's embeddings (see README)
    )
    guidance: float = 2.0  # sample_dataset.py:48 guidance_scale=2.0 (the README does not override it)
    steps: int = 100  # README.md:59 --num_inference_steps=100 (sample_dataset.py:48 default 200)
    # sample_dataset.py:147,197 eta=1.; used where the scheduler's step takes it (DDIM), as pipeline_emb.py does
    eta: float = 1.0
    save_size: int | None = (
        None  # None: the size of the images inverted (sample_dataset.py:48 save_resolution=32 for CIFAR)
    )


# Training recipes, written as airbench writes its `hyp`: every value of a classifier's run, each with where it
# comes from. `synthkit train --recipe NAME` starts from one; any option given on the command line overrides it.
# DI = github.com/yongchaoz/diffusion_inversion (di/train_net.py at 05a6661, and the evaluation command of its
# README.md, lines 68-78); STUDY = github.com/PankajGadhwal/Fixing-the-Synthetic-Data-for-Representational-Learning
# (cifake-classifier.py).
RECIPES: dict[str, dict] = {
    "di": {  # the Diffusion Inversion paper's evaluation: every row the same 50,000 steps at batch 128
        "arch": "resnet18",  # README.md:71 --arch=resnet18 (train_net.py's CIFAR ResNet-18: 3x3 stem, no max-pool)
        "steps": 50_000,  # README.md:71 --num-steps=50000 (train_net.py:107 default 50000)
        "batch_size": 128,  # README.md:71 --syn-bs=128 for single-source rows
        "real_batch": None,  # half: train_net.py:101-102 --real-bs 64 --syn-bs 64 for mixed rows, concatenated (:403)
        "mix": "auto",  # mixed rows take real and synthetic halves (:403); single-source rows their one store
        "optimizer": "sgd",  # README.md:71 --optimizer=sgd; train_net.py:326-327
        "lr": 0.1,  # README.md:75,78 --lr=1e-1 (train_net.py:104 defaults to 1e-3; the command overrides it)
        "momentum": 0.9,  # train_net.py:327 momentum=0.9 (no Nesterov)
        "weight_decay": 5e-4,  # README.md:71 --weight-decay=5e-4
        # train_net.py:333-336 ChainedScheduler(LinearLR, CosineAnnealingLR), per step (:411)
        "schedule": "warmup-cosine",
        "warmup_steps": 1000,  # README.md:71 --warmup-steps=1000 -> LinearLR(total_iters=1000)
        "warmup_start": 0.001,  # train_net.py:335 LinearLR(start_factor=0.001)
        "min_lr": 0.001,  # train_net.py:336 CosineAnnealingLR(T_max=num_steps, eta_min=lr * 0.001)
        "step_every": 0,  # unused: no step schedule
        "step_gamma": 0.1,  # unused: no step schedule
        "label_smoothing": 0.0,  # train_net.py:324 nn.CrossEntropyLoss()
        "augment": "crop-flip",  # train_net.py:196-197 RandomCrop(res, padding=res // 8), RandomHorizontalFlip
        "init": "torchvision",  # see the README's departures: the official ResNet18 keeps PyTorch's default init
        "image_size": None,  # train_net.py:180-187: the data set's own size (32 for CIFAR-10)
        "evals": 20,  # README.md:72 --num-evals=20 on the real test split (train_net.py:376, :428-430)
    },
    "study": {  # the original study's classifier (cifake-classifier.py), scored on real test images here
        "arch": "resnet18",  # :126 torchvision's resnet18 (its ImageNet stem at 224 px)
        "steps": 15_700,  # 100 epochs (:138) of 157 batches of 32 (:111) over 5,000 images (the script: 70%, :43)
        "batch_size": 32,  # :111 batch_size = 32
        "real_batch": None,  # the script trains no mixed row; synthkit mixes half and half
        "mix": "auto",
        "optimizer": "adam",  # :134 Adam(lr=0.001), no weight decay
        "lr": 1e-3,
        "momentum": 0.9,  # unused by Adam (its betas stay torch's defaults, as in the script)
        "weight_decay": 0.0,
        "schedule": "step",  # :135 StepLR(step_size=30, gamma=0.1), stepped once per epoch (:169)
        # unused by the step schedule (the script has no warm-up and no cosine): the values synthkit has always
        # recorded for this recipe, so that classifiers trained before are still recognised
        "warmup_steps": 1000,
        "warmup_start": 0.001,
        "min_lr": 0.001,
        "step_every": 4_710,  # 30 epochs of 157 steps
        "step_gamma": 0.1,
        "label_smoothing": 0.1,  # :133 CrossEntropyLoss(label_smoothing=0.1)
        "augment": "flip-rotate-jitter",  # :18-20 as declared; the script trains without it in effect (:59)
        "init": "kaiming-normal",  # :128 kaiming_normal_ on every Conv2d and Linear weight
        "image_size": 224,  # :17 Resize((224, 224)); torchvision's ResNet-18 with its ImageNet stem (:126)
        "evals": 100,  # once per epoch, as the script validates (:154-167); the best is labelled as such
    },
    "quick": {  # CPU runs and the demo: the official schedule's shape over a few hundred steps
        "arch": "resnet18",
        "steps": 300,
        "batch_size": 32,
        "real_batch": None,
        "mix": "auto",
        "optimizer": "sgd",
        "lr": 0.025,  # the linear scaling of di's 0.1 at batch 128 to batch 32
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "warmup-cosine",
        "warmup_steps": 15,  # 5% of the steps
        "warmup_start": 0.001,
        "min_lr": 0.001,
        "step_every": 0,
        "step_gamma": 0.1,
        "label_smoothing": 0.0,
        "augment": "crop-flip",
        "init": "torchvision",
        "image_size": None,
        "evals": 4,
    },
}
DEFAULT_RECIPE = "di"


def scaled_warmup(recipe: dict, steps: int) -> int:
    """The recipe's warm-up, or for a run shorter than the recipe's the same share of it (quick at 3 steps: 0, not
    15 steps that the run would never finish)."""
    if steps >= recipe["steps"]:
        return recipe["warmup_steps"]
    return round(recipe["warmup_steps"] * steps / recipe["steps"])


JOB_FIELDS = ("recipe", "per_class", "seed", "compile")  # TrainConfig's values a job sets; a recipe names all others
_DEFAULT = RECIPES[DEFAULT_RECIPE]


@dataclass
class TrainConfig:
    """Every value of one classifier's run, resolved from a recipe (RECIPES) and the options that override it.
    `TrainConfig()` is the `di` recipe, read from RECIPES; `TrainConfig.from_recipe("quick", steps=20)` starts from
    another."""

    recipe: str = DEFAULT_RECIPE
    arch: str = _DEFAULT["arch"]
    steps: int = _DEFAULT["steps"]
    batch_size: int = _DEFAULT["batch_size"]
    real_batch: int | None = _DEFAULT["real_batch"]  # mixed rows: real images a step (None: half), the rest synthetic
    mix: str = _DEFAULT["mix"]  # auto: half real half synthetic when the stores hold both kinds, else their union
    optimizer: str = _DEFAULT["optimizer"]
    lr: float = _DEFAULT["lr"]
    momentum: float = _DEFAULT["momentum"]
    weight_decay: float = _DEFAULT["weight_decay"]
    schedule: str = _DEFAULT["schedule"]
    warmup_steps: int = _DEFAULT["warmup_steps"]
    warmup_start: float = _DEFAULT["warmup_start"]
    min_lr: float = _DEFAULT["min_lr"]  # the cosine's floor as a share of lr
    step_every: int = _DEFAULT["step_every"]  # schedule "step": steps between decays
    step_gamma: float = _DEFAULT["step_gamma"]
    label_smoothing: float = _DEFAULT["label_smoothing"]
    augment: str = _DEFAULT["augment"]
    init: str = _DEFAULT["init"]
    image_size: int | None = _DEFAULT["image_size"]  # None: the first store's own size
    evals: int = _DEFAULT["evals"]  # test-set scorings during training (with a test store)
    per_class: int | None = None
    seed: int = SEED
    compile: bool = False

    @classmethod
    def from_recipe(cls, name: str = DEFAULT_RECIPE, **overrides) -> TrainConfig:
        """The recipe's values, then every override that is not None."""
        if name not in RECIPES:
            raise UserError(f"unknown recipe '{name}': use one of {', '.join(RECIPES)}")
        recipe = RECIPES[name]
        missing = recipe_fields() - set(recipe)
        if missing or set(recipe) - recipe_fields():
            raise UserError(
                f"recipe '{name}' must name every value of a run and nothing else: missing {sorted(missing)}, "
                f"unknown {sorted(set(recipe) - recipe_fields())} (synthkit/core/config.py RECIPES)"
            )
        values = recipe | {k: v for k, v in overrides.items() if v is not None}
        if overrides.get("warmup_steps") is None and recipe["schedule"] == "warmup-cosine":  # only a warm-up scales
            values["warmup_steps"] = scaled_warmup(recipe, values["steps"])
        return cls(recipe=name, **values)

    def describe(self) -> list[tuple[str, object, str]]:
        """Every resolved value as (name, value, where it comes from: the recipe, an option, or the recipe scaled)."""
        recipe = RECIPES[self.recipe]
        rows = []
        for key, value in asdict(self).items():
            if key in ("recipe", "seed"):
                continue
            if key not in recipe:
                source = "option" if value != getattr(TrainConfig, key) else "the job's default"
            elif value == recipe[key]:
                source = "recipe"
            elif key == "warmup_steps" and value == scaled_warmup(recipe, self.steps):
                source = f"recipe's {recipe[key]}, scaled to {self.steps} steps"
            else:
                source = "option"
            rows.append((key, value, source))
        return rows

    @property
    def real_share(self) -> int:
        """Real images in each batch of a mixed row."""
        return self.real_batch or self.batch_size // 2

    @property
    def synthetic_batch(self) -> int:
        return self.batch_size - self.real_share


def recorded_params(params: dict[str, Any]) -> dict[str, Any]:
    """A classifier's or train state's recorded params as TrainConfig records them now: records made before
    --arch existed name no architecture, and every one of them is a ResNet-18."""
    return {"arch": "resnet18"} | params if isinstance(params, dict) else params


def recipe_fields() -> set[str]:
    """The values every recipe names: all of TrainConfig's but those a job sets (JOB_FIELDS)."""
    return {f.name for f in fields(TrainConfig)} - set(JOB_FIELDS)


@dataclass
class MiniConfig:
    """`synthkit model train`: a miniature Stable Diffusion trained on a store. Stage 1 trains the VAE (reconstruction
    plus SD's small KL weight), stage 2 the UNet and the CLIP text encoder on class prompts, with the unconditional
    prompt dropped in at `uncond_prob` so that guidance works (SD 1.x's 10%). The architecture is SD's at a
    fraction of the width: the VAE downsamples by 4 (32 px -> 8x8x4 latents), the UNet has three levels with
    cross-attention at the first two. Sized to ship: under 25 MB in fp16."""

    vae_steps: int = 3000
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # SD's KL-regularised autoencoder (LDM's kl-f8: 1e-6)
    steps: int = 8000  # UNet steps
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 300
    ema: float = 0.999
    uncond_prob: float = 0.1
    template: str = "a photo of a {class}"
    unet_channels: tuple[int, ...] = (64, 128, 128)
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4  # SD's
    text_hidden: int = 128
    text_layers: int = 2
    seed: int = 0
    preview_every: float = 300.0  # seconds between preview grids
    checkpoint_every: float = 120.0  # seconds between resumable states
    # Instance codes (Diffusion Autoencoders, Preechakul et al. 2022) in DI's token format, so that Diffusion
    # Inversion has a continuous conditioning space to land in: a share of every UNet batch is conditioned on an
    # encoder's code of its own latent instead of a prompt (0: class prompts only, as the first shipped model).
    instance_share: float = 0.5
    code_tokens: int = 5  # DI's --num_tokens=5 (InversionConfig.tokens)
    code_dim: int = 640  # the encoder's last width; its bottleneck is the noise below
    code_noise: float = 0.3  # codes get Gaussian noise of a std drawn in [code_noise_min, code_noise]: DI's is 0.1
    code_noise_min: float = 0.1  # never a clean code, so that a code cannot carry its latent whole
    mean_code_prob: float = 0.1  # instance rows given the batch's mean code, DI's unconditional input (mixed)
    start_from: str | None = None  # a trained miniature: keep its VAE, start the UNet and text encoder from it


@dataclass(frozen=True)
class JudgeConfig:
    """`synthkit judge`: images per class of each store, the prompt of each class, the seed of the pick and noise."""

    per_class: int = 20
    template: str = "a photo of a {class}"
    seed: int = 0
    batch_size: int = 50


@dataclass(frozen=True)
class EvalConfig:
    """Scoring classifiers on the real test set."""

    batch_size: int = 1000


@dataclass(frozen=True)
class GradcamConfig:
    """Grad-CAM: how many real images (a seeded pick, the same for every model), which layer, which class."""

    n: int = 64
    layer: str | None = None  # None: each classifier's own default (ResNet-18's layer3, the most faithful by ROAD)
    target: str = "true"
    seed: int = 0
    batch_size: int = 64
    figure_rows: int = 8  # images in the figure, picked across classes


@dataclass(frozen=True)
class VanishConfig:
    """Line segments and vanishing points: images per store, upsampling (None: shorter side to >= 256 px),
    focal length in pixels (None: estimated per image), and the seed of the pick and of RANSAC."""

    n: int = 500
    upsample: int | None = None
    focal: float | None = None
    seed: int = 0
    overlays: int = 6  # images drawn with their detections per store
    pairs_shown: int = 4  # source and sample pairs drawn per store


@dataclass(frozen=True)
class FidelityConfig:
    """Synthetic stores against real data: images per class (the same for every store), k nearest neighbours,
    the seed of the pick, and the metric drawn per class."""

    per_class: int = 1000
    k: int = 5
    seed: int = 0
    metric: str = "coverage"
    batch_size: int = 500


@dataclass(frozen=True)
class FilterConfig:
    """Keep the best share of each class by a criterion (see synthkit/analyse/filtering.py)."""

    keep: float = 0.8
    by: str = "confidence"
    batch_size: int = 500


@dataclass(frozen=True)
class ExportConfig:
    """`synthkit export`: a WebDataset shard's samples (a count) or bytes (a size); WebDataset's advice is shards of
    100 MB to a few GB, big enough to be read in long sequential runs."""

    shard_size: str = "500MB"


EXPORT = ExportConfig()
EVAL, GRADCAM, VANISH = EvalConfig(), GradcamConfig(), VanishConfig()
FIDELITY, FILTER, MINI, JUDGE = FidelityConfig(), FilterConfig(), MiniConfig(), JudgeConfig()
PROMPT, SAMPLING, INVERT_JOB = PromptConfig(), SamplingConfig(), InvertJobConfig()
DATA, SHOW, CAPTION = DataConfig(), ShowConfig(), CaptionConfig()
