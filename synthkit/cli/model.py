"""`synthkit model ...`: the generators synthkit builds (the miniature, random-weight pipelines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..core.config import (
    LIKES,
    MINI,
    REAL_STORE,
    SEED,
)
from ..core.paths import MODELS_DIR
from .app import Group, app, command
from .options import (
    AUTO,
    Device,
    Like,
    Overwrite,
    Resume,
    seed_option,
)

model_app = typer.Typer(
    cls=Group,
    help="The generators synthkit builds: train the miniature (model train; the shipped one is --model mini), or "
    "random-weight pipelines for tests and benchmarks (model tiny, tiny-blip, random).",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


def _tiny_command(name: str, folder: Path, what: str, note: str, build: str) -> None:
    """`synthkit model tiny|tiny-blip`: one command shape for the small random-weight models built offline."""

    @command(model_app, name, help=f"Build a small random-weight {what} offline (for tests, demos and smoke tests).")
    def tiny_command(
        out: Path = typer.Option(folder, help=f"Folder to write the {what} to."),
        seed: Annotated[int, seed_option("Seed of the random weights.")] = SEED,
        overwrite: Overwrite = False,
    ) -> None:
        import importlib

        module, function = build.rsplit(".", 1)
        getattr(importlib.import_module(module, __package__), function)(out, seed=seed, overwrite=overwrite)
        typer.echo(f"wrote {out} (random weights: {note})")


_tiny_command(
    "tiny",
    MODELS_DIR / "tiny-sd",
    "Stable Diffusion pipeline",
    "it makes noise, not pictures",
    "..generate.diffusion.build_tiny_pipeline",
)
_tiny_command(
    "tiny-blip",
    MODELS_DIR / "tiny-blip",
    "BLIP captioner",
    "its captions are random words",
    "..generate.captions.build_tiny_captioner",
)


@command(model_app, "train")
def model_train(
    data: str = typer.Option(REAL_STORE, help="Store to learn from (name or path), e.g. CIFAR-10's training set."),
    out: Path = typer.Option(MODELS_DIR / "mini-sd", help="Folder to write the diffusers pipeline to."),
    vae_steps: int = typer.Option(MINI.vae_steps, min=1, help="Stage 1: VAE steps."),
    vae_batch_size: int = typer.Option(MINI.vae_batch_size, min=1, help="Stage 1: images per VAE step."),
    steps: int = typer.Option(MINI.steps, min=1, help="Stage 2: UNet and text-encoder steps."),
    batch_size: int = typer.Option(MINI.batch_size, min=1, help="Stage 2: latents per step."),
    lr: float = typer.Option(MINI.lr, help="Stage 2: peak AdamW learning rate (warm-up, then cosine to a tenth)."),
    warmup_steps: int = typer.Option(MINI.warmup_steps, min=0, help="Steps of linear learning-rate warm-up."),
    ema: float = typer.Option(MINI.ema, help="Stage 2: decay of the weights' moving average that ships."),
    vae_lr: float = typer.Option(MINI.vae_lr, help="Stage 1: peak AdamW learning rate."),
    template: str = typer.Option(MINI.template, help="The class prompt it learns, with {class}."),
    uncond_prob: float = typer.Option(MINI.uncond_prob, help="Share of steps with the empty prompt (for guidance)."),
    width: int = typer.Option(
        MINI.unet_channels[0], min=32, help="UNet width: its three levels have WIDTH, 2 WIDTH and 2 WIDTH channels."
    ),
    vae_width: int = typer.Option(
        MINI.vae_channels[0], min=16, help="VAE width: its three levels have VAE_WIDTH, 2 and 2 VAE_WIDTH channels."
    ),
    latent_channels: int = typer.Option(MINI.latent_channels, min=1, help="Channels of the latents (SD's 4)."),
    preview_every: float = typer.Option(
        MINI.preview_every, min=0, help="Seconds between preview grids (OUT.preview.png, a row per class); 0: none."
    ),
    instance_share: float = typer.Option(
        MINI.instance_share,
        help="Stage 2: share of each batch conditioned on an instance code in DI's format (an encoder's code of the "
        "row's own latent) instead of a prompt, so that Diffusion Inversion can land; 0: prompts only.",
    ),
    code_dim: int = typer.Option(MINI.code_dim, min=1, help="Stage 2: the instance encoder's last hidden width."),
    code_noise: float = typer.Option(
        MINI.code_noise, help="Stage 2: instance codes get noise of a std drawn in [CODE_NOISE_MIN, CODE_NOISE]."
    ),
    code_noise_min: float = typer.Option(MINI.code_noise_min, help="Stage 2: the least noise on an instance code."),
    start_from: str = typer.Option(
        None,
        help="A trained miniature (folder, or mini): keep its VAE (no stage 1) and start the UNet and text encoder "
        "from its weights.",
    ),
    seed: Annotated[int, seed_option("Seed of the weights, the batches and the noise.")] = SEED,
    device: Device = AUTO,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Train a miniature Stable Diffusion on a store, in SD's own format: VAE first, then UNet and text encoder on
    class prompts. It loads as SD loads (--model FOLDER); the one trained on CIFAR-10 ships as --model mini."""
    from dataclasses import replace

    from ..core.paths import store_path
    from ..generate.minisd import train_mini

    config = replace(
        MINI,
        vae_steps=vae_steps,
        vae_batch_size=vae_batch_size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        ema=ema,
        vae_lr=vae_lr,
        template=template,
        uncond_prob=uncond_prob,
        unet_channels=(width, 2 * width, 2 * width),
        vae_channels=(vae_width, 2 * vae_width, 2 * vae_width),
        latent_channels=latent_channels,
        preview_every=preview_every,
        instance_share=instance_share,
        code_dim=code_dim,
        code_noise=code_noise,
        code_noise_min=code_noise_min,
        start_from=start_from,
        seed=seed,
    )
    record = train_mini(
        store_path(data), out, config, device=device, overwrite=overwrite, resume=resume, say=typer.echo
    )
    typer.echo(
        f"{out}: {record['images']} images of {len(record['classes'])} classes at {record['image_size']} px, "
        f"VAE PSNR {record['final_vae_psnr']:.2f} dB (training), {record['seconds'] / 60:.1f} min on "
        f"{record['machine']}"
    )


@command(model_app, "random")
def model_random(
    out: Path = typer.Option(..., help="Folder to write the diffusers pipeline to (about 2 GB in fp16)."),
    like: Like = typer.Option(
        Like(LIKES[0]), help="Architecture whose exact shapes to copy: sd15 (Stable Diffusion 1.5)."
    ),
    seed: Annotated[int, seed_option("Seed of the random weights.")] = SEED,
    overwrite: Overwrite = False,
) -> None:
    """Build a full-size random-weight Stable Diffusion pipeline offline (for smoke tests and benchmarks at real
    scale)."""
    import time

    from ..generate.diffusion import build_random_pipeline, folder_bytes, like_spec, parameter_counts

    like_spec(like)
    started = time.perf_counter()
    build_random_pipeline(out, like=like, seed=seed, overwrite=overwrite)
    counts = {k: f"{v / 1e6:.1f}M" for k, v in parameter_counts(out).items()}
    typer.echo(
        f"wrote {out}: {like}-shaped, UNet {counts['unet']}, text encoder {counts['text_encoder']}, "
        f"VAE {counts['vae']} parameters, {folder_bytes(out) / 1e9:.2f} GB, {time.perf_counter() - started:.0f} s "
        "(random weights: it makes noise, not pictures)"
    )
