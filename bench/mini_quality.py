"""How good the miniature generator is (`--model mini`), measured against its goals and against `model tiny`.

A judge (a ResNet-18 trained by `synthkit train` on real CIFAR-10 training images alone) scores:
- the VAE's reconstruction PSNR on 1,000 real test images (100 per class);
- prompt samples (`a photo of a {class}`, 100 per class, default steps and guidance): the share the judge puts in the
  prompted class, for the mini model and for `model tiny` (random weights: chance is 10%);
- Diffusion Inversion: 20 training images per class inverted with `synthkit invert`, 5 samples per image with the DI
  defaults: the share the judge puts in the source's class;
- the Fréchet distance in the judge's penultimate features to the real test set, through `synthkit fidelity`.
Every step is a synthkit command, printed before it runs; outputs are cached in bench/.cache/mini-quality/ and reused
(delete the folder to start again). Prints the table of bench/README.md.
Usage: python bench/mini_quality.py [--model mini] [--judge PATH | --judge-steps 1000] [--updates 300]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import CACHE, cifar_store, machine

OUT = CACHE / "mini-quality"


def synthkit(*args: object) -> None:
    """Run one synthkit command (printed first, as a user would type it)."""
    words = [str(a) for a in args]
    print("$ synthkit " + shlex.join(words), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "synthkit", *words], check=True)
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def once(path: Path, *args: object) -> Path:
    """Run the command unless its output exists (the cache)."""
    if not path.exists():
        synthkit(*args)
    return path


def vae_psnr(model: str, store: Path, per_class: int = 100) -> float:
    """Mean PSNR (dB) of real images through the model's VAE (encoder mean, decoder) at the model's own size,
    compared at the store's size."""
    import torch

    from synthkit.diffusion import decode, encode_images, load_diffusion
    from synthkit.store import Store, balanced_subset

    diffusion = load_diffusion(model, torch.device("cpu"), torch.float32)
    with Store(store) as s:
        images = s.images(balanced_subset(s.labels, per_class, 0, len(s.classes)))
    size = images.shape[1]
    psnr = []
    for start in range(0, len(images), 100):
        batch = images[start : start + 100]
        mean, _ = encode_images(diffusion, batch, diffusion.native_resolution)
        back = decode(diffusion, mean, save_size=size).astype(np.float64)
        mse = ((back - batch.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
        psnr.extend(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))
    return float(np.mean(psnr))


def judge_scores(judge: Path, test: Path, stores: dict[str, Path], folder: Path, per_class: int) -> dict[str, dict]:
    """`synthkit fidelity` of the stores against the real test set in the judge's features: Fréchet distance and
    agreement (the share the judge puts in each image's own class)."""
    from synthkit.fidelity import fidelity

    args = ["fidelity", "--real", test, "--classifier", judge, "--per-class", per_class, "--out", folder]
    for path in stores.values():
        args += ["--data", path]
    print("$ synthkit " + shlex.join(map(str, args)), flush=True)
    rows = fidelity(test, list(stores.values()), judge, folder, per_class=per_class, device="cpu")
    by_store = {row["store"]: row for row in rows if row["class"] == "all" and row["features"] == "classifier"}
    return {name: by_store[path.stem] for name, path in stores.items()}


def judge_accuracy(judge: Path) -> tuple[float, str]:
    """The judge's own final test accuracy and how it was trained, from its file."""
    from synthkit.checkpoint import read_meta

    meta = read_meta(judge)
    how = f"{meta['command']} ({meta['steps']} steps of {meta['params'].get('batch_size')}, {meta['seconds']:.0f} s)"
    return float(meta.get("final_test_acc", float("nan"))), how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini", help="the generator to judge (default: the shipped miniature)")
    parser.add_argument("--judge", type=Path, default=None, help="a classifier trained on real CIFAR-10 alone")
    parser.add_argument("--judge-steps", type=int, default=1000, help="steps of the judge trained when none is given")
    parser.add_argument("--per-class", type=int, default=100, help="prompt samples per class")
    parser.add_argument("--invert-per-class", type=int, default=20, help="training images inverted per class")
    parser.add_argument("--updates", type=int, default=300, help="inversion updates per image")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tag = Path(args.model).name
    train, test = cifar_store("train"), cifar_store("test")
    print(f"machine: {machine()}")

    judge = args.judge or once(
        OUT / f"judge-{args.judge_steps}.safetensors",
        "train", "--data", train, "--recipe", "quick", "--steps", args.judge_steps, "--test", test,
        "--out", OUT / f"judge-{args.judge_steps}.safetensors", "--resume",
    )  # fmt: skip
    tiny = once(OUT / "tiny-sd", "model", "tiny", "--out", OUT / "tiny-sd")
    prompt = ["--prompt", "a photo of a {class}", "--per-class", args.per_class]
    stores = {
        "mini prompts": once(OUT / f"{tag}-prompts.h5", "sample", *prompt, "--model", args.model,
                             "--out", OUT / f"{tag}-prompts.h5"),
        "tiny prompts": once(OUT / "tiny-prompts.h5", "sample", *prompt, "--model", tiny,
                             "--out", OUT / "tiny-prompts.h5"),
    }  # fmt: skip
    sources = once(
        OUT / f"real-{args.invert_per_class}.h5",
        "subset", train, "--per-class", args.invert_per_class, "--out", OUT / f"real-{args.invert_per_class}.h5",
    )  # fmt: skip
    embeddings = once(
        OUT / f"{tag}-inv-{args.updates}.safetensors",
        "invert", "--class", "all", "--data", sources, "--model", args.model, "--updates", args.updates,
        "--out", OUT / f"{tag}-inv-{args.updates}.safetensors",
    )  # fmt: skip
    stores["mini DI"] = once(
        OUT / f"{tag}-inv-{args.updates}.h5",
        "sample", "--embeddings", embeddings, "--out", OUT / f"{tag}-inv-{args.updates}.h5",
    )  # fmt: skip
    scores = judge_scores(judge, test, stores, OUT / f"fidelity-{tag}", args.per_class)
    psnr = {"mini": vae_psnr(args.model, test), "tiny": vae_psnr(str(tiny), test)}
    accuracy, how = judge_accuracy(judge)

    print(f"\n{args.model} against its goals (judge: {judge}, {100 * accuracy:.2f}% on 10,000 real test images)")
    print("| measure | mini | tiny (random weights) | goal |")
    print("|---|---:|---:|---|")
    print(
        f"| VAE reconstruction PSNR, 1,000 real test images | {psnr['mini']:.2f} dB | {psnr['tiny']:.2f} dB | ≥ 24 dB |"
    )
    print(
        f"| prompt samples the judge puts in the prompted class ({args.per_class} per class) | "
        f"{100 * scores['mini prompts']['agreement']:.1f}% | {100 * scores['tiny prompts']['agreement']:.1f}% | ≥ 40% |"
    )
    print(
        f"| DI samples the judge puts in their source's class ({args.invert_per_class} images per class, "
        f"{args.updates} updates, 5 samples each) | {100 * scores['mini DI']['agreement']:.1f}% | – | ≥ 60% |"
    )
    frechet = {name: row["frechet"] for name, row in scores.items()}
    print(
        f"| Fréchet distance to the real test set, judge's features: DI / prompts | {frechet['mini DI']:.2f} / "
        f"{frechet['mini prompts']:.2f} | {frechet['tiny prompts']:.2f} (prompts) | DI < prompts < tiny |"
    )
    print(f"| judge's accuracy on the real test set | {100 * accuracy:.2f}% | | |")
    order = frechet["mini DI"] < frechet["mini prompts"] < frechet["tiny prompts"]
    print(f"\nFréchet order DI < prompts < tiny: {'holds' if order else 'does not hold'}")
    print(f"judge trained by: {how}")


if __name__ == "__main__":
    main()
