"""Pictures people would rather look at than read: image grids with row labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from .store import Store


def image_grid(
    rows: Sequence[np.ndarray],
    labels: Sequence[str],
    cell: int = 64,
    pad: int = 2,
    label_width: int = 110,
    title: str = "",
) -> Image.Image:
    """One row of images (B, H, W, 3 uint8) per label, each scaled to `cell` pixels, labels on the left."""
    cols = max((len(r) for r in rows), default=0)
    top = 24 if title else 0
    width = label_width + cols * (cell + pad) + pad
    height = top + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    for r, (images, label) in enumerate(zip(rows, labels)):
        y = top + pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 8), label, fill="black", font=font)
        for c, image in enumerate(images):
            resample = Image.NEAREST if image.shape[0] < cell else Image.LANCZOS
            tile = Image.fromarray(image).resize((cell, cell), resample)
            canvas.paste(tile, (label_width + pad + c * (cell + pad), y))
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Save a PIL image, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def store_grid(store: Store, per_row: int = 10, seed: int = 0, cell: int = 64) -> Image.Image:
    """A grid of a store's images: a row per class, `per_row` seeded random picks in each."""
    rng = np.random.default_rng(seed)
    labels = store.labels
    rows = []
    for c in range(len(store.classes)):
        members = np.flatnonzero(labels == c)
        pick = np.sort(rng.choice(members, size=min(per_row, len(members)), replace=False))
        rows.append(store.images(pick))
    kind = store.meta.get("kind", "?")
    return image_grid(rows, store.classes, cell=cell, title=f"{store.path.name} ({kind}, {len(store)} images)")


def show_store(
    path: str | Path, out: str | Path, per_row: int = 10, seed: int = 0, cell: int = 64, overwrite: bool = False
) -> Path:
    """`synthkit show`: the grid of a store written to the image `out` (.png or .jpg), once `out` is checked (not the
    store, a file that can be written and is not there unless `overwrite`, a grid that fits the memory budget)."""
    from ..core.errors import UserError
    from ..core.jobs import check_destination, check_fits
    from ..core.memory import image_bytes, ram_budget
    from .store import Store

    check_destination(out, [path])
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out} already exists: pass --overwrite to replace it")
    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--out {out}: the grid is written as .png (or .jpg); give a name ending in one of them")
    with Store(path) as store:
        store.require_images(": nothing to show")
        check_fits(
            image_bytes(len(store.classes) * per_row, cell),
            ram_budget(),
            f"a grid of {len(store.classes)} x {per_row} images of {cell} px",
        )
        grid = store_grid(store, per_row=per_row, seed=seed, cell=cell)
    return save_image(grid, out)


def prompt_sheet(
    rows: Sequence[tuple[np.ndarray | None, np.ndarray, str]], cell: int = 64, text_width: int = 520, title: str = ""
) -> Image.Image:
    """A row per sample: its source image (img2img; blank when none), the sample, and the prompt that made it."""
    import textwrap

    pad, top = 4, 24 if title else 0
    canvas = Image.new("RGB", (2 * (cell + pad) + text_width + pad, top + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    for r, (source, sample, text) in enumerate(rows):
        y = top + pad + r * (cell + pad)
        for c, image in enumerate((source, sample)):
            if image is not None:
                canvas.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (pad + c * (cell + pad), y))
        lines = textwrap.wrap(text, width=max(20, text_width // 7))[: max(1, cell // 16)]
        draw.multiline_text((2 * (cell + pad) + pad, y + 2), "\n".join(lines), fill="black", font=font, spacing=2)
    return canvas


def plot_evaluations(path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """A classifier's test accuracy against step, drawn from the evaluations its own file records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.errors import UserError
    from ..core.jobs import check_destination
    from ..core.outputs import written_whole
    from .checkpoint import read_meta

    check_destination(out, [path])
    if Path(out).suffix.lower() != ".png":
        raise UserError(f"--plot {out}: the curve is written as .png; give a name ending in it")
    if Path(out).exists() and not overwrite:
        raise UserError(f"{out} already exists: pass --overwrite to replace it")
    meta = read_meta(path)
    if meta.get("kind") != "classifier":
        raise UserError(f"{path} is not a classifier (kind {meta.get('kind', '?')}): --plot draws a classifier's curve")
    evals = meta.get("evals") or []
    if not evals:
        raise UserError(f"{path} records no evaluations (trained without a test store): there is no curve to draw")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([e["step"] for e in evals], [100 * e["accuracy"] for e in evals], marker="o")
    ax.set(xlabel="step", ylabel="test accuracy %", title=f"{Path(path).name} ({meta.get('recipe', '?')})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with written_whole(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out)
