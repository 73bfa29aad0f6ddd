"""`synthkit invert`: Diffusion Inversion (Zhou, Sahak & Ba 2023).

For every real image a conditioning tensor (tokens x hidden) is learned and fed straight to the
frozen UNet as encoder_hidden_states, minimising the noise-prediction loss at uniform random
timesteps on the image's latent. Unlike the paper's code (one process per 100 consecutive,
class-mixed images), groups are class-pure, each image is VAE-encoded once (its latent
distribution is cached), one batch spans several groups (a chunk), and a row-wise AdamW updates
only the embeddings in the batch, so each embedding is moved by its own image's gradient alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint, read_meta, save_checkpoint
from .device import autocast, configure_threads, pick_device
from .diffusion import Diffusion, check_resolution, encode_images, encode_text, load_diffusion, training_scheduler
from .errors import UserError
from .meta import provenance
from .progress import progress
from .store import Store, shard_range

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class InversionConfig:
    """Defaults as the paper's code: AdamW lr 0.03, weight decay 0.01, groups of 100, batch 50, ~3000 updates per image."""

    tokens: int = 5
    resolution: int = 128
    lr: float = 0.03
    weight_decay: float = 0.01
    group_size: int = 100
    batch_size: int = 50
    updates: int = 3000
    chunk_groups: int = 8
    seed: int = 0


def plan_groups(labels: np.ndarray, class_ids: Sequence[int], group_size: int) -> list[tuple[int, np.ndarray]]:
    """Class-pure groups of consecutive store rows: [(class id, row indices), ...] in class order."""
    groups = []
    for c in class_ids:
        members = np.flatnonzero(labels == c)
        groups.extend((c, members[s : s + group_size]) for s in range(0, len(members), group_size))
    return groups


def adamw_rows(param: torch.Tensor, grad: torch.Tensor, rows: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
               count: torch.Tensor, lr: float, weight_decay: float) -> None:
    """AdamW on the given rows only: rows outside the batch keep their values and moments."""
    count[rows] += 1
    t = count[rows].to(param.dtype).view(-1, *([1] * (param.dim() - 1)))
    m[rows] = BETAS[0] * m[rows] + (1 - BETAS[0]) * grad
    v[rows] = BETAS[1] * v[rows] + (1 - BETAS[1]) * grad * grad
    m_hat = m[rows] / (1 - BETAS[0] ** t)
    v_hat = v[rows] / (1 - BETAS[1] ** t)
    p = param[rows]
    param[rows] = p - lr * (m_hat / (v_hat.sqrt() + EPS) + weight_decay * p)


