"""A text-to-image model read as a zero-shot classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot
Classifier", ICCV 2023): an image belongs to the class whose prompt best predicts the noise added to its latent.

It judges whether synthetic images show the class they are labelled with, with no classifier to train: the shipped
miniature (`--model mini`) reads CIFAR-10 classes in seconds on a CPU. A generator judging its own prompt samples is
lenient (they were drawn to fit those prompts); real images and Diffusion Inversion samples, which come from no class
prompt, are judged fairly, so the real store's score is the yardstick."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import JUDGE
from ..core.outputs import written_whole
from ..core.progress import progress
from ..core.tables import Column
from ..generate.diffusion import Diffusion, encode_images, encode_text, training_scheduler

TIMESTEPS = (100, 250, 400, 550, 700)  # where a class prompt changes the noise prediction most


@torch.no_grad()
def zero_shot(
    diffusion: Diffusion,
    images: np.ndarray,
    classes: list[str],
    template: str = JUDGE.template,
    seed: int = JUDGE.seed,
    batch_size: int = JUDGE.batch_size,
    advance: Callable[[float], None] | None = None,
) -> np.ndarray:
    """The index of the class whose prompt best predicts each image's noise (summed over TIMESTEPS, the same noise
    for every class), for uint8 images (N, H, W, 3) at any size (resized to the model's own). `advance` is told of
    each batch's images a timestep at a time, so that a bar moves within a batch."""
    alphas = training_scheduler(diffusion).alphas_cumprod.to(diffusion.device)
    cond = encode_text(diffusion, [template.format(**{"class": c}) for c in classes])
    choice = []
    for start in range(0, len(images), batch_size):
        latents, _ = encode_images(diffusion, images[start : start + batch_size], diffusion.native_resolution)
        latents = latents.float()
        generator = torch.Generator().manual_seed(seed + start)
        errors = torch.zeros(len(latents), len(classes), device=diffusion.device)
        for t in TIMESTEPS:
            noise = torch.randn(latents.shape, generator=generator).to(diffusion.device)
            a = alphas[t]
            noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(diffusion.dtype)
            steps = torch.full((len(latents),), t, device=diffusion.device)
            for c in range(len(classes)):
                hidden = cond[c : c + 1].expand(len(latents), -1, -1)
                pred = diffusion.unet(noisy, steps, encoder_hidden_states=hidden).sample.float()
                errors[:, c] += ((pred - noise) ** 2).mean(dim=(1, 2, 3))
            if advance is not None:
                advance(len(latents) / len(TIMESTEPS))
        choice.append(errors.argmin(1).cpu())
    return torch.cat(choice).numpy()


def model_template(model: str) -> str:
    """The class prompt a model was trained with, as its synthkit.json records it (a miniature's `--template`), else
    JUDGE.template: the prompt the judge asks it with."""
    from ..core.meta import model_note

    return str(model_note(model).get("config", {}).get("template") or JUDGE.template)


def picked(path: Path, per_class: int, seed: int) -> dict[str, Any]:
    """A store's seeded pick of up to `per_class` images of every class: their rows and labels, the store's classes
    and kind, and how many of each class were taken (fewer where the store has fewer). The images are read when
    judged, a store at a time."""
    from ..io.store import Store

    with Store(path) as store:
        store.require_images(" to judge")
        rng = np.random.default_rng(seed)
        chosen = [rng.permutation(np.flatnonzero(store.labels == c))[:per_class] for c in range(len(store.classes))]
        pick = np.sort(np.concatenate(chosen))
        return {
            "rows": pick,
            "labels": store.labels[pick],
            "classes": list(store.classes),
            "kind": store.meta.get("kind", "?"),
            "per_class": [len(c) for c in chosen],
        }


def judge_stores(
    model: str,
    stores: list[Path],
    per_class: int = JUDGE.per_class,
    seed: int = JUDGE.seed,
    device: str | None = None,
    out: Path | None = None,
    template: str | None = None,
) -> list[dict[str, Any]]:
    """For each store, the share of a seeded pick (up to `per_class` images of every class) that the model puts in
    the image's own class, asked with `template` (default: the prompt the model was trained with, model_template);
    each row records the images taken of each class. Written to the JSON file `out` too when given (as the report
    reads it), which is checked before any work (jobs.check_destination: none of the stores, nor the model)."""
    from ..core.device import diffusion_dtype, job_device
    from ..core.errors import UserError
    from ..core.jobs import check_destination
    from ..generate.diffusion import load_diffusion
    from ..io.store import Store

    if out is not None:
        check_destination(out, [*stores, model])
    template = template or model_template(model)
    if "{class}" not in template:
        raise UserError(f"--template must contain {{class}}, got '{template}'")
    picks = [picked(path, per_class, seed) for path in stores]
    dev = job_device(device)
    diffusion = load_diffusion(model, dev, diffusion_dtype(dev))
    rows = []
    with progress() as bar:
        task = bar.add_task("judge", total=sum(len(p["rows"]) for p in picks))
        for path, p in zip(stores, picks):
            with Store(path) as store:
                images = store.images(p["rows"])
            judged = zero_shot(diffusion, images, p["classes"], template, seed, advance=lambda k: bar.advance(task, k))
            rows.append(
                {
                    "store": str(path),
                    "kind": p["kind"],
                    "images": len(images),
                    "per_class": p["per_class"],
                    "share": float((judged == p["labels"]).mean()),
                    "chance": 1 / len(p["classes"]),
                }
            )
    if out is not None:
        record = {"model": model, "template": template, "per_class_asked": per_class, "seed": seed, "rows": rows}
        with written_whole(out) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    return rows


def per_class_text(row: dict[str, Any]) -> str:
    """The images a row took of each class: '5', or '3-20' where its classes gave different counts ('?' in a record
    written before the rows said)."""
    counts = row.get("per_class")
    if not counts:
        return "?"
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def judged_line(row: dict[str, Any], model: str) -> str:
    """One store's share in a line, as `synthkit judge` prints it."""
    return (
        f"{row['store']} ({row['kind']}): {100 * row['share']:.1f}% of {row['images']} images judged their own "
        f"class by {model} (chance {100 * row['chance']:.0f}%)"
    )


# A row per store of the judge's rows: the report's table.
TABLE_COLUMNS = (
    Column("store", "store", lambda row: f"`{row['store']}`"),
    Column("kind", "kind", lambda row: str(row["kind"])),
    Column("images", "images", lambda row: str(row["images"]), right=True),
    Column("per_class", "per class", per_class_text, right=True),
    Column("share", "judged their own class", lambda row: f"{100 * row['share']:.1f}%", right=True),
)
