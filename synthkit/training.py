"""`synthkit train`: ResNet-18s on any mix of real and synthetic stores, under a named recipe (config.RECIPES).

Like airbench, a training set sits on the device as one uint8 tensor and every batch is augmented with tensor
operations: no workers, no PIL. A set larger than the memory budget is read from its stores a window of batches
at a time instead, giving the same batches. Every run counts optimiser steps, not epochs, so rows trained on
stores of different sizes get the same number of updates, as in the official evaluation (di/train_net.py).

Each part of a training set (all rows, or its real and its synthetic rows) is an endless stream of shuffled
passes, each pass seeded by (seed, part, pass); each step's augmentation is seeded by (seed, step). So any
stretch of steps can be drawn on its own: a run resumed at a saved step ends with the weights of an
uninterrupted one, and several classifiers trained in one job (`train_many`) each equal their run alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .config import AUGMENTS, INITS, MIXES, OPTIMIZERS, SCHEDULES, SEED, TrainConfig, check_choice
from .device import autocast, device_memory, image_bytes, job_device, memory_budget, memory_format
from .errors import UserError
from .evaluation import TestImages
from .jobs import check_destination, check_fits, check_output, check_range, check_same_options
from .locks import writer_lock
from .memory import human
from .meta import Kind, provenance
from .model import CIFAR_STEM_MAX, ResNet18, arch_for, class_mapping, kaiming_normal_init, resize_images
from .outputs import written_whole
from .paths import train_log_path, train_state_path
from .progress import console, progress
from .store import Store, balanced_subset

CHECKPOINT_EVERY = 1000  # steps between saved states, besides every evaluation
MAX_STEPS = 2**32 - 1  # a step's draws are seeded by seed * 2**32 + step: a longer run would reuse the next seed's
# ResNet-18's training activations per image, as a multiple of the image in float32 (measured order of magnitude:
# about 7 MB an image at 32 px with the CIFAR stem, which keeps full resolution through layer1; the ImageNet stem
# quarters the image at once)
ACTIVATIONS_CIFAR, ACTIVATIONS_IMAGENET = 600, 40


@dataclass
class TrainingSet:
    """Labels, which rows are real, the classes and where the rows came from; the images (N, 3, S, S) uint8 sit on
    the device when they fit its memory budget (`images`), else rows are read from the stores window by window."""

    labels: torch.Tensor
    is_real: torch.Tensor
    classes: list[str]
    image_size: int
    sources: list[dict[str, Any]] = field(default_factory=list)
    images: torch.Tensor | None = None
    parts: list[tuple[Path, np.ndarray]] = field(default_factory=list)  # each store and its rows, in order
    memory_limit: int | None = None  # bytes a streamed window may hold

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        return self.images is None

    def read(self, rows: np.ndarray, device: torch.device, chunk: int = 1024) -> torch.Tensor:
        """Images of the given (sorted) rows as a device tensor at the training size, read from their stores and
        resized `chunk` rows at a time, so that a store larger than the training size never sits whole in memory."""
        size = self.image_size
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, device=device)
        done, start = 0, 0
        for path, store_rows in self.parts:
            mine = rows[(rows >= start) & (rows < start + len(store_rows))] - start
            with Store(path) as store:
                for k in range(0, len(mine), chunk):
                    pixels = torch.from_numpy(store.images(store_rows[mine[k : k + chunk]])).permute(0, 3, 1, 2)
                    out[done : done + len(pixels)] = resize_images(pixels.to(device), size)
                    done += len(pixels)
            start += len(store_rows)
        return out


def load_stores(
    paths: Sequence[Path],
    device: torch.device,
    per_class: int | None = None,
    seed: int = SEED,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
    memory_limit: int | None = None,
) -> TrainingSet:
    """The stores (optionally a seeded class-balanced subset of each) as one training set at `image_size` (default:
    the first store's size). Classes must agree by name. Held on the device when it fits `memory_limit` bytes."""
    if not paths:
        raise UserError("no stores given: pass --data NAME[,NAME...]")
    labels, is_real, sources, parts = [], [], [], []
    for path in paths:
        with Store(path) as store:
            store.require_images()
            classes = list(classes or store.classes)
            image_size = image_size or store.image_shape[0]
            mapping = class_mapping(store.classes, classes, f"store {path}")
            rows = (
                np.arange(len(store))
                if per_class is None
                else balanced_subset(store.labels, per_class, seed, store.classes)
            )
            store_labels = mapping[store.labels[rows]]
            kind = store.meta.get("kind", "unknown")
            real_images = len(store_labels) if kind == Kind.REAL else store.meta.get("real_images")
            sources.append(
                {
                    "path": str(path),
                    "kind": kind,
                    "count": len(store_labels),
                    "fingerprint": store.fingerprint,
                    "image_size": store.image_shape[0],
                    "real_images": real_images,
                }
            )
        parts.append((Path(path), rows))
        labels.append(torch.from_numpy(np.asarray(store_labels, dtype=np.int64)))
        is_real.append(torch.full((len(store_labels),), kind == Kind.REAL, dtype=torch.bool))
    data = TrainingSet(
        torch.cat(labels).to(device),
        torch.cat(is_real).to(device),
        classes,
        image_size,
        sources,
        parts=parts,
        memory_limit=memory_limit,
    )
    if memory_limit is None or image_bytes(len(data), image_size) <= memory_limit:
        data.images = data.read(np.arange(len(data)), device).contiguous()
    return data


def batch_images(
    data: TrainingSet, batches: Sequence[torch.Tensor], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch's rows and uint8 images. A streamed set is read in windows of consecutive batches whose rows fit
    its memory limit, so the batches, and so the trained weights, are the same as with the set on the device."""
    if not data.streamed:
        for rows in batches:
            yield rows, data.images[rows]
        return
    per_row = image_bytes(1, data.image_size)
    window: list[torch.Tensor] = []
    for k, rows in enumerate(batches):
        window.append(rows)
        rows_held = sum(len(r) for r in window) + (len(batches[k + 1]) if k + 1 < len(batches) else 0)
        if k + 1 < len(batches) and rows_held * per_row <= (data.memory_limit or 0):
            continue
        wanted = torch.unique(torch.cat(window))
        block = data.read(wanted.cpu().numpy(), device)
        position = torch.full((len(data),), -1, dtype=torch.long, device=rows.device)
        position[wanted] = torch.arange(len(wanted), device=rows.device)
        for r in window:
            yield r, block[position[r].to(block.device)]
        window = []


# ---- the batches: which rows each step takes


def mix_of(data: TrainingSet, config: TrainConfig) -> str:
    """The batch composition: `balanced` (config.real_share real images and the rest synthetic every step) or
    `concat` (batches drawn from the union). `auto` is balanced when the stores hold both kinds."""
    n_real = int(data.is_real.sum())
    both = 0 < n_real < len(data)
    if config.mix == "balanced" and not both:
        raise UserError("--mix balanced needs at least one real store (kind 'real') and one synthetic store")
    if config.mix == "balanced" or (config.mix == "auto" and both):
        return "balanced"
    return "concat"


def composition(data: TrainingSet, config: TrainConfig) -> dict[str, int]:
    """Images of each kind in every batch: {"real": 64, "synthetic": 64}, or {"any": 128} from the union."""
    if mix_of(data, config) == "balanced":
        return {"real": config.real_share, "synthetic": config.synthetic_batch}
    return {"any": config.batch_size}


def part_stream(n: int, key: Sequence[int], start: int, count: int) -> np.ndarray:
    """Positions [start, start + count) of an endless stream of shuffled passes over range(n); pass p is a
    permutation seeded by (*key, p), so any stretch can be drawn without drawing the ones before it."""
    out = np.empty(count, dtype=np.int64)
    done, position = 0, start
    while done < count:
        p, offset = divmod(position, n)
        take = min(n - offset, count - done)
        out[done : done + take] = np.random.default_rng([*key, p]).permutation(n)[offset : offset + take]
        done, position = done + take, position + take
    return out


def step_rows(data: TrainingSet, config: TrainConfig, first: int, stop: int) -> torch.Tensor:
    """(stop - first, batch) training-set rows of steps [first, stop): each part's stream (all rows; or the real rows,
    then the synthetic ones) takes its share of every batch, real rows first as the official code concatenates."""
    if mix_of(data, config) == "balanced":
        real = torch.nonzero(data.is_real).flatten().cpu().numpy()
        synthetic = torch.nonzero(~data.is_real).flatten().cpu().numpy()
        parts = [(real, config.real_share), (synthetic, config.synthetic_batch)]
    else:
        parts = [(np.arange(len(data)), config.batch_size)]
    steps = stop - first
    blocks = [
        rows[part_stream(len(rows), (config.seed, k), first * b, steps * b)].reshape(steps, b)
        for k, (rows, b) in enumerate(parts)
        if b > 0
    ]
    return torch.from_numpy(np.concatenate(blocks, axis=1)).to(data.labels.device)


# ---- augmentation, on the device


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


def training_batch(images: torch.Tensor, generator: torch.Generator, how: str = "crop-flip") -> torch.Tensor:
    """A uint8 batch augmented by `how`, in [0, 1]: crop-flip (a random crop with size // 8 padding and a flip, the
    official RandomCrop(res, padding=res // 8)), resized-crop-flip (random-resized-crop and flip) or
    flip-rotate-jitter (the original study's), or none (what the study's script trained with in effect: it replaces
    its datasets' transform by the test one before training)."""
    if how == "none":
        return images.float().div_(255)
    if how == "crop-flip":
        return augment(images, generator, pad=max(1, images.shape[-1] // 8)).float().div_(255)
    if how == "resized-crop-flip":
        return random_resized_crop(images.float().div_(255), generator)
    return rotate_jitter(images.float().div_(255), generator)


# ---- the optimiser and its schedule


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the official evaluation) or Adam (the original study)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's own schedulers, stepped once per optimiser step. warmup-cosine is the official one
    (di/train_net.py:333-336): ChainedScheduler(LinearLR(start_factor, warm-up steps), CosineAnnealingLR(T_max=steps,
    eta_min=min_lr * lr)); step is StepLR(step_every, step_gamma)."""
    sched = torch.optim.lr_scheduler
    if config.schedule == "step":
        return sched.StepLR(optimizer, step_size=max(1, config.step_every), gamma=config.step_gamma)
    return sched.ChainedScheduler(
        [
            # without warm-up the factor is 1 (torch's LinearLR over 0 steps would hold start_factor for ever)
            sched.LinearLR(
                optimizer,
                start_factor=config.warmup_start if config.warmup_steps else 1.0,
                total_iters=config.warmup_steps,
            ),
            sched.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr * config.min_lr),
        ]
    )


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"optim.{i}.{key}": value for i, s in state.items() for key, value in s.items() if torch.is_tensor(value)}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict] | None
) -> None:
    """The optimiser's saved state_dict: its per-parameter tensors, and its param groups (lr and the rest) as saved."""
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    if param_groups is not None:
        state["param_groups"] = param_groups
    optimizer.load_state_dict(state)


def _write_log(out: Path, log: list[dict]) -> None:
    """The JSON-lines log beside the checkpoint: a line per saved step (loss, accuracy, lr, speed, test accuracy)."""
    with written_whole(train_log_path(out)) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in log))


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good state is kept."""


# ---- one classifier, and many in one job


@dataclass
class TrainJob:
    """One classifier to train: its stores, its output and its resolved recipe."""

    data: list[Path]
    out: Path
    config: TrainConfig

    @property
    def name(self) -> str:
        return f"{'+'.join(p.stem for p in self.data)} (seed {self.config.seed})"


def check_config(config: TrainConfig) -> None:
    """Values no recipe could mean: refused before any work."""
    for value, choices, option in (
        (config.mix, MIXES, "--mix"),
        (config.optimizer, OPTIMIZERS, "--optimizer"),
        (config.schedule, SCHEDULES, "--schedule"),
        (config.augment, AUGMENTS, "--augment"),
        (config.init, INITS, "--init"),
    ):
        check_choice(value, choices, option)
    if config.steps < 1 or config.batch_size < 2:
        raise UserError(
            f"--steps must be at least 1 and --batch-size at least 2, got {config.steps} and {config.batch_size}"
        )
    if config.steps > MAX_STEPS:
        raise UserError(f"--steps must be at most {MAX_STEPS:,} (each step seeds its draws), got {config.steps}")
    if config.real_batch is not None and not 0 < config.real_batch < config.batch_size:
        raise UserError(
            f"--real-batch must be between 1 and --batch-size - 1, got {config.real_batch} of {config.batch_size}"
        )
    if config.image_size is not None and config.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {config.image_size}")
    if config.evals < 0 or config.warmup_steps < 0:
        raise UserError("--evals and --warmup-steps cannot be negative")
    if config.schedule == "warmup-cosine" and config.warmup_steps and config.warmup_steps >= config.steps:
        raise UserError(
            f"--warmup-steps {config.warmup_steps} is not shorter than --steps {config.steps}: the run would never "
            "reach its learning rate; give fewer warm-up steps (0: none)"
        )
    check_range(config.lr, "--lr", 0, open_low=True)
    check_range(config.weight_decay, "--weight-decay", 0)
    check_range(config.momentum, "--momentum", 0, 1)
    check_range(config.warmup_start, "the warm-up's start factor", 0, 1, open_low=True)
    check_range(config.min_lr, "the cosine's floor (min_lr)", 0, 1)
    check_range(config.label_smoothing, "label smoothing", 0, 1)
    check_range(config.step_gamma, "the step schedule's gamma", 0, open_low=True)


def settle(config: TrainConfig, testing: bool, given: Collection[str] = ()) -> tuple[TrainConfig, list[str]]:
    """The recipe as it will be applied, and a one-line note for each value that is changed or not used (`given`:
    the options the user set, noted when unused)."""
    notes, changes = [], {}
    if testing and config.evals > config.steps:
        notes.append(f"--evals {config.evals} is more than --steps {config.steps}: scoring after each step")
        changes["evals"] = config.steps
    if "evals" in given and not testing and config.evals:
        notes.append(f"--evals {config.evals} is not used: no --test store to score")
    warm_up = config.schedule == "warmup-cosine"  # a warm-up not shorter than the run is refused by check_config
    for option, used in (("warmup_steps", warm_up), ("step_every", config.schedule == "step")):
        if option in given and not used:
            flag = "--" + option.replace("_", "-")
            notes.append(f"{flag} is not used: recipe {config.recipe}'s schedule is {config.schedule}")
    return (replace(config, **changes) if changes else config), notes


def eval_steps_after(config: TrainConfig, step: int) -> int | None:
    """The first step after `step` at which the test store is scored (`evals` evenly spaced, the last at the final
    step), or None; computed, not listed, so that no count builds a collection of its size."""
    if not config.evals:
        return None
    k = step * config.evals // config.steps + 1  # the first k with ceil(k * steps / evals) > step
    return -(-k * config.steps // config.evals) if k <= config.evals else None


def next_save(config: TrainConfig, step: int, evaluating: bool, every: int | None = None) -> int:
    """The step after `step` at which a run saves its state and logs: every evaluation, every `every` steps and the
    last."""
    every = every or CHECKPOINT_EVERY
    candidates = [config.steps, (step // every + 1) * every]
    if evaluating and (scored := eval_steps_after(config, step)) is not None:
        candidates.append(scored)
    return min(candidates)


class Run:
    """One classifier in training: its model, optimiser, schedule, batches and log, advanced one step at a time."""

    def __init__(self, job: TrainJob, data: TrainingSet, device: torch.device, test: TestImages | None, resume: bool):
        self.job, self.config, self.data, self.device, self.test = job, job.config, data, device, test
        config = job.config
        self.mix = mix_of(data, config)
        self.arch = arch_for(data.image_size)
        torch.manual_seed(config.seed)  # the initial weights depend on the seed alone
        self.model = ResNet18(len(data.classes), self.arch, data.image_size)
        if config.init == "kaiming-normal":
            kaiming_normal_init(self.model)
        self.model.to(device, memory_format=memory_format(device)).train()
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.params = asdict(config)
        self.schedule = make_schedule(self.optimizer, config)
        self.step, self.log, self.evals, self.seconds, self.images_seen = 0, [], [], 0.0, 0
        self.state_file = train_state_path(job.out)
        if resume and self.state_file.exists():
            tensors, meta = load_checkpoint(self.state_file, device)
            check_same_options((meta.get("params"), meta.get("data")), (self.params, data.sources), self.state_file)
            if "schedule" not in meta:
                raise UserError(
                    f"{self.state_file} is a training state of an older synthkit without its schedule's state: "
                    "rerun with --overwrite"
                )
            self.model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
            _load_optimizer(self.optimizer, tensors, meta["optimizer"])
            self.schedule.load_state_dict(meta["schedule"])
            self.step, self.log, self.evals, self.seconds = meta["step"], meta["log"], meta["evals"], meta["seconds"]
            self.images_seen = meta["images_seen"]
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.evaluating = test is not None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.failed: str | None = None
        self._open_round()

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps or self.failed is not None

    def _open_round(self) -> None:
        """Draw the batches of the steps up to the next save, and reset the round's sums."""
        if self.step >= self.config.steps:
            return
        self.round_end = next_save(self.config, self.step, self.evaluating)
        self._batches = batch_images(
            self.data, list(step_rows(self.data, self.config, self.step, self.round_end)), self.device
        )
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen, self.busy = 0, 0.0

    def _context(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def advance(self) -> None:
        """One optimiser step (on this run's own CUDA stream); at a save point, log, evaluate and save."""
        started = time.perf_counter()
        self._step()
        self.busy += time.perf_counter() - started
        if self.step == self.round_end:
            with self._context():
                self._finish_round()

    def _step(self) -> None:
        with self._context():
            rows, images = next(self._batches)
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed * 2**32 + self.step)
            x = training_batch(images, generator, self.config.augment).contiguous(
                memory_format=memory_format(self.device)
            )
            y = self.data.labels[rows]
            with autocast(self.device):
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            self.loss_sum += loss.detach() * len(y)
            self.correct += (logits.argmax(1) == y).sum()
            self.seen += len(y)
            self.images_seen += len(y)
            self.step += 1

    def _finish_round(self) -> None:
        loss = (self.loss_sum / max(self.seen, 1)).item()  # waits for this run's stream
        elapsed = max(self.busy, 1e-9)  # this run's own stepping time, not that of the runs stepped in between
        if not math.isfinite(loss):
            kept = (
                f"the last good state (step {self.log[-1]['step']}) is kept in {self.state_file}"
                if self.log
                else "no state was saved"
            )
            self.failed = f"the loss became {loss} by step {self.step}; {kept}; lower --lr and rerun with --overwrite"
            return
        self.seconds += elapsed
        entry = {
            "step": self.step,
            "loss": round(loss, 5),
            "train_acc": round(self.correct.item() / max(self.seen, 1), 5),
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": round(self.seen / elapsed, 1),
            "seconds": round(elapsed, 2),
        }
        if self.evaluating and eval_steps_after(self.config, self.step - 1) == self.step:
            entry["test_acc"] = round(self.test.accuracy(self.model, self.data.classes, self.data.image_size), 5)
            self.evals.append({"step": self.step, "accuracy": entry["test_acc"]})
        self.log.append(entry)
        _write_log(self.job.out, self.log)
        if self.step < self.config.steps:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()} | _optimizer_tensors(self.optimizer)
            save_checkpoint(
                self.state_file,
                tensors,
                {
                    "kind": Kind.TRAIN_STATE,
                    "params": self.params,
                    "data": self.data.sources,
                    "step": self.step,
                    "images_seen": self.images_seen,
                    "log": self.log,
                    "evals": self.evals,
                    "seconds": self.seconds,
                    "optimizer": self.optimizer.state_dict()["param_groups"],
                    "schedule": self.schedule.state_dict(),
                },
            )
            self._open_round()
        else:
            self._write_classifier()

    def _write_classifier(self) -> None:
        config, data = self.config, self.data
        meta = provenance(Kind.CLASSIFIER, self.params, data.sources)
        meta.update(
            {
                "arch": self.arch,
                "image_size": data.image_size,
                "streamed": data.streamed,
                "classes": data.classes,
                "recipe": config.recipe,
                "steps": self.step,  # as run, step by step
                "images_seen": self.images_seen,  # as drawn, batch by batch
                "batch": composition(data, config),
                "final_loss": self.log[-1]["loss"],
                "final_train_acc": self.log[-1]["train_acc"],
                "seconds": round(self.seconds, 1),
                "device": str(self.device),
                "versions": {"synthkit": __version__, "torch": torch.__version__},
            }
        )
        if self.evals:
            best = max(self.evals, key=lambda e: e["accuracy"])
            meta.update(
                {
                    "test": {"path": str(self.test.path), "fingerprint": self.test.fingerprint},
                    "evals": self.evals,
                    "final_test_acc": self.evals[-1]["accuracy"],
                    "best_test_acc": best["accuracy"],
                    "best_test_step": best["step"],
                }
            )
        save_checkpoint(self.job.out, self.model.state_dict(), meta)
        self.state_file.unlink(missing_ok=True)
        self.meta = meta


def _mixed(stores: Sequence[Path], config: TrainConfig) -> bool:
    """Whether a row's batches are mixed (real and synthetic halves), read from its stores' kinds."""
    if config.mix == "concat":
        return False
    real = []
    for path in stores:
        with Store(path) as store:
            real.append(store.meta.get("kind") == Kind.REAL)
    return config.mix == "balanced" or (any(real) and not all(real))


def expand_jobs(
    data: Sequence[Sequence[Path]],
    out: str,
    seeds: Sequence[int],
    config: TrainConfig,
    say: Callable[[str], None] | None = None,
) -> list[TrainJob]:
    """One job per (stores, seed): `out` names each with {data} (the store names joined by '+') and {seed}, which it
    must hold when there is more than one classifier. --real-batch is dropped, with a note, from unmixed rows."""
    if not str(out).strip():
        raise UserError("an empty output path was given: name the file to write")
    seeds = list(seeds) or [config.seed]
    many = len(data) > 1 or len(seeds) > 1
    if many and not (("{data}" in out or len(data) == 1) and ("{seed}" in out or len(seeds) == 1)):
        raise UserError(
            f"--out {out} names one file for {len(data) * len(seeds)} classifiers: put {{data}} and {{seed}} in it, "
            "e.g. models/resnet18-{data}-s{seed}.safetensors"
        )
    jobs = []
    for stores in data:
        row = config
        if config.real_batch is not None and not _mixed(stores, config):
            (say or print)(
                f"--real-batch {config.real_batch} is not used for {'+'.join(Path(p).stem for p in stores)}: "
                "its stores are not mixed real and synthetic"
            )
            row = replace(config, real_batch=None)
        for seed in seeds:
            name = "+".join(Path(p).stem for p in stores)
            jobs.append(
                TrainJob(
                    list(map(Path, stores)),
                    Path(out.replace("{data}", name).replace("{seed}", str(seed))),
                    TrainConfig(**(asdict(row) | {"seed": seed})),
                )
            )
    names: dict[Path, TrainJob] = {}
    for job in jobs:
        for path in (job.out, train_state_path(job.out), train_log_path(job.out)):
            other = names.setdefault(path.absolute(), job)
            if other is not job:
                raise UserError(_collision(out, other, job, path))
    return jobs


def _collision(out: str, first: TrainJob, second: TrainJob, path: Path) -> str:
    """Why two classifiers of one job would write one file: the real cause, in one line."""
    if first.data != second.data and "+".join(p.stem for p in first.data) == "+".join(p.stem for p in second.data):
        return (
            f"stores {','.join(map(str, first.data))} and {','.join(map(str, second.data))} have the same names, so "
            f"--out {out} names both classifiers' {path}: rename or copy one of the stores"
        )
    if path != first.out and path != second.out:
        return f"{first.out} and {second.out} would share the file beside them {path}: choose other --out names"
    return f"--out {out} gives two classifiers the same file {path}: put {{data}} and {{seed}} in it"


def train_many(
    jobs: Sequence[TrainJob],
    device: str | None = None,
    test: Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    memory_limit: str | None = None,
    notes: Sequence[str] = (),
    say: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train several classifiers in one process, each with its own data order, augmentation draws, optimiser,
    state file and checkpoint, and each equal to its run alone. They advance a step each in turn (on CUDA, each on
    its own stream, so their kernels can overlap). A classifier whose loss diverges stops alone; the others finish,
    and the job then fails naming it. Without a `test` store nothing is scored and each records evals 0. Returns
    each classifier's metadata."""
    if test is None:
        jobs = [TrainJob(job.data, job.out, replace(job.config, evals=0)) for job in jobs]
    inputs = [*(p for job in jobs for p in job.data), test]
    for job in jobs:
        check_config(job.config)
        check_destination(job.out, inputs)
    with contextlib.ExitStack() as locks:
        for job in jobs:
            locks.enter_context(writer_lock(job.out))
        todo = [
            job
            for job in jobs
            if not check_output(job.out, [train_state_path(job.out)], overwrite, resume, inputs=inputs)
        ]
        for job in jobs:
            if job not in todo:  # finished: kept by --resume only if it was made as asked now
                _check_finished(job)
        if not todo:
            return [read_meta(job.out) for job in jobs]
        dev = job_device(device)
        budget = memory_budget(dev, memory_limit)
        for job in todo:  # a batch and ResNet-18's activations for it must fit, whatever streams
            size = job.config.image_size or _store_size(job.data[0])
            per_image = (
                4 * image_bytes(1, size) * (ACTIVATIONS_CIFAR if size <= CIFAR_STEM_MAX else ACTIVATIONS_IMAGENET)
            )
            check_fits(
                job.config.batch_size * per_image,
                device_memory(dev),
                f"a batch of {job.config.batch_size} images at --image-size {size} with ResNet-18's activations "
                f"(about {human(per_image)} an image)",
            )
        test_images = TestImages(test, dev, budget // 4) if test is not None else None
        keys = {
            job.out: (
                tuple(job.data),
                job.config.per_class,
                job.config.seed if job.config.per_class else None,
                job.config.image_size,
            )
            for job in todo
        }
        share = (budget - (budget // 4 if test is not None else 0)) // max(1, len(set(keys.values())))
        sets: dict[tuple, TrainingSet] = {}
        for job in todo:
            if keys[job.out] not in sets:
                sets[keys[job.out]] = load_stores(
                    job.data,
                    dev,
                    job.config.per_class,
                    job.config.seed,
                    image_size=job.config.image_size,
                    memory_limit=share,
                )
                data = sets[keys[job.out]]
                if data.streamed:
                    console.print(
                        f"streaming: {len(data)} images at {data.image_size} px take "
                        f"{image_bytes(len(data), data.image_size) / 2**20:.2f} MiB, over the memory limit of "
                        f"{share / 2**20:.2f} MiB; reading them from the stores in windows",
                        highlight=False,
                    )
        if test_images is not None:  # a test store of other classes is refused before any training
            for data in sets.values():
                class_mapping(test_images.classes, data.classes, f"test store {test}")
        for line in notes:  # after every check: a refused job says only why
            (say or print)(line)
        for job in todo:
            job.out.parent.mkdir(parents=True, exist_ok=True)
        runs = [Run(job, sets[keys[job.out]], dev, test_images, resume) for job in todo]
        if test_images is None:  # said once every check has passed, before the first step
            console.print("no test store given (--test): nothing is scored during training, evals 0", highlight=False)
        if dev.type == "cuda":
            for run in runs:  # the training sets were written on the default stream
                run.stream.wait_stream(torch.cuda.current_stream(dev))
        _advance_all(runs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        failed = [run for run in runs if run.failed]
        if failed:
            finished = [str(run.job.out) for run in runs if not run.failed]
            raise TrainingDiverged(
                "; ".join(f"{run.job.name}: {run.failed}" for run in failed)
                + (f" (finished: {', '.join(finished)})" if finished and len(runs) > 1 else "")
            )
        return [read_meta(job.out) for job in jobs]


def _check_finished(job: TrainJob) -> None:
    meta = read_meta(job.out)
    made = (meta.get("params"), [s.get("fingerprint") for s in meta.get("sources", [])])
    asked = (asdict(job.config), [_fingerprint(p) for p in job.data])
    if made != asked:
        raise UserError(
            f"{job.out} was trained with other settings or data than asked now: pass --overwrite to train it "
            "again, or give the settings it was made with (synthkit info shows them)"
        )


def _fingerprint(path: Path) -> str:
    with Store(path) as store:
        return store.fingerprint


def _store_size(path: Path) -> int:
    with Store(path) as store:
        return store.image_shape[0]


def _advance_all(runs: list[Run]) -> None:
    """Step every unfinished run in turn until all are done, with a progress bar per run (one in all beyond 8)."""
    with progress("loss", "acc", "speed") as bar:
        many = len(runs) > 8
        tasks = (
            [
                bar.add_task(
                    "train",
                    total=sum(r.config.steps for r in runs),
                    completed=sum(r.step for r in runs),
                    loss="",
                    acc="",
                    speed="",
                )
            ]
            if many
            else [
                bar.add_task(r.job.name, total=r.config.steps, completed=r.step, loss="", acc="", speed="")
                for r in runs
            ]
        )
        while True:
            active = [r for r in runs if not r.done]
            if not active:
                break
            for run in active:
                logged = len(run.log)
                run.advance()
                if many:
                    bar.advance(tasks[0])
                    continue
                task = tasks[runs.index(run)]
                if len(run.log) > logged:
                    last = run.log[-1]
                    acc = (
                        f"test {100 * last['test_acc']:.1f}%"
                        if "test_acc" in last
                        else f"train {100 * last['train_acc']:.1f}%"
                    )
                    bar.update(
                        task,
                        completed=run.step,
                        loss=f"loss {last['loss']:.3f}",
                        acc=acc,
                        speed=f"{last['img_per_s']:.0f} img/s",
                    )
                elif run.step % 20 == 0:
                    bar.update(task, completed=run.step)


def train(
    data_paths: Sequence[Path],
    out: Path,
    config: TrainConfig | None = None,
    device: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    memory_limit: str | None = None,
    test: Path | None = None,
) -> dict[str, Any]:
    """Train one ResNet-18 on the stores, write the safetensors checkpoint, and return its metadata. Images are
    trained at config.image_size (default: the first store's); a set larger than the device's memory budget
    (device.memory_budget, or `memory_limit` such as '2GB') is streamed from the stores in windows. With a real
    `test` store, it is scored config.evals times during training."""
    job = TrainJob([Path(p) for p in data_paths], Path(out), config or TrainConfig())
    return train_many([job], device=device, test=test, overwrite=overwrite, resume=resume, memory_limit=memory_limit)[0]
