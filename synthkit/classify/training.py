"""`synthkit train`: classifiers (ResNet-18, the study's, or another of classifiers.CLASSIFIERS) on any mix of real and
synthetic stores, under a named recipe (config.RECIPES).

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
import functools
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

from ..core.config import INITS, MIXES, SEED, TrainConfig, check_choice, lookup, recorded_params
from ..core.device import autocast, device_memory, image_bytes, job_device, memory_budget, memory_format
from ..core.errors import UserError
from ..core.jobs import Asked, check_destination, check_fits, check_output, check_range, check_same_options
from ..core.launch import ItemShard, shard_items
from ..core.locks import writer_lock
from ..core.memory import human
from ..core.meta import Kind, provenance
from ..core.outputs import written_whole
from ..core.paths import train_log_path, train_state_path
from ..core.progress import console, progress
from ..core.version import __version__
from ..io.checkpoint import load_checkpoint, read_meta, save_checkpoint
from ..io.store import Store, balanced_subset, store_fingerprint
from .augment import AUGMENTATIONS, training_batch
from .classifiers import CLASSIFIERS, arch_spec, stem_for
from .evaluation import TestImages
from .model import Classifier, build_classifier, class_mapping, kaiming_normal_init, resize_images

CHECKPOINT_EVERY = 1000  # steps between saved states, besides every evaluation
MAX_STEPS = 2**32 - 1  # a step's draws are seeded by seed * 2**32 + step: a longer run would reuse the next seed's
DROPOUT_SALT = 0x9E3779B97F4A7C15  # keeps the global generator's seed of a step apart from its augmentation's


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


# ---- the optimiser and its schedule, looked up by name in tables (a recipe names them)


def _warmup_cosine(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The official schedule (di/train_net.py:333-336): ChainedScheduler(LinearLR(start_factor, warm-up steps),
    CosineAnnealingLR(T_max=steps, eta_min=min_lr * lr))."""
    sched = torch.optim.lr_scheduler
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


# SGD with momentum (the official evaluation) and Adam (the original study's, torch's default betas)
OPTIMIZER_TABLE: dict[str, Callable[[Any, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
}
# torch's own schedulers, stepped once per optimiser step; step is the study's StepLR(step_every, step_gamma)
SCHEDULE_TABLE: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], torch.optim.lr_scheduler.LRScheduler]] = {
    "warmup-cosine": _warmup_cosine,
    "step": lambda o, c: torch.optim.lr_scheduler.StepLR(o, step_size=max(1, c.step_every), gamma=c.step_gamma),
}


