"""Test accuracy and training time against the number of real images per class (ResNet-18).

Trains `synthkit train` on seeded class-balanced subsets of CIFAR-10 and scores each model on the
real test set; prints a markdown table (also written to --out).
Usage: python bench/accuracy_vs_size.py [--sizes 100,250,500,1000,5000] [--recipe di] [--steps N] [--test-per-class N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from synthkit.classify.evaluation import evaluate
from synthkit.classify.training import TrainConfig, train

from common import CACHE, cifar_store, machine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,250,500,1000,5000", help="images per class, comma-separated")
    parser.add_argument("--recipe", default="di", help="training recipe (synthkit/core/config.py)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--test-per-class", type=int, default=None, help="score on a subset of the test set (default: all 10,000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=CACHE / "accuracy_vs_size.md")
    args = parser.parse_args()
    test = cifar_store("test", args.test_per_class)
    config = TrainConfig.from_recipe(
        args.recipe, steps=args.steps, batch_size=args.batch_size, seed=args.seed, compile=args.compile or None
    )
    lines = [
        f"machine: {machine()}; recipe {args.recipe}: {config.steps} steps of {config.batch_size}; seed {args.seed}; "
        f"test images: {'all' if args.test_per_class is None else 10 * args.test_per_class}",
        "",
        "| real images per class | train images | test accuracy % | train time s | train img/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in (int(s) for s in args.sizes.split(",")):
        data = cifar_store("train", None if size >= 5000 else size, args.seed)
        out = CACHE / "models" / f"resnet18-{size}.safetensors"
        start = time.perf_counter()
        meta = train([data], out, config, device=args.device, overwrite=True)
        seconds = time.perf_counter() - start
        row = evaluate([out], test, CACHE / "results", device=args.device)[0]
        images = meta["sources"][0]["count"]
        lines.append(
            f"| {size} | {images} | {100 * row['accuracy']:.2f} | {seconds:.0f} | "
            f"{meta['images_seen'] / meta['seconds']:.0f} |"
        )
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
