"""The generators' commands: caption, invert, sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.config import (
    CAPTION,
    DEFAULT_CAPTIONER,
    DEFAULT_MODEL,
    INVERT_JOB,
    PROMPT,
    REAL_STORE,
    SAMPLING,
    SEED,
    UNCONDS,
    DIConfig,
    InversionConfig,
)
from .app import app, command, print_store_line
from .options import (
    AUTO,
    DI,
    INV,
    MODEL_KINDS,
    Device,
    Dtype,
    Overwrite,
    Precision,
    Resume,
    Scheduler,
    Shard,
    Uncond,
    config_of,
    seed_option,
)


@command(app)
def caption(
    data: str = typer.Option(REAL_STORE, help="Store to caption (name or path)."),
    out: Path = typer.Option(
        ..., help="Store to write: the same images with a caption column, e.g. data/real-captions.h5."
    ),
    model: str = typer.Option(
        DEFAULT_CAPTIONER,
        help="BLIP captioning model: hub id or local folder (synthkit model tiny-blip makes a test one).",
    ),
    batch_size: int = typer.Option(CAPTION.batch_size, min=1, help="Images per batch."),
    seed: Annotated[int, seed_option("Seed of torch before each batch (BLIP's default generation is greedy).")] = SEED,
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Caption every image of a store with BLIP, as the original study made its Stable Diffusion prompts."""
    from ..core.paths import store_path
    from ..generate.captions import caption_store

    path = caption_store(
        store_path(data),
        out,
        model=model,
        batch_size=batch_size,
        seed=seed,
        device=device,
        overwrite=overwrite,
        resume=resume,
    )
    print_store_line(path)