def make_optimizer(parameters, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser (OPTIMIZER_TABLE); an unknown name is an error."""
    return lookup(OPTIMIZER_TABLE, config.optimizer, "--optimizer")(parameters, config)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's learning-rate schedule (SCHEDULE_TABLE); an unknown name is an error."""
    return lookup(SCHEDULE_TABLE, config.schedule, "--schedule")(optimizer, config)


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
        (config.arch, tuple(CLASSIFIERS), "--arch"),
        (config.optimizer, tuple(OPTIMIZER_TABLE), "--optimizer"),
        (config.schedule, tuple(SCHEDULE_TABLE), "--schedule"),
        (config.augment, tuple(AUGMENTATIONS), "--augment"),
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


def shown_settings(config: TrainConfig, data: Sequence[Sequence[Path]] = ()) -> list[tuple[str, object, str]]:
    """What `train --show` prints: config.describe(), with the values a job resolves at its start said as resolved
    (where each comes from after a colon): image_size (None: each row's first store's own size) and real_batch
    (None: half the batch, in mixed rows only) read from the rows' stores `data` when given, else said in words; and
    per_class (None: every image)."""
    rows = []
    for key, value, source in config.describe():
        if key == "image_size" and value is None:
            value, source = _shown_image_size(data, source)
        elif key == "real_batch" and value is None:
            value, source = _shown_real_batch(config, data, source)
        elif key == "per_class" and value is None:
            value, source = "all", f"{source}: every image of each store"
        rows.append((key, value, source))
    return rows


def _shown_image_size(data: Sequence[Sequence[Path]], source: str) -> tuple[object, str]:
    """image_size left to the data: each row's first store's own size, or how it will be found without --data."""
    if not data:
        return "(data)", f"{source}: each classifier's first store's own size (give --data to read it)"
    sizes = {"+".join(Path(p).stem for p in row): _store_size(row[0]) for row in data}
    if len(set(sizes.values())) == 1:
        return next(iter(sizes.values())), f"{source}: the first store's own size ({Path(data[0][0]).name})"
    return "/".join(map(str, sizes.values())), f"{source}: each row's first store's own size (" + ", ".join(
        f"{name} {size}" for name, size in sizes.items()
    ) + ")"


def _shown_real_batch(config: TrainConfig, data: Sequence[Sequence[Path]], source: str) -> tuple[object, str]:
    """real_batch left to the recipe: half the batch, for the rows that mix real and synthetic stores only."""
    half = f"{source}: half of batch_size"
    if not data:
        return config.real_share, f"{half}, in rows that mix real and synthetic stores (others draw from the union)"
    mixed = ["+".join(Path(p).stem for p in row) for row in data if _mixed(row, config)]
    if not mixed:
        return "unused", f"{source}: no row mixes real and synthetic stores (each draws from its stores' union)"
    return config.real_share, f"{half}, in {', '.join(mixed)} (the rows that mix real and synthetic stores)"


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


NO_TEST = "no test store given (--test): nothing is scored during training, evals 0"


def settle_test(
    test: Path | None, default: bool, data: Sequence[Sequence[Path]], config: TrainConfig
) -> tuple[Path | None, list[str], str | None]:
    """The test store a job scores, a note for a store it leaves unused, and the line said when nothing is scored
    (None: nothing to say). With evals 0 no test store is read; the default one (`default`: data/test.h5, not named
    by --test) applies only when its classes are those of every classifier's stores, else a note says that nothing
    is scored; a named store of other classes is refused (train_many), before any training."""
    if not config.evals:
        return None, [f"--test {test} is not used: evals 0 scores nothing"] if test and not default else [], None
    if test is None or not default:
        return test, [], NO_TEST
    with Store(test) as store:
        classes = store.classes
    for row in data:
        with Store(row[0]) as store:
            mine = store.classes
        if sorted(mine) != sorted(classes):
            return (
                None,
                [
                    f"the default test store {test} has classes {', '.join(classes)}, not {', '.join(mine)}: it is not "
                    "used and nothing is scored during training, evals 0 (--test STORE scores another)"
                ],
                None,
            )
    return test, [], NO_TEST


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


def build_model(config: TrainConfig, classes: int, image_size: int, device: torch.device) -> Classifier:
    """A fresh classifier of the recipe's architecture and initialisation on `device`, in training mode; its weights
    depend on the seed alone."""
    torch.manual_seed(config.seed)
    model = build_classifier(config.arch, classes, image_size)
    if config.init == "kaiming-normal":
        kaiming_normal_init(model)
    return model.to(device, memory_format=memory_format(device)).train()


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


@dataclass
class TrainState:
    """Where a run stands: its step, images drawn, log, evaluations and seconds; saved beside the classifier with the
    model's, optimiser's and schedule's state so that a resumed run ends with an uninterrupted one's weights."""

    step: int = 0
    images_seen: int = 0
    log: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: Path, model: Classifier, optimizer, schedule, params: dict, sources: list[dict]) -> None:
        """Write the state file (whole or not at all)."""
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | _optimizer_tensors(optimizer)
        save_checkpoint(
            path,
            tensors,
            {"kind": Kind.TRAIN_STATE, "params": params, "data": sources, **asdict(self)}
            | {"optimizer": optimizer.state_dict()["param_groups"], "schedule": schedule.state_dict()},
        )

    @classmethod
    def load(
        cls, path: Path, model: Classifier, optimizer, schedule, params: dict, sources: list[dict], device: torch.device
    ) -> TrainState:
        """Restore model, optimiser and schedule from a state file made with the same options and data."""
        tensors, meta = load_checkpoint(path, device)
        check_same_options((recorded_params(meta.get("params")), meta.get("data")), (params, sources), path)
        if "schedule" not in meta:
            raise UserError(
                f"{path} is a training state of an older synthkit without its schedule's state: rerun with --overwrite"
            )
        model.load_weights({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(optimizer, tensors, meta["optimizer"])
        schedule.load_state_dict(meta["schedule"])
        return cls(meta["step"], meta["images_seen"], meta["log"], meta["evals"], meta["seconds"])


class RoundMeter:
    """The sums of the steps between two saves, kept on the device (read once, at the save): loss, right answers,
    images, and this run's own stepping time."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen, self.busy = 0, 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

    def loss(self) -> float:
        """The round's mean loss (waits for the device)."""
        return (self.loss_sum / max(self.seen, 1)).item()

    def entry(self, step: int, loss: float, lr: float) -> dict[str, Any]:
        """The round's log line."""
        elapsed = max(self.busy, 1e-9)  # this run's own stepping time, not that of the runs stepped in between
        return {
            "step": step,
            "loss": round(loss, 5),
            "train_acc": round(self.correct.item() / max(self.seen, 1), 5),
            "lr": lr,
            "img_per_s": round(self.seen / elapsed, 1),
            "seconds": round(elapsed, 2),
        }


def classifier_record(
    config: TrainConfig,
    data: TrainingSet,
    state: TrainState,
    stem: str,
    device: torch.device,
    test: TestImages | None,
) -> dict[str, Any]:
    """The metadata a finished classifier carries: how it was made (recipe, data, steps as run), its architecture
    and input size, and its evaluations during training."""
    meta = provenance(Kind.CLASSIFIER, asdict(config), data.sources)
    meta.update(
        {
            "arch": config.arch,
            "stem": stem,
            "image_size": data.image_size,
            "streamed": data.streamed,
            "classes": data.classes,
            "recipe": config.recipe,
            "steps": state.step,  # as run, step by step
            "images_seen": state.images_seen,  # as drawn, batch by batch
            "batch": composition(data, config),
            "final_loss": state.log[-1]["loss"],
            "final_train_acc": state.log[-1]["train_acc"],
            "seconds": round(state.seconds, 1),
            "device": str(device),
            "versions": {"synthkit": __version__, "torch": torch.__version__},
        }
    )
    if state.evals and test is not None:
        best = max(state.evals, key=lambda e: e["accuracy"])
        meta.update(
            {
                "test": {"path": str(test.path), "fingerprint": test.fingerprint},
                "evals": state.evals,
                "final_test_acc": state.evals[-1]["accuracy"],
                "best_test_acc": best["accuracy"],
                "best_test_step": best["step"],
            }
        )
    return meta


class Run:
    """One classifier in training, advanced one step at a time: it draws each round's batches, steps the model,
    and at each save point logs, evaluates and saves its TrainState, or at the end writes the classifier."""

    def __init__(self, job: TrainJob, data: TrainingSet, device: torch.device, test: TestImages | None, resume: bool):
        self.job, self.config, self.data, self.device, self.test = job, job.config, data, device, test
        self.model = build_model(job.config, len(data.classes), data.image_size, device)
        self.optimizer = make_optimizer(self.model.parameters(), job.config)
        self.schedule = make_schedule(self.optimizer, job.config)
        self.params = asdict(job.config)
        self.state_file = train_state_path(job.out)
        self.state = (
            TrainState.load(
                self.state_file, self.model, self.optimizer, self.schedule, self.params, data.sources, device
            )
            if resume and self.state_file.exists()
            else TrainState()
        )
        self.forward = torch.compile(self.model) if job.config.compile else self.model
        self.evaluating = test is not None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.failed: str | None = None
        self._open_round()

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def log(self) -> list[dict]:
        return self.state.log

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps or self.failed is not None

    def _open_round(self) -> None:
        """Draw the batches of the steps up to the next save, and start the round's meter."""
        if self.step >= self.config.steps:
            return
        self.round_end = next_save(self.config, self.step, self.evaluating)
        self._batches = batch_images(
            self.data, list(step_rows(self.data, self.config, self.step, self.round_end)), self.device
        )
        self.meter = RoundMeter(self.device)

    def _context(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def advance(self) -> None:
        """One optimiser step (on this run's own CUDA stream); at a save point, log, evaluate and save."""
        started = time.perf_counter()
        self._step()
        self.meter.busy += time.perf_counter() - started
        if self.step == self.round_end:
            with self._context():
                self._finish_round()

    def _step(self) -> None:
        with self._context():
            rows, images = next(self._batches)
            key = self.config.seed * 2**32 + self.step
            generator = torch.Generator(device=self.device).manual_seed(key)
            torch.manual_seed(key ^ DROPOUT_SALT)  # dropout's draws (torch's global generator) are the step's own too
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
            self.meter.add(loss, logits, y)
            self.state.images_seen += len(y)
            self.state.step += 1

    def _finish_round(self) -> None:
        loss = self.meter.loss()  # waits for this run's stream
        if not math.isfinite(loss):
            kept = (
                f"the last good state (step {self.log[-1]['step']}) is kept in {self.state_file}"
                if self.log
                else "no state was saved"
            )
            self.failed = f"the loss became {loss} by step {self.step}; {kept}; lower --lr and rerun with --overwrite"
            return
        self.state.seconds += max(self.meter.busy, 1e-9)
        entry = self.meter.entry(self.step, loss, self.optimizer.param_groups[0]["lr"])
        if self.evaluating and eval_steps_after(self.config, self.step - 1) == self.step:
            entry["test_acc"] = round(self.test.accuracy(self.model, self.data.classes, self.data.image_size), 5)
            self.state.evals.append({"step": self.step, "accuracy": entry["test_acc"]})
        self.log.append(entry)
        _write_log(self.job.out, self.log)
        if self.step < self.config.steps:
            self.state.save(self.state_file, self.model, self.optimizer, self.schedule, self.params, self.data.sources)
            self._open_round()
            return
        meta = classifier_record(self.config, self.data, self.state, self.model.stem, self.device, self.test)
        save_checkpoint(self.job.out, self.model.state_dict(), meta)
        self.state_file.unlink(missing_ok=True)


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
    untested: str | None = NO_TEST,
) -> list[dict[str, Any]]:
    """Train several classifiers in one process, each with its own data order, augmentation draws, optimiser,
    state file and checkpoint, and each equal to its run alone. They advance a step each in turn (on CUDA, each on
    its own stream, so their kernels can overlap). A classifier whose loss diverges stops alone; the others finish,
    and the job then fails naming it. Without a `test` store nothing is scored, each records evals 0, and the line
    `untested` says so (None: nothing said). Returns each classifier's metadata."""
    if test is None:
        jobs = [TrainJob(job.data, job.out, replace(job.config, evals=0)) for job in jobs]
    inputs = [*(p for job in jobs for p in job.data), test]
    for job in jobs:
        check_config(job.config)
        check_destination(job.out, inputs)
    with contextlib.ExitStack() as locks:
        for job in jobs:
            locks.enter_context(writer_lock(job.out))
        todo = _unfinished(jobs, inputs, test, overwrite, resume)
        if not todo:
            return [read_meta(job.out) for job in jobs]
        dev = job_device(device)
        budget = memory_budget(dev, memory_limit)
        _check_batches_fit(todo, dev)
        test_images = TestImages(test, dev, budget // 4) if test is not None else None
        keys = _set_keys(todo)
        share = (budget - (budget // 4 if test is not None else 0)) // max(1, len(set(keys.values())))
        sets = _load_sets(todo, keys, dev, share)
        if test_images is not None:  # a test store of other classes is refused before any training
            for data in sets.values():
                class_mapping(test_images.classes, data.classes, f"test store {test}")
        for line in notes:  # after every check: a refused job says only why
            (say or print)(line)
        for job in todo:
            job.out.parent.mkdir(parents=True, exist_ok=True)
        runs = [Run(job, sets[keys[job.out]], dev, test_images, resume) for job in todo]
        if test_images is None and untested:  # said once every check has passed, before the first step
            console.print(untested, highlight=False)
        _train_runs(runs, dev)
        _check_diverged(runs)
        return [read_meta(job.out) for job in jobs]


def _unfinished(
    jobs: Sequence[TrainJob], inputs: Sequence[Path | None], test: Path | None, overwrite: bool, resume: bool
) -> list[TrainJob]:
    """The jobs still to train: a finished classifier made as its job asks is kept by --resume (jobs.check_output)."""
    return [
        job
        for job in jobs
        if not check_output(
            job.out,
            [train_state_path(job.out)],
            overwrite,
            resume,
            inputs=inputs,
            asked=functools.partial(_asked, job, test),
        )
    ]


def _check_batches_fit(todo: Sequence[TrainJob], dev: torch.device) -> None:
    """Refuse, before any work, a job whose batch and the network's activations for it exceed the device's memory,
    whatever streams."""
    for job in todo:
        size = job.config.image_size or _store_size(job.data[0])
        cifar, imagenet = arch_spec(job.config.arch).activations
        per_image = 4 * image_bytes(1, size) * (cifar if stem_for(size) == "cifar" else imagenet)
        check_fits(
            job.config.batch_size * per_image,
            device_memory(dev),
            f"a batch of {job.config.batch_size} images at --image-size {size} with {job.config.arch}'s "
            f"activations (about {human(per_image)} an image)",
        )


def _set_keys(todo: Sequence[TrainJob]) -> dict[Path, tuple]:
    """Each classifier's training set, named by what it is made of (stores, per-class draw, image size), so that
    classifiers of one set share it on the device."""
    return {
        job.out: (
            tuple(job.data),
            job.config.per_class,
            job.config.seed if job.config.per_class else None,
            job.config.image_size,
        )
        for job in todo
    }


def _load_sets(
    todo: Sequence[TrainJob], keys: dict[Path, tuple], dev: torch.device, share: int
) -> dict[tuple, TrainingSet]:
    """Load every distinct training set once, within its `share` of the memory budget; one over it is streamed
    from its stores, and said so."""
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
    return sets


def _train_runs(runs: list[Run], dev: torch.device) -> None:
    """Step every run to its end; on CUDA each run's stream first waits for the training sets (written on the
    default stream), and the device is synchronised at the end."""
    if dev.type == "cuda":
        for run in runs:  # the training sets were written on the default stream
            run.stream.wait_stream(torch.cuda.current_stream(dev))
    _advance_all(runs)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _check_diverged(runs: list[Run]) -> None:
    """Fail the job naming every run whose loss diverged (and those that finished), once all have stopped."""
    failed = [run for run in runs if run.failed]
    if failed:
        finished = [str(run.job.out) for run in runs if not run.failed]
        raise TrainingDiverged(
            "; ".join(f"{run.job.name}: {run.failed}" for run in failed)
            + (f" (finished: {', '.join(finished)})" if finished and len(runs) > 1 else "")
        )


def train_sharded(
    data: Sequence[Sequence[Path]],
    out: str,
    seeds: Sequence[int],
    config: TrainConfig,
    test: Path | None = None,
    given: Collection[str] = (),
    shard: str = "",
    device: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    memory_limit: str | None = None,
    say: Callable[[str], None] = print,
    test_default: bool = False,
) -> tuple[ItemShard, list[dict[str, Any]]]:
    """`synthkit train` once its options are parsed: the test store settled (settle_test; `test_default`: `test` is
    the default store, not named by --test), the recipe settled (a note for each value changed or unused; `given`:
    the options the user set), a classifier per stores and seed, and this process's shard of them
    (launch.shard_items) trained in one job. Returns the shard and each of its classifiers' metadata."""
    test, test_notes, untested = settle_test(test, test_default, data, config)
    config, notes = settle(config, testing=test is not None, given=given)
    notes = test_notes + notes
    jobs = expand_jobs(data, out, seeds, config, say=notes.append)
    mine = shard_items(jobs, shard, device)
    if mine.shard and not mine.items:
        say(f"shard {mine.shard} has no classifiers to train: the job has {mine.total}, fewer than its shards")
        return mine, []
    metas = train_many(
        mine.items,
        device=mine.device,
        test=test,
        overwrite=overwrite,
        resume=resume,
        memory_limit=memory_limit,
        notes=notes,
        say=say,
        untested=untested,
    )
    return mine, metas


def _asked(job: TrainJob, test: Path | None) -> Asked:
    """What `job` asks for, as a finished classifier's record holds how it was made (jobs.Asked): every value of its
    recipe, its stores' fingerprints, and the test store's when it scores one."""
    inputs = [(str(p), store_fingerprint(p)) for p in job.data]
    if test is not None and job.config.evals:
        inputs.append((str(test), store_fingerprint(test)))
    return Asked(asdict(job.config), inputs, _classifier_made)


def _classifier_made(path: Path) -> dict[str, Any]:
    """A classifier's record as jobs.Asked compares it: its params as TrainConfig names them now, its stores and the
    test store it was scored on."""
    meta = read_meta(path)
    test = [meta["test"]] if isinstance(meta.get("test"), dict) else []
    return {"params": recorded_params(meta.get("params")), "sources": [*(meta.get("sources") or []), *test]}


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
    """Train one classifier (config.arch) on the stores, write the safetensors checkpoint, and return its metadata.
    Images are trained at config.image_size (default: the first store's); a set larger than the device's memory budget
    (device.memory_budget, or `memory_limit` such as '2GB') is streamed from the stores in windows. With a real
    `test` store, it is scored config.evals times during training."""
    job = TrainJob([Path(p) for p in data_paths], Path(out), config or TrainConfig())
    return train_many([job], device=device, test=test, overwrite=overwrite, resume=resume, memory_limit=memory_limit)[0]
