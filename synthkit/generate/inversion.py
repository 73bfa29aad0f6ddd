"""`synthkit invert`: Diffusion Inversion (Zhou, Sahak & Ba 2023), with the official code's update.

Every real image gets a conditioning tensor (tokens x hidden), fed straight to the frozen UNet as
encoder_hidden_states and trained on the noise-prediction loss. As in the official
`src/diffuser_inversion.py`, each group of `group_size` images has its own embedding table,
initialised as an `nn.Linear` (uniform in +-1/sqrt(group_size)) and stepped by AdamW over the
whole group, so rows outside the batch still get their momentum and weight decay every step; the
group's batches are fixed and unshuffled, and every step draws a fresh latent from each image's
VAE distribution, fresh noise and a timestep. synthkit's departures (class-pure groups, cached
latent distributions, several groups per forward pass, a random stream per group) leave that update
unchanged: see the README, "Where synthkit departs from the official code".
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.config import INVERT_JOB, OFFICIAL_RESOLUTION, InversionConfig
from ..core.device import image_bytes, inversion_dtype, job_device, memory_budget
from ..core.errors import UserError
from ..core.jobs import (
    Asked,
    check_fits,
    check_output,
    check_range,
    check_same_options,
    parse_shard,
    shard_order,
    shard_range,
)
from ..core.launch import run_sharded
from ..core.meta import Kind, check_record, provenance
from ..core.outputs import locked_output
from ..core.paths import invert_state_dir
from ..core.progress import progress
from ..io.checkpoint import load_checkpoint, read_meta, save_checkpoint
from ..io.store import Store, store_fingerprint
from .diffusion import Diffusion, check_resolution, derive_seed, encode_images, load_diffusion, training_scheduler

if TYPE_CHECKING:
    from .preview import InversionPreview

BETAS = (0.9, 0.999)
EPS = 1e-8
GROUP_IDS = "first-store-row"  # a group is named by the store row of its first member: unique across files
SETUP_FREE = ("classes", "shard", "chunk_groups")  # options that may differ between files sampled together


def plan_groups(labels: np.ndarray, class_ids: Sequence[int], group_size: int) -> list[tuple[int, np.ndarray]]:
    """Class-pure groups of consecutive store rows: [(class id, row indices), ...] in class order."""
    groups = []
    for c in class_ids:
        members = np.flatnonzero(labels == c)
        groups.extend((c, members[s : s + group_size]) for s in range(0, len(members), group_size))
    return groups


def epoch_steps(sizes: Sequence[int], batch_size: int) -> list[list[tuple[int, slice]]]:
    """The AdamW steps of one epoch: at step s every group with more than s batches gives its s-th batch
    (the official DataLoader's fixed, unshuffled batches); a group without one does not step."""
    n_steps = max(math.ceil(n / batch_size) for n in sizes)
    return [
        [(k, slice(s * batch_size, min((s + 1) * batch_size, n))) for k, n in enumerate(sizes) if s * batch_size < n]
        for s in range(n_steps)
    ]


def initial_table(n: int, tokens: int, hidden: int, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """The official one-hot table's start: nn.Linear's default init, uniform in +-1/sqrt(fan_in) (fan_in = num_emb,
    the configured group size, also for a shorter last group)."""
    bound = 1 / math.sqrt(fan_in)
    return torch.empty(n, tokens, hidden).uniform_(-bound, bound, generator=generator)


def draw(
    generator: torch.Generator, n: int, latent_shape: Sequence[int], timesteps: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's randomness for n images: the standard-normal part of a fresh latent sample, noise, timesteps."""
    eps = torch.randn((n, *latent_shape), generator=generator, device=device)
    noise = torch.randn((n, *latent_shape), generator=generator, device=device)
    t = torch.randint(0, timesteps, (n,), generator=generator, device=device)
    return eps, noise, t


def inversion_loss(
    diffusion: Diffusion,
    noise_schedule,
    embeddings: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    draws: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Per-image noise-prediction MSE (B,): latent = mean + std * eps from the cached VAE distribution, noised at t."""
    eps, noise, t = draws
    latents = mean + std * eps
    noisy = noise_schedule.add_noise(latents, noise, t)
    target = (
        noise if noise_schedule.config.prediction_type == "epsilon" else noise_schedule.get_velocity(latents, noise, t)
    )
    pred = diffusion.unet(noisy.to(diffusion.dtype), t, encoder_hidden_states=embeddings.to(diffusion.dtype)).sample
    return ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


@torch.no_grad()
def fixed_loss(
    diffusion: Diffusion, embeddings: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seed: int = 0, draws: int = 8
) -> torch.Tensor:
    """Per-image loss averaged over `draws` fixed draws of timestep and noise: comparable before and after."""
    schedule = training_scheduler(diffusion)
    generator = torch.Generator(device=mean.device).manual_seed(seed)
    steps = schedule.config.num_train_timesteps
    return torch.stack(
        [
            inversion_loss(
                diffusion,
                schedule,
                embeddings,
                mean,
                std,
                draw(generator, len(mean), mean.shape[1:], steps, mean.device),
            )
            for _ in range(draws)
        ]
    ).mean(0)


class GroupTables:
    """The embeddings of a chunk's groups, one leaf tensor per group, and one AdamW over them.

    A group whose gradient is None at a step is skipped by AdamW (no step, no decay), exactly as if
    each group had its own optimiser as in the official one-process-per-group runs."""

    def __init__(self, tables: list[torch.Tensor], config: InversionConfig):
        self.tables = [t.detach().clone().requires_grad_(True) for t in tables]
        self.sizes = [len(t) for t in self.tables]
        self.offsets = np.cumsum([0] + self.sizes[:-1])
        self.optimizer = torch.optim.AdamW(
            self.tables, lr=config.lr, betas=BETAS, eps=EPS, weight_decay=config.weight_decay
        )

    def embeddings(self) -> torch.Tensor:
        """All rows of the chunk, in order (detached)."""
        return torch.cat([t.detach() for t in self.tables])

    def step(
        self,
        diffusion: Diffusion,
        schedule,
        batches: list[tuple[int, slice]],
        mean: torch.Tensor,
        std: torch.Tensor,
        generators: list[torch.Generator],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """One AdamW step of every group in `batches`; each group's loss is the mean over its own batch, as in
        the official loop. Returns the chunk rows of the batch and their per-image losses."""
        rows = np.concatenate([np.arange(self.offsets[k] + s.start, self.offsets[k] + s.stop) for k, s in batches])
        cond = torch.cat([self.tables[k][s] for k, s in batches])
        steps = schedule.config.num_train_timesteps
        parts = [draw(generators[k], s.stop - s.start, mean.shape[1:], steps, mean.device) for k, s in batches]
        draws = tuple(torch.cat(p) for p in zip(*parts))
        index = torch.from_numpy(rows).to(mean.device)
        losses = inversion_loss(diffusion, schedule, cond, mean[index], std[index], draws)
        weights = torch.cat(
            [torch.full((s.stop - s.start,), 1.0 / (s.stop - s.start), device=losses.device) for _, s in batches]
        )
        (losses * weights).sum().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return rows, losses.detach()

    def state(self) -> dict[str, torch.Tensor]:
        """Tables and AdamW moments, as tensors for a resumable checkpoint."""
        out = {}
        for k, table in enumerate(self.tables):
            out[f"table.{k}"] = table.detach()
            state = self.optimizer.state.get(table)
            if state:
                out[f"exp_avg.{k}"], out[f"exp_avg_sq.{k}"] = state["exp_avg"], state["exp_avg_sq"]
                out[f"step.{k}"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1)
        return out

    def load_state(self, saved: dict[str, torch.Tensor]) -> None:
        """Continue from `state()`'s tensors."""
        with torch.no_grad():
            for k, table in enumerate(self.tables):
                table.copy_(saved[f"table.{k}"])
        optimizer_state = self.optimizer.state_dict()
        optimizer_state["state"] = {
            k: {
                "step": saved[f"step.{k}"].reshape(()).float().cpu(),
                "exp_avg": saved[f"exp_avg.{k}"],
                "exp_avg_sq": saved[f"exp_avg_sq.{k}"],
            }
            for k in range(len(self.tables))
            if f"step.{k}" in saved
        }
        self.optimizer.load_state_dict(optimizer_state)


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


@dataclass
class _InvertJob:
    """What the steps of one invert run share: what it was asked, its device and frozen model (the config's
    resolution settled by it), the params its files record, its state folder and its preview."""

    data: Path
    model: str
    shard: str
    dev: torch.device
    config: InversionConfig
    diffusion: Diffusion
    params: dict[str, Any]
    state: Path
    checkpoint_every: int
    preview: InversionPreview
    preview_every: int


@dataclass
class _Inverted:
    """The finished chunks of a run as they are read back, in order: their tensors, each group's loss, and each
    chunk's curves with its number of images (mean_history's weights)."""

    parts: list[dict[str, torch.Tensor]] = field(default_factory=list)
    group_loss: dict[str, list[float]] = field(default_factory=dict)
    histories: list[tuple[int, list[float]]] = field(default_factory=list)
    fixed: list[tuple[int, list[float]]] = field(default_factory=list)

    def add(self, tensors: dict[str, torch.Tensor], chunk_meta: dict[str, Any]) -> None:
        """Take in one finished chunk's file (its tensors and its record)."""
        self.parts.append(tensors)
        self.group_loss |= chunk_meta["group_loss"]
        self.histories.append((len(tensors["label"]), chunk_meta.get("history", [])))
        self.fixed.append((len(tensors["label"]), chunk_meta.get("fixed_loss", [])))

    def images(self) -> int:
        """How many images the chunks taken in so far hold."""
        return sum(len(p["label"]) for p in self.parts)


@locked_output("out")  # one writer per output: its state, preview and file
def invert(
    data: Path,
    out: Path,
    class_names: str,
    model: str,
    config: InversionConfig,
    device: str | None = None,
    shard: str = "",
    checkpoint_every: int = INVERT_JOB.checkpoint_every,
    preview_every: int = INVERT_JOB.preview_every,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Learn one embedding per real image of the chosen classes; write them (and provenance) to `out`,
    and a preview of real images beside what their embeddings reproduce to <out>.preview.png."""
    from .preview import InversionPreview

    out = Path(out)
    if shard:
        parse_shard(shard)
    asked = functools.partial(invert_asked, data, class_names, model, config, shard)
    if check_output(out, [invert_state_dir(out)], overwrite, resume, inputs=[data, model], asked=asked):
        return read_meta(out)
    dev = _checked_device(config, preview_every, device)
    with Store(data) as store:
        chunks, first_chunk, stop_chunk = _plan_chunks(store, data, class_names, config, shard)
        diffusion, config = _load_model(model, dev, config)
        params = invert_params(data, class_names, model, config, shard)
        state = _state_folder(out, resume)
        preview = InversionPreview(out, diffusion, config.resolution, preview_every, config.updates)
        job = _InvertJob(
            data=data,
            model=model,
            shard=shard,
            dev=dev,
            config=config,
            diffusion=diffusion,
            params=params,
            state=state,
            checkpoint_every=checkpoint_every,
            preview=preview,
            preview_every=preview_every,
        )
        n_images = sum(len(rows) for chunk in chunks[first_chunk:stop_chunk] for _, rows in chunk)
        started = time.perf_counter()
        inverted = _invert_chunks(job, store, chunks, range(first_chunk, stop_chunk), n_images)
        classes, fingerprint, image_size = store.classes, store.fingerprint, store.image_shape[0]
    tensors = _joined(inverted.parts)
    meta = _embeddings_meta(job, classes, fingerprint, image_size, inverted, n_images, started)
    save_checkpoint(out, tensors, meta)
    shutil.rmtree(state)
    return meta


def _checked_device(config: InversionConfig, preview_every: int, device: str | None) -> torch.device:
    """The device to invert on; one error line first for options out of range or a batch that does not fit it."""
    if min(config.tokens, config.group_size, config.batch_size, config.updates) < 1 or preview_every < 0:
        raise UserError(
            "--tokens, --group-size, --batch-size and --updates must be at least 1, --preview-every at least 0"
        )
    check_range(config.lr, "--lr", 0, open_low=True)
    check_range(config.weight_decay, "--weight-decay", 0)
    biggest = config.resolution or OFFICIAL_RESOLUTION
    check_range(biggest, "--resolution", 8)
    dev = job_device(device)
    check_fits(
        4 * image_bytes(config.batch_size, biggest),
        memory_budget(dev),
        f"a batch of {config.batch_size} images at --resolution {biggest}",
    )
    return dev


def _plan_chunks(
    store: Store, data: Path, class_names: str, config: InversionConfig, shard: str
) -> tuple[list[list[tuple[int, np.ndarray]]], int, int]:
    """The chosen classes' groups in chunks of `chunk_groups`, and the first and stop chunk of this shard; one error
    line when there is nothing to invert."""
    class_ids = resolve_classes(class_names, store.classes)
    groups = plan_groups(store.labels, class_ids, config.group_size)
    if not groups:
        raise UserError(f"store {data} has no images of class {class_names}")
    chunks = [groups[k : k + config.chunk_groups] for k in range(0, len(groups), config.chunk_groups)]
    first_chunk, stop_chunk = shard_range(len(chunks), shard)
    if first_chunk == stop_chunk:
        raise UserError(f"nothing to invert: shard {shard} of {len(chunks)} chunk(s) is empty; use fewer shards")
    return chunks, first_chunk, stop_chunk


def _load_model(model: str, dev: torch.device, config: InversionConfig) -> tuple[Diffusion, InversionConfig]:
    """The frozen model, and the config with its resolution settled: when none is asked, the official one but never
    above the model's own size (a 32 px miniature inverts at 32)."""
    diffusion = load_diffusion(model, dev, inversion_dtype(dev, config.precision))
    if config.resolution is None:
        config = replace(config, resolution=min(OFFICIAL_RESOLUTION, diffusion.native_resolution))
    check_resolution(config.resolution, diffusion)
    return diffusion, config


def _state_folder(out: Path, resume: bool) -> Path:
    """The folder of the finished chunks and the current chunk's state, emptied first unless the run resumes."""
    state = invert_state_dir(out)
    if state.exists() and not resume:
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    return state


def _invert_chunks(
    job: _InvertJob, store: Store, chunks: list[list[tuple[int, np.ndarray]]], span: range, n_images: int
) -> _Inverted:
    """Invert the chunks in `span` that no earlier run finished, under one progress bar, and read every chunk's file
    back (checked to be made with this run's params)."""
    inverted = _Inverted()
    with progress("loss") as bar:
        task = bar.add_task("invert", total=n_images * job.config.updates, loss="")
        for chunk_index in span:
            finished = _finished_chunk(
                job, store, chunks, chunk_index, lambda n, loss: bar.update(task, advance=n, loss=loss)
            )
            tensors, chunk_meta = load_checkpoint(finished)
            check_same_options(chunk_meta.get("params"), job.params, job.state)
            inverted.add(tensors, chunk_meta)
            bar.update(task, completed=inverted.images() * job.config.updates)
    return inverted


def _finished_chunk(
    job: _InvertJob,
    store: Store,
    chunks: list[list[tuple[int, np.ndarray]]],
    chunk_index: int,
    advance: Callable[[int, str], None],
) -> Path:
    """The file of a finished chunk: inverted and written first (tensors, store rows, labels, losses and curves)
    unless an earlier run did it; the current chunk's state then goes."""
    chunk = chunks[chunk_index]
    rows = np.concatenate([r for _, r in chunk])
    finished = job.state / f"chunk-{chunk_index:05d}.safetensors"
    if finished.exists():
        return finished
    images = store.images(rows)
    job.preview.start_chunk(images, f"chunk {chunk_index + 1} of {len(chunks)}")
    chunk_tensors, chunk_loss, curves = invert_chunk(
        job.diffusion,
        images,
        [r for _, r in chunk],
        job.config,
        chunk_index,
        job.state,
        job.params,
        job.checkpoint_every,
        job.preview,
        advance,
    )
    chunk_tensors |= {"source_index": torch.from_numpy(rows), "label": torch.from_numpy(store.labels[rows])}
    save_checkpoint(
        finished,
        chunk_tensors,
        {
            "kind": Kind.INVERT_CHUNK,
            "params": job.params,
            "group_loss": chunk_loss,
            "history": curves["history"],
            "fixed_loss": curves["fixed"],
        },
    )
    (job.state / "current.safetensors").unlink(missing_ok=True)
    return finished


def _joined(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors of embedding files or chunks, concatenated in order."""
    return {key: torch.cat([p[key] for p in parts]) for key in ("embeddings", "source_index", "label", "group")}


def _embeddings_meta(
    job: _InvertJob,
    classes: Sequence[str],
    fingerprint: str,
    image_size: int,
    inverted: _Inverted,
    n_images: int,
    started: float,
) -> dict[str, Any]:
    """The embeddings file's record: its provenance, the setup it was inverted with, and the losses and curves of
    every group (the time it took measured from `started`)."""
    config, diffusion = job.config, job.diffusion
    meta = provenance(Kind.EMBEDDINGS, job.params, [{"path": str(job.data), "fingerprint": fingerprint}])
    meta.update(
        {
            "model": job.model,
            "classes": list(classes),
            "tokens": config.tokens,
            "hidden": diffusion.hidden_size,
            "resolution": config.resolution,
            "image_size": image_size,
            "shard": job.shard,
            "device": str(job.dev),
            "group_ids": GROUP_IDS,
            "optimizer": "AdamW over each group (official)",
            "init": "nn.Linear default (official)",
            "adamw_steps_per_group": config.updates * config.steps_per_update(),
            "group_loss": inverted.group_loss,
            "group_loss_fields": ["first_epoch", "final_ema"],
            "loss_history": mean_history(inverted.histories),
            "fixed_loss": mean_history(inverted.fixed),  # [start, end] over the same fixed draws (fixed_loss)
            "prediction_type": training_scheduler(diffusion).config.prediction_type,
            "preview": str(job.preview.path) if job.preview_every else "",
            "seconds": round(time.perf_counter() - started, 1),
            "image_steps": int(n_images * config.updates),
        }
    )
    return meta


def invert_params(data: Path, class_names: str, model: str, config: InversionConfig, shard: str) -> dict[str, Any]:
    """The params an embeddings file records: the inversion's settings and what it was asked."""
    return asdict(config) | {"model": model, "classes": class_names, "data": str(data), "shard": shard}


def invert_asked(data: Path, class_names: str, model: str, config: InversionConfig, shard: str) -> Asked:
    """What an inversion asks for, as its finished embeddings file records how it was made (jobs.Asked): its params
    (without the resolution when the default is asked: the model's own size may lower it, known once it is loaded)
    and the fingerprint of the store inverted."""
    params = invert_params(data, class_names, model, config, shard)
    if config.resolution is None:
        del params["resolution"]
    return Asked(params, [(str(data), store_fingerprint(data))], _embeddings_made)


def _embeddings_made(path: Path) -> dict[str, Any]:
    """An embeddings file's record as jobs.Asked compares it: its params, and the store inverted (the first source:
    a file merged from shards names that store once for each shard)."""
    meta = read_meta(path)
    return {"params": meta.get("params"), "sources": (meta.get("sources") or [])[:1]}


def run_invert(
    data: Path,
    out: Path,
    class_names: str,
    model: str,
    config: InversionConfig,
    device: str = "auto",
    shard: str = "",
    checkpoint_every: int = INVERT_JOB.checkpoint_every,
    preview_every: int = INVERT_JOB.preview_every,
    overwrite: bool = False,
    resume: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """`synthkit invert`: invert, sharded as asked (launch.run_sharded; under torchrun rank 0 merges the shards with
    merge_embeddings). Returns the file this process wrote."""

    def job(path: Path, part: str, dev: str) -> None:
        invert(
            data,
            path,
            class_names,
            model,
            config,
            device=dev,
            shard=part,
            checkpoint_every=checkpoint_every,
            preview_every=preview_every,
            overwrite=overwrite,
            resume=resume,
        )

    merge = functools.partial(merge_embeddings, overwrite=True)
    asked = functools.partial(invert_asked, data, class_names, model, config, "")  # the whole job's output
    return run_sharded(
        job,
        Path(out),
        shard,
        device,
        merge,
        overwrite=overwrite,
        resume=resume,
        say=say,
        inputs=[data, model],
        asked=asked,
    )


def invert_chunk(
    diffusion: Diffusion,
    images: np.ndarray,
    groups: list[np.ndarray],
    config: InversionConfig,
    chunk_index: int,
    state: Path,
    params: dict,
    checkpoint_every: int,
    preview,
    advance: Callable[[int, str], None],
) -> tuple[dict, dict, dict[str, list[float]]]:
    """Optimise the embeddings of one chunk (several groups, in one forward pass per step); every epoch
    updates each embedding once. Saves current.safetensors about every `checkpoint_every` steps and
    continues from it if present. Returns the tensors, each group's loss and the chunk's curves: the mean loss of
    each update (random draws) and the mean loss at the start and the end over the same fixed draws."""
    dev = diffusion.device
    schedule = training_scheduler(diffusion)
    mean, std = _encode_all(diffusion, images, config.resolution)
    group_ids = [int(rows[0]) for rows in groups]
    sizes = [len(rows) for rows in groups]
    tables = _initial_tables(diffusion, group_ids, sizes, config)
    initial = tables.embeddings().clone()
    n = len(images)
    chunk = _ChunkProgress(tables, torch.zeros(n, device=dev), torch.zeros(n, device=dev))
    current = state / "current.safetensors"
    _resume_chunk(chunk, current, state, params, chunk_index, dev, advance)
    steps = epoch_steps(sizes, config.batch_size)
    if chunk.done == 0:
        preview.update(0, tables.embeddings(), chunk.history)
    since_save = 0
    for epoch in range(chunk.done, config.updates):
        chunk.record(epoch, _epoch_loss(diffusion, schedule, tables, steps, mean, std, group_ids, config.seed, epoch))
        since_save += len(steps)
        advance(n, f"loss {chunk.ema.mean().item():.4f}")
        if epoch + 1 < config.updates:
            preview.update(epoch + 1, tables.embeddings(), chunk.history)
            if since_save >= checkpoint_every:
                since_save = 0
                chunk.save(current, params, chunk_index)
    preview.update(config.updates, tables.embeddings(), chunk.history, final=True)
    group_loss = chunk.group_loss(group_ids, sizes)
    group = torch.from_numpy(np.repeat(group_ids, sizes).astype(np.int64))
    final = tables.embeddings()
    fixed = [fixed_loss(diffusion, e, mean, std, seed=config.seed).mean().item() for e in (initial, final)]
    curves = {"history": chunk.history, "fixed": fixed}
    return {"embeddings": tables.embeddings().cpu(), "group": group}, group_loss, curves


@dataclass
class _ChunkProgress:
    """Where the inversion of a chunk stands: its tables, each image's moving-average and first-epoch loss, the mean
    loss of every epoch done, and how many are done (what current.safetensors saves to resume from)."""

    tables: GroupTables
    ema: torch.Tensor
    first_loss: torch.Tensor
    history: list[float] = field(default_factory=list)
    done: int = 0

    def record(self, epoch: int, epoch_loss: torch.Tensor) -> None:
        """Take in the per-image losses of the epoch just done (the moving average starts at the first epoch's)."""
        self.ema = epoch_loss if epoch == 0 else 0.9 * self.ema + 0.1 * epoch_loss
        if epoch == 0:
            self.first_loss = epoch_loss.clone()
        self.history.append(round(epoch_loss.mean().item(), 6))
        self.done = epoch + 1

    def save(self, current: Path, params: dict, chunk_index: int) -> None:
        """Write the resumable state of the chunk: its tables with their AdamW moments, losses and curve so far."""
        save_checkpoint(
            current,
            self.tables.state() | {"ema": self.ema, "first_loss": self.first_loss},
            {
                "kind": Kind.INVERT_STATE,
                "params": params,
                "chunk": chunk_index,
                "epoch": self.done,
                "history": self.history,
            },
        )

    def group_loss(self, group_ids: list[int], sizes: list[int]) -> dict[str, list[float]]:
        """Each group's mean loss over its images, in the first epoch and in the moving average at the end."""
        group_loss, start = {}, 0
        for gid, size in zip(group_ids, sizes):
            group_loss[str(gid)] = [
                round(self.first_loss[start : start + size].mean().item(), 6),
                round(self.ema[start : start + size].mean().item(), 6),
            ]
            start += size
        return group_loss


def _initial_tables(
    diffusion: Diffusion, group_ids: list[int], sizes: list[int], config: InversionConfig
) -> GroupTables:
    """Every group's table at the official start, each from its own group's seed (the same whichever chunk or shard
    inverts it), under one AdamW."""
    return GroupTables(
        [
            initial_table(
                n,
                config.tokens,
                diffusion.hidden_size,
                config.group_size,  # the official nn.Linear(num_emb) of every group, a short last one's too
                torch.Generator().manual_seed(_seed(config.seed, gid, -1)),
            ).to(diffusion.device)
            for gid, n in zip(group_ids, sizes)
        ],
        config,
    )


def _resume_chunk(
    chunk: _ChunkProgress,
    current: Path,
    state: Path,
    params: dict,
    chunk_index: int,
    dev: torch.device,
    advance: Callable[[int, str], None],
) -> None:
    """Continue from `current` when it holds this chunk's state (one error line if it was made with other params), and
    move the progress bar past the epochs it did."""
    if not current.exists():
        return
    n = len(chunk.ema)
    saved, saved_meta = load_checkpoint(current, dev)
    check_same_options(saved_meta.get("params"), params, state)
    if saved_meta["chunk"] == chunk_index:
        chunk.tables.load_state(saved)
        chunk.ema, chunk.first_loss = saved["ema"], saved["first_loss"]
        chunk.done, chunk.history = saved_meta["epoch"], saved_meta["history"]
        advance(n * chunk.done, "")


def _epoch_loss(
    diffusion: Diffusion,
    schedule,
    tables: GroupTables,
    steps: list[list[tuple[int, slice]]],
    mean: torch.Tensor,
    std: torch.Tensor,
    group_ids: list[int],
    seed: int,
    epoch: int,
) -> torch.Tensor:
    """One epoch of a chunk: its AdamW steps, each group drawing from its own stream of this epoch. Returns each
    image's loss at its step."""
    dev = diffusion.device
    generators = [torch.Generator(device=dev).manual_seed(_seed(seed, gid, epoch)) for gid in group_ids]
    epoch_loss = torch.zeros(len(mean), device=dev)
    for batches in steps:
        rows, losses = tables.step(diffusion, schedule, batches, mean, std, generators)
        index = torch.from_numpy(rows).to(dev)
        epoch_loss[index] = losses
    return epoch_loss


def mean_history(histories: list[tuple[int, list[float]]]) -> list[float]:
    """The mean over every image of a per-chunk curve (the loss at each update, or at start and end), from each
    chunk's (images, curve)."""
    full = [(n, h) for n, h in histories if h]
    if not full or len({len(h) for _, h in full}) != 1:
        return []
    total = sum(n for n, _ in full)
    return [round(sum(n * h[k] for n, h in full) / total, 6) for k in range(len(full[0][1]))]


def _seed(seed: int, group: int, epoch: int) -> int:
    """The seed of one group's draws in one epoch (epoch -1: its initial table)."""
    return derive_seed(seed, group, epoch + 1)


def _encode_all(
    diffusion: Diffusion, images: np.ndarray, resolution: int, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [encode_images(diffusion, images[s : s + batch], resolution) for s in range(0, len(images), batch)]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()


def embeddings_record(path: Path) -> dict[str, Any]:
    """The record of an embeddings file written by synthkit invert (its header alone); any other file, or one of an
    older synthkit whose group ids restart at 0 in every file, is refused in one line."""
    meta = check_record(
        read_meta(path), Kind.EMBEDDINGS, path, "a synthkit embeddings file (give files written by synthkit invert)"
    )
    if meta.get("group_ids") != GROUP_IDS:
        raise UserError(
            f"{path} was made by an older synthkit whose group ids restart at 0 in every file "
            "(partners would cross classes): run synthkit invert on it again"
        )
    return meta


def load_embeddings(paths: Sequence[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Concatenate embedding files (per-class files, or shards in shard order) of one real store and one setup.

    Groups are named by their first store row, so groups of different files never merge; files from
    different stores, images given twice and files from older synthkit versions are refused."""
    if not paths:
        raise UserError("no embeddings given: pass --embeddings models/inv/*.safetensors")
    metas = [embeddings_record(p) for p in paths]
    for path, meta in zip(paths, metas):
        for key in ("classes", "hidden", "tokens", "resolution", "model"):
            if meta.get(key) != metas[0].get(key):
                raise UserError(
                    f"{path} differs from {paths[0]} in {key}: embeddings must come from the same model and setup"
                )
        setup = {k: v for k, v in meta["params"].items() if k not in SETUP_FREE}
        first = {k: v for k, v in metas[0]["params"].items() if k not in SETUP_FREE}
        if setup != first:
            differ = sorted(k for k in setup.keys() | first.keys() if setup.get(k) != first.get(k))
            raise UserError(
                f"{path} was inverted with other options than {paths[0]} ({', '.join(differ)}): "
                "embeddings sampled together must come from one setup"
            )
        if meta["sources"][0]["fingerprint"] != metas[0]["sources"][0]["fingerprint"]:
            raise UserError(
                f"{path} inverts another real store than {paths[0]}: sample each store's embeddings separately"
            )
    parts = [load_checkpoint(p)[0] for p in paths]
    owner: dict[int, int] = {}
    for k, part in enumerate(parts):
        for row in part["source_index"].tolist():
            if owner.setdefault(row, k) != k:
                raise UserError(
                    f"{paths[k]} and {paths[owner[row]]} both hold store row {row}: give each image's embeddings once"
                )
    tensors = _joined(parts)
    pairs = torch.unique(torch.stack([tensors["group"], tensors["label"]]), dim=1)
    if len(torch.unique(pairs[0])) != pairs.shape[1]:
        raise UserError(
            f"the groups of {', '.join(map(str, paths))} mix classes: they were not written by synthkit invert"
        )
    meta = dict(metas[0])
    meta["sources"] = [
        {
            "path": str(p),
            "classes": m["params"]["classes"],
            "shard": m.get("shard", ""),
            "fingerprint": m["sources"][0]["fingerprint"],
        }
        for p, m in zip(paths, metas)
    ]
    meta["group_loss"] = {k: v for m in metas for k, v in m.get("group_loss", {}).items()}
    return tensors, meta


def summary_line(meta: dict[str, Any]) -> str:
    """What an inversion did, in a line: groups, the mean loss of the first and the last epoch, time, preview."""
    losses = list(meta["group_loss"].values())
    first = sum(v[0] for v in losses) / len(losses)
    final = sum(v[1] for v in losses) / len(losses)
    return f"{len(losses)} groups, loss {first:.4f} (first epoch) -> {final:.4f} (final), {meta['seconds']:.0f} s" + (
        f"; preview {meta['preview']}" if meta.get("preview") else ""
    )


@locked_output("out")
def merge_embeddings(paths: Sequence[Path], out: Path, overwrite: bool = False) -> Path:
    """Merge the shards of one inversion job into the file an unsharded run writes."""
    out = Path(out)
    check_output(out, [], overwrite, resume=False, resumable=False, inputs=paths)
    metas = [read_meta(p) for p in paths]
    if all(m.get("shard") for m in metas):
        order = shard_order([m["shard"] for m in metas])
        params = [{k: v for k, v in metas[i]["params"].items() if k != "shard"} for i in order]
        if any(p != params[0] for p in params):
            raise UserError("the shards were made with different options and cannot be merged")
        paths = [paths[i] for i in order]
    tensors, meta = load_embeddings(paths)
    meta = provenance(Kind.EMBEDDINGS, {**meta["params"], "shard": ""}, meta["sources"]) | {
        k: v
        for k, v in meta.items()
        if k not in ("kind", "command", "params", "synthkit_version", "created", "sources")
    }
    meta["shard"] = ""
    meta["seconds"] = round(sum(m.get("seconds", 0) for m in metas), 1)
    meta["image_steps"] = sum(m.get("image_steps", 0) for m in metas)
    save_checkpoint(out, tensors, meta)
    return out
