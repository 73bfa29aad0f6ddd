"""Generation throughput: synthkit's inversion step against the official one-group-at-a-time loop, at the
same precision, and DI sampling speed (images/s at 25 steps with guidance).

Both inversion loops make the same update (AdamW over each group of 100 at batch 50, a fresh latent
sample, noise and timestep per step); synthkit encodes every image once and keeps its latent
distribution, and steps `--groups` groups in one forward pass, while the official loop runs the VAE
encoder on every batch and one group per process.

`--model sd15` builds Stable Diffusion 1.5's exact shapes with random weights in memory (what
`synthkit model random --like sd15` saves; speed does not depend on the weights and nothing is
downloaded): use it on a GPU. `--model tiny` uses the tiny pipeline (for the ratio, on a CPU). Usage:
    python bench/generation_speed.py --model sd15 --resolution 128 --groups 8 --precision bf16
    python bench/generation_speed.py --model tiny --resolution 64 --groups 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from synthkit.core.config import InversionConfig
from synthkit.core.device import configure_threads, inversion_dtype, pick_device
from synthkit.generate.diffusion import (
    Diffusion,
    build_tiny_pipeline,
    decode,
    denoise,
    diffusion_from_pipeline,
    encode_images,
    load_diffusion,
    make_scheduler,
    random_pipeline,
    training_scheduler,
)
from synthkit.generate.inversion import GroupTables, draw, initial_table, inversion_loss

from common import machine

GROUP, BATCH = 100, 50  # the official CIFAR-10 setting


def sd15(device: torch.device, dtype: torch.dtype) -> Diffusion:
    """Stable Diffusion 1.5's shapes with random weights, on the device."""
    return diffusion_from_pipeline(random_pipeline("sd15", dtype=dtype), device, dtype, "sd15-shaped")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: list, windows: int, device: torch.device) -> list[list[float]]:
    """Seconds of each call of each function after one warm-up call each; the functions' windows alternate,
    so that drift in the machine's speed hits them all alike."""
    for fn in fns:
        fn()
    out = [[] for _ in fns]
    for _ in range(windows):
        for fn, seconds in zip(fns, out):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            seconds.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "tiny"], default="tiny")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--groups", type=int, default=2, help="groups of 100 synthkit steps in one forward pass (a chunk)"
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="for both inversion loops")
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="AdamW steps per timed window")
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    configure_threads()
    device = pick_device(args.device)
    dtype = inversion_dtype(device, args.precision)
    if args.model == "sd15":
        d = sd15(device, dtype)
    else:
        d = load_diffusion(str(build_tiny_pipeline(tempfile.mkdtemp() + "/tiny")), device, dtype)
    tokens, res = 5, args.resolution
    schedule = training_scheduler(d)
    timesteps = schedule.config.num_train_timesteps
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.groups * GROUP, 32, 32, 3), dtype=np.uint8)
    config = InversionConfig(group_size=GROUP, batch_size=BATCH)

    # synthkit: latents encoded once, `groups` groups per forward pass, AdamW over each group
    parts = [encode_images(d, images[s : s + BATCH], res) for s in range(0, len(images), BATCH)]
    mean, std = torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()
    tables = GroupTables(
        [
            initial_table(GROUP, tokens, d.hidden_size, GROUP, torch.Generator().manual_seed(g)).to(device)
            for g in range(args.groups)
        ],
        config,
    )
    generators = [torch.Generator(device=device).manual_seed(g) for g in range(args.groups)]
    halves = [[(g, slice(h * BATCH, (h + 1) * BATCH)) for g in range(args.groups)] for h in range(GROUP // BATCH)]

    def synthkit_steps():
        for s in range(args.steps):
            tables.step(d, schedule, halves[s % len(halves)], mean, std, generators)

    # the official loop: one group of 100, fixed batches of 50, the VAE encodes the batch at every step
    table = (
        initial_table(GROUP, tokens, d.hidden_size, GROUP, torch.Generator().manual_seed(0))
        .to(device)
        .requires_grad_(True)
    )
    optimizer = torch.optim.AdamW([table], lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator(device=device).manual_seed(0)

    def official_steps():
        for s in range(args.steps):
            rows = slice((s % 2) * BATCH, (s % 2 + 1) * BATCH)
            mu, sigma = encode_images(d, images[rows], res)
            draws = draw(generator, BATCH, mu.shape[1:], timesteps, device)
            loss = inversion_loss(d, schedule, table[rows], mu.float(), sigma.float(), draws).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    ours_s, theirs_s = timed([synthkit_steps, official_steps], args.windows, device)
    ours = [args.steps * args.groups * BATCH / s for s in ours_s]
    theirs = [args.steps * BATCH / s for s in theirs_s]

    sampling_dtype = torch.float16 if device.type == "cuda" else torch.float32
    d.unet.to(sampling_dtype)
    d.vae.to(sampling_dtype)
    d.dtype = sampling_dtype
    b = args.sample_batch
    latent = torch.randn(b, 4, res // d.vae_scale, res // d.vae_scale, device=device, dtype=sampling_dtype)
    cond = torch.randn(b, tokens, d.hidden_size, device=device, dtype=sampling_dtype)

    def sample_batch():
        out = denoise(d, make_scheduler(d, "ddim"), latent, cond, cond.mean(0, keepdim=True).expand_as(cond), 25, 2.0)
        decode(d, out, 32)

    sampling = [b / s for s in timed([sample_batch], args.windows, device)[0]]
    a, p, s = statistics.median(ours), statistics.median(theirs), statistics.median(sampling)
    print(
        f"machine: {machine()}; model {args.model}; resolution {res}; hidden {d.hidden_size}; inversion in "
        f"{args.precision} "
        f"for both loops; {args.windows} windows of {args.steps} AdamW steps"
    )
    print(
        f"inversion, synthkit ({args.groups} groups of {GROUP} per forward pass, cached latents): {a:10.1f} "
        "image-steps/s"
    )
    print(
        f"inversion, official loop (one group of {GROUP}, batch {BATCH}, VAE every step):      {p:10.1f} image-steps/s"
    )
    pairs = statistics.median(x / y for x, y in zip(ours, theirs))
    print(
        f"ratio synthkit / official: {a / p:.2f}x (median of the {args.windows} paired windows' ratios: {pairs:.2f}x)"
    )
    print(f"sampling, 25 DDIM steps with guidance, batch {b}, {str(sampling_dtype)[6:]}: {s:.2f} images/s")


if __name__ == "__main__":
    main()