def inversion_loss(diffusion: Diffusion, noise_schedule, embeddings: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Per-image noise-prediction MSE (B,) at uniform random timesteps, latents drawn from the cached distribution."""
    dev = mean.device
    latents = mean + std * torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype)
    noise = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype)
    t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(mean),), generator=generator, device=dev)
    noisy = noise_schedule.add_noise(latents, noise, t)
    target = noise if noise_schedule.config.prediction_type == "epsilon" else noise_schedule.get_velocity(latents, noise, t)
    with autocast(dev):
        pred = diffusion.unet(noisy, t, encoder_hidden_states=embeddings.to(noisy.dtype)).sample
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


@torch.no_grad()
def fixed_loss(diffusion: Diffusion, embeddings: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seed: int = 0,
               draws: int = 8) -> torch.Tensor:
    """Per-image loss averaged over `draws` fixed draws of timestep and noise: comparable before and after."""
    schedule = training_scheduler(diffusion)
    generator = torch.Generator(device=mean.device).manual_seed(seed)
    return torch.stack([inversion_loss(diffusion, schedule, embeddings, mean, std, generator) for _ in range(draws)]).mean(0)


def initial_embeddings(diffusion: Diffusion, n: int, tokens: int) -> torch.Tensor:
    """Every embedding starts as the first `tokens` hidden states of the empty prompt (in the model's range)."""
    empty = encode_text(diffusion, [""])[0, :tokens].float()
    return empty.unsqueeze(0).repeat(n, 1, 1).contiguous()


def state_dir(out: Path) -> Path:
    """Where the resumable state of `out` lives until the job ends: one file per finished chunk,
    and current.safetensors for the chunk in progress (so a checkpoint never rewrites finished work)."""
    return out.with_name(out.stem + ".invert-state")


def resolve_classes(names: str, classes: Sequence[str]) -> list[int]:
    """'all', one class name, or a comma-separated list -> class ids in the store's order."""
    if names == "all":
        return list(range(len(classes)))
    ids = []
    for name in (n.strip() for n in names.split(",")):
        if name not in classes:
            raise UserError(f"unknown class '{name}': the store's classes are {', '.join(classes)} (or use all)")
        ids.append(list(classes).index(name))
    return sorted(set(ids))


def invert(data: Path, out: Path, class_names: str, model: str, config: InversionConfig, device: str | None = None,
           shard: str = "", checkpoint_every: int = 200, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    """Learn one embedding per real image of the chosen classes; write them (and provenance) to `out`."""
    import shutil

    out = Path(out)
    if out.exists() and not (overwrite or resume):
        raise UserError(f"{out} already exists: pass --overwrite to replace it or --resume to continue it")
    if out.exists() and resume:
        return read_meta(out)
    if config.tokens < 1 or config.group_size < 1 or config.batch_size < 1 or config.updates < 1:
        raise UserError("--tokens, --group-size, --batch-size and --updates must be at least 1")
    with Store(data) as store:
        class_ids = resolve_classes(class_names, store.classes)
        groups = plan_groups(store.labels, class_ids, config.group_size)
        chunks = [groups[k : k + config.chunk_groups] for k in range(0, len(groups), config.chunk_groups)]
        first_chunk, stop_chunk = shard_range(len(chunks), shard)
        if first_chunk == stop_chunk:
            raise UserError(f"nothing to invert: shard {shard} of {len(chunks)} chunk(s) is empty; use fewer shards")
        configure_threads()
        dev = pick_device(device)
        diffusion = load_diffusion(model, dev, torch.float32)
        check_resolution(config.resolution, diffusion)
        params = asdict(config) | {"model": model, "classes": class_names, "data": str(data), "shard": shard}
        state = state_dir(out)
        if state.exists() and not resume:
            shutil.rmtree(state)
        state.mkdir(parents=True, exist_ok=True)
        n_images = sum(len(rows) for chunk in chunks[first_chunk:stop_chunk] for _, rows in chunk)
        started = time.perf_counter()
        parts, group_loss = [], {}
        with progress("loss") as bar:
            task = bar.add_task("invert", total=n_images * config.updates, loss="")
            for chunk_index in range(first_chunk, stop_chunk):
                rows = np.concatenate([r for _, r in chunks[chunk_index]])
                group_ids = np.concatenate([np.full(len(r), chunk_index * config.chunk_groups + k, dtype=np.int64)
                                            for k, (_, r) in enumerate(chunks[chunk_index])])
                finished = state / f"chunk-{chunk_index:05d}.safetensors"
                if not finished.exists():
                    images = store.images(rows)
                    chunk_tensors, chunk_loss = invert_chunk(diffusion, images, group_ids, config, chunk_index, state,
                                                             params, checkpoint_every, bar, task)
                    chunk_tensors |= {"source_index": torch.from_numpy(rows), "label": torch.from_numpy(store.labels[rows]),
                                      "group": torch.from_numpy(group_ids)}
                    save_checkpoint(finished, chunk_tensors, {"kind": "invert-chunk", "params": params, "group_loss": chunk_loss})
                    (state / "current.safetensors").unlink(missing_ok=True)
                tensors, chunk_meta = load_checkpoint(finished)
                if chunk_meta.get("params") != params:
                    raise UserError(f"{state} was started with other options: rerun with the same ones, or --overwrite")
                parts.append(tensors)
                group_loss |= chunk_meta["group_loss"]
                bar.update(task, completed=sum(len(p["label"]) for p in parts) * config.updates)
        classes, fingerprint = store.classes, store.fingerprint
    tensors = {key: torch.cat([p[key] for p in parts]) for key in ("embeddings", "source_index", "label", "group")}
    meta = provenance("embeddings", params, [{"path": str(data), "fingerprint": fingerprint}])
    meta.update({"model": model, "classes": list(classes), "tokens": config.tokens, "hidden": diffusion.hidden_size,
                 "resolution": config.resolution, "shard": shard,
                 "group_loss": group_loss, "group_loss_fields": ["first_epoch", "final_ema"],
                 "prediction_type": training_scheduler(diffusion).config.prediction_type,
                 "seconds": round(time.perf_counter() - started, 1), "image_steps": int(n_images * config.updates)})
    save_checkpoint(out, tensors, meta)
    shutil.rmtree(state)
    return meta


def invert_chunk(diffusion: Diffusion, images: np.ndarray, group_ids: np.ndarray, config: InversionConfig,
                 chunk_index: int, state: Path, params: dict, checkpoint_every: int, bar, task) -> tuple[dict, dict]:
    """Optimise the embeddings of one chunk (several groups); each epoch updates every embedding once.

    Saves current.safetensors about every `checkpoint_every` steps and continues from it if present."""
    dev = diffusion.device
    schedule = training_scheduler(diffusion)
    mean, std = _encode_all(diffusion, images, config.resolution)
    n = len(images)
    emb = initial_embeddings(diffusion, n, config.tokens)
    m, v = torch.zeros_like(emb), torch.zeros_like(emb)
    count = torch.zeros(n, dtype=torch.long, device=dev)
    ema = torch.zeros(n, device=dev)
    first_loss = torch.zeros(n, device=dev)
    epoch0 = 0
    current = state / "current.safetensors"
    if current.exists():
        saved, saved_meta = load_checkpoint(current, dev)
        if saved_meta.get("params") != params:
            raise UserError(f"{state} was started with other options: rerun with the same ones, or --overwrite")
        if saved_meta["chunk"] == chunk_index:
            emb, m, v, count, ema, first_loss = (saved[k] for k in ("emb", "m", "v", "count", "ema", "first_loss"))
            epoch0 = saved_meta["epoch"]
            bar.advance(task, n * epoch0)
    since_save = 0
    for epoch in range(epoch0, config.updates):
        generator = torch.Generator(device=dev).manual_seed(_seed(config.seed, chunk_index, epoch))
        order = torch.randperm(n, generator=generator, device=dev)
        for rows in order.split(config.batch_size):
            batch_emb = emb[rows].clone().requires_grad_(True)
            losses = inversion_loss(diffusion, schedule, batch_emb, mean[rows], std[rows], generator)
            losses.mean().backward()
            with torch.no_grad():
                adamw_rows(emb, batch_emb.grad, rows, m, v, count, config.lr, config.weight_decay)
                ema[rows] = losses.detach() if epoch == 0 else 0.9 * ema[rows] + 0.1 * losses.detach()
                if epoch == 0:
                    first_loss[rows] = losses.detach()
            since_save += 1
        bar.update(task, advance=n, loss=f"loss {ema.mean().item():.4f}")
        if since_save >= checkpoint_every and epoch + 1 < config.updates:
            since_save = 0
            save_checkpoint(current, {"emb": emb, "m": m, "v": v, "count": count, "ema": ema, "first_loss": first_loss},
                            {"kind": "invert-state", "params": params, "chunk": chunk_index, "epoch": epoch + 1})
    group_loss = {}
    for gid in np.unique(group_ids):
        members = torch.from_numpy(np.flatnonzero(group_ids == gid)).to(dev)
        group_loss[str(int(gid))] = [round(first_loss[members].mean().item(), 6), round(ema[members].mean().item(), 6)]
    return {"embeddings": emb.detach().cpu()}, group_loss


def _seed(seed: int, chunk: int, epoch: int) -> int:
    return (seed * 1_000_003 + chunk * 100_003 + epoch) % (2**63)


def _encode_all(diffusion: Diffusion, images: np.ndarray, resolution: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [encode_images(diffusion, images[s : s + batch], resolution) for s in range(0, len(images), batch)]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()


def load_embeddings(paths: Sequence[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Concatenate embedding files (shards in shard order); they must come from the same model and classes."""
    if not paths:
        raise UserError("no embeddings given: pass --embeddings models/inv/*.safetensors")
    metas = [read_meta(p) for p in paths]
    for path, meta in zip(paths, metas):
        if meta.get("kind") != "embeddings":
            raise UserError(f"{path} is not a synthkit embeddings file (its kind is '{meta.get('kind')}'): give files written by synthkit invert")
        for key in ("classes", "hidden", "tokens", "resolution"):
            if meta.get(key) != metas[0].get(key):
                raise UserError(f"{path} differs from {paths[0]} in {key}: embeddings must come from the same model and setup")
    parts = [load_checkpoint(p)[0] for p in paths]
    tensors = {key: torch.cat([p[key] for p in parts]) for key in ("embeddings", "source_index", "label", "group")}
    meta = dict(metas[0])
    meta["sources"] = [{"path": str(p), "classes": m["params"]["classes"], "shard": m.get("shard", "")} for p, m in zip(paths, metas)]
    meta["group_loss"] = {k: v for m in metas for k, v in m.get("group_loss", {}).items()}
    return tensors, meta


def merge_embeddings(paths: Sequence[Path], out: Path, overwrite: bool = False) -> Path:
    """Merge the shards of one inversion job into the file an unsharded run writes."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: pass --overwrite to replace it")
    metas = [read_meta(p) for p in paths]
    if all(m.get("shard") for m in metas):
        order = sorted(range(len(paths)), key=lambda i: int(metas[i]["shard"].split("/")[0]))
        shards = [metas[i]["shard"] for i in order]
        n = int(shards[0].split("/")[1])
        if shards != [f"{i}/{n}" for i in range(n)]:
            raise UserError(f"the shards given are {', '.join(shards)}: all of 0/{n} .. {n - 1}/{n} are needed, once each")
        params = [{k: v for k, v in metas[i]["params"].items() if k != "shard"} for i in order]
        if any(p != params[0] for p in params):
            raise UserError("the shards were made with different options and cannot be merged")
        paths = [paths[i] for i in order]
    tensors, meta = load_embeddings(paths)
    meta = provenance("embeddings", {**meta["params"], "shard": ""}, meta["sources"]) | {
        k: v for k, v in meta.items() if k not in ("kind", "command", "params", "synthkit_version", "created", "sources")}
    meta["shard"] = ""
    meta["seconds"] = round(sum(m.get("seconds", 0) for m in metas), 1)
    meta["image_steps"] = sum(m.get("image_steps", 0) for m in metas)
    save_checkpoint(out, tensors, meta)
    return out

