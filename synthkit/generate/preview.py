"""An inversion you can watch: <out>.preview.png shows real images beside what their current embeddings
reproduce, and the loss curve, at the start, every --preview-every updates and at the end (after the
validation images of diffusers' textual-inversion example). A long GPU run shows within minutes
whether it is working."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.outputs import written_whole
from ..core.paths import preview_path
from ..io.figures import image_grid
from .diffusion import Diffusion, decode, denoise, initial_noise, make_scheduler, sample_seed

PREVIEW_IMAGES = 8
PREVIEW_STEPS = 25


def preview_rows(n: int, k: int = PREVIEW_IMAGES) -> np.ndarray:
    """Up to k rows spread evenly over n, so a chunk that spans classes shows several."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


@torch.no_grad()
def reconstruct(
    diffusion: Diffusion, embeddings: torch.Tensor, resolution: int, steps: int = PREVIEW_STEPS
) -> np.ndarray:
    """What embeddings reproduce alone: DDIM, no guidance, no perturbation, from the same noise every time."""
    seeds = [sample_seed(0, i) for i in range(len(embeddings))]
    noise = initial_noise(seeds, diffusion.latent_shape(resolution), diffusion.device, diffusion.dtype)
    cond = embeddings.to(diffusion.device, diffusion.dtype)
    return decode(diffusion, denoise(diffusion, make_scheduler(diffusion, "ddim"), noise, cond, None, steps, 1.0))


def loss_figure(history: list[float], updates: int, width_px: int) -> Image.Image:
    """The loss per update (the mean over the chunk's images) and its running mean, as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, width_px / 100), 2.4), dpi=100)
    x = np.arange(1, len(history) + 1)
    if history:
        ax.plot(x, history, lw=0.8, color="0.5", label="loss per update")
        window = len(history) // 20
        if window > 1:
            smooth = np.convolve(history, np.ones(window) / window, mode="valid")
            ax.plot(x[window - 1 :], smooth, lw=1.6, color="C0", label=f"running mean of {window}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlim(0, updates)
    ax.set_xlabel("updates per image")
    ax.set_ylabel("noise-prediction MSE")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


class InversionPreview:
    """Redraws <out>.preview.png for the chunk being inverted, every `every` updates and at the end (every 0: never)."""

    def __init__(self, out: Path, diffusion: Diffusion, resolution: int, every: int, updates: int):
        self.path, self.name = preview_path(out), Path(out).name
        self.diffusion, self.resolution, self.every, self.updates = diffusion, resolution, every, updates
        self.rows = np.zeros(0, dtype=int)
        self.real = np.zeros((0, 1, 1, 3), dtype=np.uint8)
        self.title = ""

    def start_chunk(self, images: np.ndarray, title: str) -> None:
        """The real images of the chunk about to be inverted."""
        self.rows = preview_rows(len(images))
        self.real, self.title = images[self.rows], title

    def update(self, done: int, embeddings: torch.Tensor, history: list[float], final: bool = False) -> None:
        """Draw after `done` updates if it is time (the start, every `every` updates, the end; never if every is 0)."""
        if self.every and (final or done % self.every == 0):
            samples = reconstruct(
                self.diffusion, embeddings[torch.from_numpy(self.rows).to(embeddings.device)], self.resolution
            )
            self.draw(samples, history, done)

    def draw(self, samples: np.ndarray, history: list[float], done: int) -> Path:
        """Write the picture under a temporary name, then rename it (a viewer never sees half a file)."""
        title = f"{self.name}: {self.title}, after {done} of {self.updates} updates per image"
        grid = image_grid([self.real, samples], ["real", f"DDIM {PREVIEW_STEPS}"], cell=96, title=title)
        curve = loss_figure(history, self.updates, grid.width)
        canvas = Image.new("RGB", (max(grid.width, curve.width), grid.height + curve.height), "white")
        canvas.paste(grid, (0, 0))
        canvas.paste(curve, (0, grid.height))
        with written_whole(self.path) as tmp:
            canvas.save(tmp, format="PNG")
        return self.path
