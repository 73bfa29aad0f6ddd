"""`synthkit train`: ResNet-18 on any mix of real and synthetic stores, of any classes and image size.

Like airbench, the whole training set sits on the device as one uint8 tensor and every batch is
augmented with tensor operations (random crop with 4-pixel padding and flip up to 64 px,
random-resized-crop and flip above): no workers, no PIL. A set larger than the device's memory
budget is read from the stores in windows of batches instead, giving the same batches. Each epoch
draws its order and augmentation from its own seeded generator, so a run resumed at an epoch
boundary ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .config import MIXES, TrainConfig
from .device import autocast, configure_threads, image_bytes, memory_budget, memory_format, pick_device
from .errors import UserError
from .jobs import check_output, check_same_options
from .locks import locked_output
from .meta import provenance
from .model import CIFAR_STEM_MAX, ResNet18, arch_for, class_mapping, resize_images
from .progress import console, progress
from .store import Store, balanced_subset

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


def load_stores(paths: Sequence[Path], device: torch.device, per_class: int | None = None, seed: int = 0,
                classes: Sequence[str] | None = None, image_size: int | None = None,
                memory_limit: int | None = None) -> TrainingSet:
    """The stores (optionally a seeded class-balanced subset of each) as one training set at `image_size` (default:
    the first store's size). Classes must agree by name. Held on the device when it fits `memory_limit` bytes."""
    if not paths:
        raise UserError("no stores given: pass --data NAME[,NAME...]")
    labels, is_real, sources, parts = [], [], [], []
    for path in paths:
        with Store(path) as store:
            if len(store) == 0:
                raise UserError(f"store {path} has no images")
            classes = list(classes or store.classes)
            image_size = image_size or store.image_shape[0]
            mapping = class_mapping(store.classes, classes, f"store {path}")
            rows = np.arange(len(store)) if per_class is None else balanced_subset(store.labels, per_class, seed, len(store.classes))
            store_labels = mapping[store.labels[rows]]
            kind = store.meta.get("kind", "unknown")
            sources.append({"path": str(path), "kind": kind, "count": len(store_labels), "fingerprint": store.fingerprint,
                            "image_size": store.image_shape[0]})
        parts.append((Path(path), rows))
        labels.append(torch.from_numpy(np.asarray(store_labels, dtype=np.int64)))
        is_real.append(torch.full((len(store_labels),), kind == "real", dtype=torch.bool))
    data = TrainingSet(torch.cat(labels).to(device), torch.cat(is_real).to(device), classes, image_size, sources,
                       parts=parts)
    if memory_limit is None or image_bytes(len(data), image_size) <= memory_limit:
        data.images = data.read(np.arange(len(data)), device).contiguous()
    return data


def batch_images(data: TrainingSet, batches: Sequence[torch.Tensor], memory_limit: int | None,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch's rows and uint8 images. A streamed set is read in windows of consecutive batches whose rows fit
    `memory_limit`, so the batches, and so the trained weights, are the same as with the set on the device."""
    if not data.streamed:
        for rows in batches:
            yield rows, data.images[rows]
        return
    per_row = image_bytes(1, data.image_size)
    window: list[torch.Tensor] = []
    for k, rows in enumerate(batches):
        window.append(rows)
        rows_held = sum(len(r) for r in window) + (len(batches[k + 1]) if k + 1 < len(batches) else 0)
        if k + 1 < len(batches) and rows_held * per_row <= (memory_limit or 0):
            continue
        wanted = torch.unique(torch.cat(window))
        block = data.read(wanted.cpu().numpy(), device)
        position = torch.full((len(data),), -1, dtype=torch.long, device=rows.device)
        position[wanted] = torch.arange(len(wanted), device=rows.device)
        for r in window:
            yield r, block[position[r].to(block.device)]
        window = []


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of a uint8 batch, all on the device."""
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    crops = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
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


def training_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uint8 batch augmented as its size calls for, in [0, 1]: crop with 4-pixel padding and flip up to 64 px
    (CIFAR's recipe), random-resized-crop and flip above."""
    if images.shape[-1] <= CIFAR_STEM_MAX:
        return augment(images, generator).float().div_(255)
    return random_resized_crop(images.float().div_(255), generator)


def epoch_batches(data: TrainingSet, config: TrainConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Row indices of every batch of one epoch: a shuffled pass (concat), or half real half synthetic (balanced)."""
    dev = data.labels.device
    if config.mix == "concat":
        batch = min(config.batch_size, len(data))
        order = torch.randperm(len(data), generator=generator, device=dev)
        return list(order[: len(data) // batch * batch].view(-1, batch))
    check_mix(data, config)
    real = torch.nonzero(data.is_real).flatten()
    synthetic = torch.nonzero(~data.is_real).flatten()
    half = min(config.batch_size // 2, len(real), len(synthetic))
    steps = max(len(real), len(synthetic)) // half

    def cycled(rows: torch.Tensor) -> torch.Tensor:
        needed = steps * half
        perms = [rows[torch.randperm(len(rows), generator=generator, device=dev)] for _ in range(math.ceil(needed / len(rows)))]
        return torch.cat(perms)[:needed].view(steps, half)

    return list(torch.cat([cycled(real), cycled(synthetic)], dim=1))


def check_mix(data: TrainingSet, config: TrainConfig) -> None:
    """--mix balanced needs both real and synthetic images."""
    n_real = int(data.is_real.sum())
    if config.mix == "balanced" and (n_real == 0 or n_real == len(data)):
        raise UserError("--mix balanced needs at least one real store (kind 'real') and one synthetic store")


def steps_per_epoch(data: TrainingSet, config: TrainConfig) -> int:
    """How many optimiser steps one epoch takes."""
    if config.mix == "concat":
        return len(data) // min(config.batch_size, len(data))
    n_real = int(data.is_real.sum())
    n_syn = len(data) - n_real
    half = min(config.batch_size // 2, n_real, n_syn)
    return max(n_real, n_syn) // max(half, 1)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay to zero."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def state_path(out: Path) -> Path:
    """Where the resumable training state of `out` lives until training ends."""
    return out.with_name(out.stem + ".train-state.safetensors")


def log_path(out: Path) -> Path:
    """The per-epoch JSON-lines log beside the checkpoint."""
    return out.with_name(out.stem + ".log.jsonl")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = optimizer.state_dict()["state"]
    return {f"optim.{i}.momentum_buffer": s["momentum_buffer"] for i, s in state.items() if s.get("momentum_buffer") is not None}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            state["state"][int(key.split(".")[1])] = {"momentum_buffer": value}
    optimizer.load_state_dict(state)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good state is kept."""


@locked_output("out")
def train(data_paths: Sequence[Path], out: Path, config: TrainConfig, device: str | None = None,
          overwrite: bool = False, resume: bool = False, memory_limit: str | None = None) -> dict[str, Any]:
    """Train a ResNet-18 on the stores, write the safetensors checkpoint, and return its metadata. Images are
    trained at config.image_size (default: the first store's); a set larger than the device's memory budget
    (device.memory_budget, or `memory_limit` such as '2GB') is streamed from the stores in windows."""
    out = Path(out)
    if config.mix not in MIXES:
        raise UserError(f"--mix must be one of {', '.join(MIXES)}, got '{config.mix}'")
    if check_output(out, [state_path(out)], overwrite, resume):
        return read_meta(out)
    configure_threads()
    dev = pick_device(device)
    if config.image_size is not None and config.image_size < 8:
        raise UserError(f"--image-size must be at least 8, got {config.image_size}")
    budget = memory_budget(dev, memory_limit)
    data = load_stores(data_paths, dev, config.per_class, config.seed, image_size=config.image_size, memory_limit=budget)
    arch = arch_for(data.image_size)
    if data.streamed:
        console.print(f"streaming: {len(data)} images at {data.image_size} px take {image_bytes(len(data), data.image_size) / 2**20:.2f} MiB, "
                      f"over the memory limit of {budget / 2**20:.2f} MiB; reading them from the stores in windows")
    check_mix(data, config)
    per_epoch = steps_per_epoch(data, config)
    total = config.steps if config.steps is not None else config.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)

    torch.manual_seed(config.seed)
    model = ResNet18(len(data.classes), arch, data.image_size).to(dev, memory_format=memory_format(dev))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    params = asdict(config)
    start_epoch, log, seconds = 0, [], 0.0
    state_file = state_path(out)
    if resume and state_file.exists():
        tensors, state_meta = load_checkpoint(state_file, dev)
        check_same_options((state_meta.get("params"), state_meta.get("data")), (params, data.sources), state_file)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer(optimizer, tensors)
        start_epoch, log, seconds = state_meta["epoch"], state_meta["log"], state_meta["seconds"]
    step_fn = torch.compile(model) if config.compile else model

    out.parent.mkdir(parents=True, exist_ok=True)
    with progress("epoch", "loss", "acc", "speed") as bar:
        task = bar.add_task("train", total=total, completed=min(start_epoch * per_epoch, total),
                            epoch="", loss="", acc="", speed="")
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            generator = torch.Generator(device=dev).manual_seed(config.seed * 1_000_003 + epoch)
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.long)
            seen = 0
            model.train()
            batches = epoch_batches(data, config, generator)[: total - epoch * per_epoch]  # the last epoch may stop early
            for i, (rows, images) in enumerate(batch_images(data, batches, budget, dev)):
                step = epoch * per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(step, total, config.warmup)
                x = training_batch(images, generator).contiguous(memory_format=memory_format(dev))
                y = data.labels[rows]
                with autocast(dev):
                    logits = step_fn(x)
                    loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                if i % 20 == 0:
                    bar.update(task, completed=step + 1, epoch=f"ep {epoch + 1}/{epochs}",
                               loss=f"loss {loss.item():.3f}", speed=f"{seen / (time.perf_counter() - started):.0f} img/s")
            epoch_loss = (loss_sum / max(seen, 1)).item()
            elapsed = time.perf_counter() - started
            if not math.isfinite(epoch_loss):
                kept = f"the last good state (epoch {epoch}) is kept in {state_file}" if state_file.exists() else "no epoch finished, nothing kept"
                raise TrainingDiverged(f"the loss became {epoch_loss} in epoch {epoch + 1}; {kept}; lower --lr and rerun with --overwrite")
            seconds += elapsed
            log.append({"epoch": epoch + 1, "steps": min((epoch + 1) * per_epoch, total), "loss": round(epoch_loss, 5),
                        "train_acc": round(correct.item() / max(seen, 1), 5), "img_per_s": round(seen / elapsed, 1),
                        "lr": optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 2)})
            bar.update(task, completed=min((epoch + 1) * per_epoch, total), loss=f"loss {epoch_loss:.3f}",
                       acc=f"acc {log[-1]['train_acc']:.3f}", speed=f"{log[-1]['img_per_s']:.0f} img/s")
            _write_log(out, log)
            if epoch + 1 < epochs:
                tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | _optimizer_tensors(optimizer)
                save_checkpoint(state_file, tensors, {"kind": "train-state", "params": params, "data": data.sources,
                                                      "epoch": epoch + 1, "log": log, "seconds": seconds})

    meta = provenance("classifier", params, data.sources)
    meta.update({"arch": arch, "image_size": data.image_size, "streamed": data.streamed, "classes": data.classes,
                 "epochs": epochs, "steps": total,
                 "final_loss": log[-1]["loss"], "final_train_acc": log[-1]["train_acc"], "seconds": round(seconds, 1),
                 "device": str(dev), "versions": {"synthkit": __version__, "torch": torch.__version__}})
    save_checkpoint(out, model.state_dict(), meta)
    state_file.unlink(missing_ok=True)
    return meta


def _write_log(out: Path, log: list[dict]) -> None:
    tmp = log_path(out).with_suffix(".partial")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in log))
    tmp.replace(log_path(out))
