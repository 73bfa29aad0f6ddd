"""`synthkit train`: ResNet-18 on any mix of real and synthetic stores.

Like airbench, the whole training set sits on the device as one uint8 tensor and every batch is
augmented with tensor operations (random crop with 4-pixel padding, horizontal flip): no workers,
no PIL. Each epoch draws its order and augmentation from its own seeded generator, so a run
resumed at an epoch boundary ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__
from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .config import MIXES, TrainConfig
from .device import autocast, configure_threads, memory_format, pick_device
from .errors import UserError
from .jobs import check_output, check_same_options
from .locks import locked_output
from .meta import provenance
from .model import ARCH, IMAGE_SIZE, CifarResNet18, class_mapping, resize_images
from .progress import progress
from .store import Store, balanced_subset

@dataclass
class TrainingSet:
    """Images (N, 3, 32, 32) uint8 on the device, labels, which rows are real, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    is_real: torch.Tensor
    classes: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def load_stores(paths: Sequence[Path], device: torch.device, per_class: int | None = None, seed: int = 0,
                classes: Sequence[str] | None = None) -> TrainingSet:
    """Read stores (optionally a seeded class-balanced subset of each) into one device tensor."""
    if not paths:
        raise UserError("no stores given: pass --data NAME[,NAME...]")
    images, labels, is_real, sources = [], [], [], []
    for path in paths:
        with Store(path) as store:
            if len(store) == 0:
                raise UserError(f"store {path} has no images")
            classes = list(classes or store.classes)
            mapping = class_mapping(store.classes, classes, str(path))
            index = None if per_class is None else balanced_subset(store.labels, per_class, seed, len(store.classes))
            pixels = torch.from_numpy(store.images(index)).permute(0, 3, 1, 2)
            store_labels = mapping[store.labels if index is None else store.labels[index]]
            kind = store.meta.get("kind", "unknown")
            sources.append({"path": str(path), "kind": kind, "count": len(store_labels), "fingerprint": store.fingerprint,
                            "image_size": store.image_shape[0]})
        images.append(resize_images(pixels.to(device), IMAGE_SIZE))
        labels.append(torch.from_numpy(np.asarray(store_labels, dtype=np.int64)))
        is_real.append(torch.full((len(store_labels),), kind == "real", dtype=torch.bool))
    return TrainingSet(torch.cat(images).contiguous(), torch.cat(labels).to(device), torch.cat(is_real).to(device),
                       classes, sources)


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
          overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train a CIFAR ResNet-18 on the stores, write the safetensors checkpoint, and return its metadata."""
    out = Path(out)
    if config.mix not in MIXES:
        raise UserError(f"--mix must be one of {', '.join(MIXES)}, got '{config.mix}'")
    if check_output(out, [state_path(out)], overwrite, resume):
        return read_meta(out)
    configure_threads()
    dev = pick_device(device)
    data = load_stores(data_paths, dev, config.per_class, config.seed)
    check_mix(data, config)
    per_epoch = steps_per_epoch(data, config)
    total = config.steps if config.steps is not None else config.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)

    torch.manual_seed(config.seed)
    model = CifarResNet18(len(data.classes)).to(dev, memory_format=memory_format(dev))
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
            for i, rows in enumerate(epoch_batches(data, config, generator)):
                step = epoch * per_epoch + i
                if step >= total:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(step, total, config.warmup)
                x = augment(data.images[rows], generator).float().div_(255).contiguous(memory_format=memory_format(dev))
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
    meta.update({"arch": ARCH, "classes": data.classes, "epochs": epochs, "steps": total,
                 "final_loss": log[-1]["loss"], "final_train_acc": log[-1]["train_acc"], "seconds": round(seconds, 1),
                 "device": str(dev), "versions": {"synthkit": __version__, "torch": torch.__version__}})
    save_checkpoint(out, model.state_dict(), meta)
    state_file.unlink(missing_ok=True)
    return meta


def _write_log(out: Path, log: list[dict]) -> None:
    tmp = log_path(out).with_suffix(".partial")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in log))
    tmp.replace(log_path(out))