@command(app)
def invert(
    class_: str = typer.Option(..., "--class", help="Class name, comma-separated names, or all."),
    data: str = typer.Option(REAL_STORE, help="Real store to invert (name or path)."),
    out: Path = typer.Option(
        ...,
        help="Embeddings file to write, e.g. models/inv/airplane.safetensors (and its preview, "
        "models/inv/airplane.preview.png).",
    ),
    model: str = typer.Option(DEFAULT_MODEL, help=f"The Stable Diffusion model: {MODEL_KINDS}."),
    tokens: int = typer.Option(INV.tokens, min=1, help="Tokens per learned embedding."),
    resolution: int | None = typer.Option(
        INV.resolution,
        help="Images are resized (PIL bicubic, as the official code) to this size; a multiple of 8 (default: 128, the "
        "official code's, or the model's own size when smaller).",
    ),
    lr: float = typer.Option(INV.lr, help="AdamW learning rate."),
    weight_decay: float = typer.Option(
        INV.weight_decay, help="AdamW weight decay (applied to the whole group every step, as the official code)."
    ),
    group_size: int = typer.Option(
        INV.group_size,
        min=1,
        help="Images per (class-pure) group; each group has its own AdamW, and its table starts uniform in "
        "+-1/sqrt(group size).",
    ),
    batch_size: int = typer.Option(
        INV.batch_size, min=1, help="Images of a group per AdamW step (fixed, unshuffled batches as the official code)."
    ),
    updates: int = typer.Option(
        INV.updates,
        min=1,
        help=f"Gradient updates per image (epochs). The default {INV.updates} is the official scripts' (train_steps "
        f"{INV.updates}, loaded for CIFAR as learned_embeds-steps-{INV.updates * INV.steps_per_update()}): with "
        f"groups of {INV.group_size} at batch {INV.batch_size}, {INV.updates * INV.steps_per_update()} AdamW steps "
        "per group.",
    ),
    chunk_groups: int = typer.Option(
        INV.chunk_groups,
        min=1,
        help="Groups stepped together in one forward pass (the unit of sharding); does not change the result.",
    ),
    precision: Precision = typer.Option(
        Precision(INV.precision),
        help="fp32 (the official code's; TF32 matmuls on CUDA) or bf16 (UNet and VAE weights in bfloat16: faster on "
        "GPUs, embeddings and AdamW stay fp32).",
    ),
    seed: Annotated[int, seed_option("Seed of the initial tables, latent samples, noise and timesteps.")] = INV.seed,
    checkpoint_every: int = typer.Option(
        INVERT_JOB.checkpoint_every, min=1, help="Save resumable state about every K steps."
    ),
    preview_every: int = typer.Option(
        INVERT_JOB.preview_every,
        min=0,
        help="Redraw OUT's .preview.png (real images beside DDIM samples of their embeddings, and the loss curve) "
        "every K updates; also drawn at the start and the end (0: no preview).",
    ),
    shard: Shard = "",
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Diffusion Inversion: learn a conditioning embedding per real image with the diffusion model frozen, as the
    official code."""
    from ..core.paths import store_path
    from ..generate.inversion import run_invert, summary_line
    from ..io.checkpoint import read_meta

    config = config_of(InversionConfig, locals())
    out = run_invert(
        store_path(data),
        out,
        class_,
        model,
        config,
        device=device,
        shard=shard,
        checkpoint_every=checkpoint_every,
        preview_every=preview_every,
        overwrite=overwrite,
        resume=resume,
        say=typer.echo,
    )
    typer.echo(f"{out}: {summary_line(read_meta(out))}")


@command(app)
def sample(
    out: Path = typer.Option(..., help="Store to write, e.g. data/sd.h5 or data/inv.h5."),
    prompt: list[str] = typer.Option(
        [], help='Prompt template(s) with {class}, e.g. "a photo of a {class}" (repeatable).'
    ),
    prompt_file: Path | None = typer.Option(None, help="File of templates, one per line."),
    prompt_from: str | None = typer.Option(
        None,
        help="Prompt mode: each --init image's own text as its prompt, from this text column of the init store "
        "(caption, made by synthkit caption): the original study's SD row.",
    ),
    per_class: int = typer.Option(PROMPT.per_class, min=1, help="Prompt mode: images per class."),
    classes: str | None = typer.Option(
        None,
        help="Prompt mode: comma-separated class names, or a store whose classes to use (default: the --init "
        "store's, else CIFAR-10's).",
    ),
    negative: str = typer.Option("", help="Prompt mode: negative prompt."),
    init: str | None = typer.Option(None, help="Prompt mode: img2img from this real store (name or path)."),
    strength: float = typer.Option(PROMPT.strength, help="img2img: share of the schedule re-noised (0-1]."),
    embeddings: list[Path] = typer.Option(
        [],
        help="DI mode: embeddings file(s) from synthkit invert (repeatable; shell globs work). Give every class's "
        "file in one run: groups stay apart and the default unconditional input mixes the classes.",
    ),
    only: str | None = typer.Option(
        None,
        help="DI mode: sample only the embeddings of this store's images: the inverted store, or a subset of it made "
        "by synthkit subset (partners, groups and the unconditional mean come from its images alone).",
    ),
    per_image: int = typer.Option(DI.per_image, min=1, help="DI mode: samples per learned embedding."),
    interp: float = typer.Option(
        DI.interp, help="DI mode: alpha, interpolation towards a partner drawn from the image's own group (same class)."
    ),
    noise: float = typer.Option(DI.noise, help="DI mode: lambda, scale of the Gaussian perturbation."),
    eta: float = typer.Option(
        DI.eta,
        min=0,
        help="DI mode: eta of a scheduler whose step takes it (DDIM: 1 adds fresh noise every step, 0 is "
        "deterministic); the official pipeline passes 1, which SD 1.x's own PNDM ignores.",
    ),
    uncond: Uncond = typer.Option(
        Uncond(DI.uncond),
        help=f"DI mode: unconditional input of guidance: {', '.join(UNCONDS)}. mixed = the mean of every loaded "
        "embedding, all classes (the official code's class-mixed group mean); group = the mean of the image's "
        "class-pure group; empty = the empty prompt.",
    ),
    model: str | None = typer.Option(
        None, help=f"The Stable Diffusion model (default: {DEFAULT_MODEL}, or the embeddings' model): {MODEL_KINDS}."
    ),
    guidance: float | None = typer.Option(
        None, help=f"Classifier-free guidance (default {PROMPT.guidance} for prompts, {DI.guidance} for DI)."
    ),
    steps: int | None = typer.Option(
        None, min=1, help=f"Sampling steps (default {PROMPT.steps} for prompts, {DI.steps} for DI)."
    ),
    scheduler: Scheduler = typer.Option(
        Scheduler(SAMPLING.scheduler), help="model (the checkpoint's own, as the official code), ddim, dpm++ or pndm."
    ),
    resolution: int | None = typer.Option(
        None, help="Generation size (default: the model's, or the inversion's for DI)."
    ),
    save_size: int | None = typer.Option(
        None,
        help="Store images resized (PIL bicubic) to this size (default: prompts keep the generation size; DI the "
        "size of the images it inverted).",
    ),
    batch_size: int = typer.Option(SAMPLING.batch_size, min=1, help="Images per batch."),
    seed: Annotated[int, seed_option("Seed of every random choice (each sample has its own, derived from it).")] = SEED,
    dtype: Dtype = typer.Option(Dtype(SAMPLING.dtype), help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    shard: Shard = "",
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Generate images from class prompts (optionally img2img), or from learned DI embeddings (--embeddings)."""
    from ..core.paths import store_path
    from ..generate.sampling import SamplingConfig, run_sample

    config = config_of(SamplingConfig, locals())
    out = run_sample(
        out,
        templates=prompt,
        prompt_file=prompt_file,
        embeddings=embeddings,
        only=store_path(only) if only else None,
        classes=classes,
        per_class=per_class,
        negative=negative,
        init=store_path(init) if init else None,
        strength=strength,
        di=DIConfig(per_image=per_image, interp=interp, noise=noise, uncond=uncond, eta=eta),
        config=config,
        model=model,
        device=device,
        shard=shard,
        overwrite=overwrite,
        resume=resume,
        say=typer.echo,
        prompt_from=prompt_from,
    )
    print_store_line(out)
