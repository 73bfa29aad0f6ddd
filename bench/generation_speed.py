"""Generation throughput: synthkit's inversion against a one-group-at-a-time loop like the paper's,
and sampling speed (images/s at 25 steps with guidance).

`--model sd15` builds an SD-1.5-shaped UNet and VAE from their configs with random weights (speed
does not depend on them; nothing is downloaded): use it on a GPU. `--model tiny` uses the tiny
pipeline (for the ratio only, on a CPU). Usage:
    python bench/generation_speed.py --model sd15 --resolution 128 --batch-size 256
    python bench/generation_speed.py --model tiny --resolution 64 --batch-size 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from common import machine
from synthkit.device import configure_threads, pick_device
from synthkit.diffusion import (Diffusion, build_tiny_pipeline, decode, denoise, encode_images, load_diffusion,
                                make_scheduler, training_scheduler)
from synthkit.inversion import adamw_rows, inversion_loss


def sd15(device: torch.device, dtype: torch.dtype) -> Diffusion:
    """UNet and VAE with Stable Diffusion 1.5's shapes and random weights; no text encoder needed."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    for part in (unet, vae):
        part.requires_grad_(False).to(device, dtype).eval()
    unet.to(memory_format=torch.channels_last)
    return Diffusion(unet, vae, None, None, dict(scheduler.config), "DDIMScheduler", device, dtype, "sd15-shaped")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, windows: int, device) -> list[float]:
    """Seconds of each call after one warm-up call."""
    fn()
    out = []
    for _ in range(windows):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd15", "tiny"], default="tiny")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=50, help="synthkit's inversion batch (spans groups)")
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    configure_threads()
    device = pick_device(args.device)
    if args.model == "sd15":
        d = sd15(device, torch.float32)
    else:
        d = load_diffusion(str(build_tiny_pipeline(tempfile.mkdtemp() + "/tiny")), device, torch.float32)
    hidden, tokens, res = d.hidden_size, 5, args.resolution
    schedule = training_scheduler(d)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(args.batch_size, 100), 32, 32, 3), dtype=np.uint8)

    # synthkit: latents cached once, a batch spanning groups, row-wise AdamW
    mean, std = (torch.cat(p) for p in zip(*[encode_images(d, images[s:s + 50], res) for s in range(0, len(images), 50)]))
    mean, std = mean.float(), std.float()
    n = len(images)
    emb = torch.randn(n, tokens, hidden, device=device) * 0.1
    m, v, count = torch.zeros_like(emb), torch.zeros_like(emb), torch.zeros(n, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def synthkit_steps():
        for _ in range(args.steps):
            rows = torch.randperm(n, generator=gen, device=device)[: args.batch_size]
            batch = emb[rows].clone().requires_grad_(True)
            inversion_loss(d, schedule, batch, mean[rows], std[rows], gen).mean().backward()
            with torch.no_grad():
                adamw_rows(emb, batch.grad, rows, m, v, count, 0.03, 0.01)

    # the paper's loop: one group of 100, batch 50, the VAE re-encodes the batch at every step, AdamW on the group
    group = torch.nn.Parameter(torch.randn(100, tokens, hidden, device=device) * 0.1)
    optimizer = torch.optim.AdamW([group], lr=0.03, weight_decay=0.01)

    def paper_steps():
        for _ in range(args.steps):
            rows = rng.choice(100, 50, replace=False)
            with torch.no_grad():
                mu, sigma = encode_images(d, images[rows], res)
            batch_gen = torch.Generator(device=device).manual_seed(int(rows[0]))
            loss = inversion_loss(d, schedule, group[torch.from_numpy(rows).to(device)], mu.float(), sigma.float(), batch_gen).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    ours = [args.steps * args.batch_size / s for s in timed(synthkit_steps, args.windows, device)]
    theirs = [args.steps * 50 / s for s in timed(paper_steps, args.windows, device)]

    sampling_dtype = torch.float16 if device.type == "cuda" else torch.float32
    d.unet.to(sampling_dtype)
    d.vae.to(sampling_dtype)
    d.dtype = sampling_dtype
    b = args.sample_batch
    latent = torch.randn(b, 4, res // d.vae_scale, res // d.vae_scale, device=device, dtype=sampling_dtype)
    cond = torch.randn(b, tokens, hidden, device=device, dtype=sampling_dtype)

    def sample_batch():
        out = denoise(d, make_scheduler(d, "ddim"), latent, cond, cond.mean(0, keepdim=True).expand_as(cond), 25, 2.0)
        decode(d, out, 32)

    sampling = [b / s for s in timed(sample_batch, args.windows, device)]
    a, p, s = statistics.median(ours), statistics.median(theirs), statistics.median(sampling)
    print(f"machine: {machine()}; model {args.model}; resolution {res}; hidden {hidden}; fp32 weights for inversion "
          f"(bf16 autocast on CUDA); {args.windows} windows of {args.steps} steps")
    print(f"inversion, synthkit (batch {args.batch_size}, cached latents): {a:10.1f} image-steps/s")
    print(f"inversion, paper-style loop (group of 100, batch 50):        {p:10.1f} image-steps/s")
    print(f"ratio synthkit / paper-style: {a / p:.2f}x")
    print(f"sampling, 25 DDIM steps with guidance, batch {b}, {str(sampling_dtype)[6:]}: {s:.2f} images/s")


if __name__ == "__main__":
    main()
