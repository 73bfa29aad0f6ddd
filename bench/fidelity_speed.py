"""Time of `synthkit fidelity` on 10,000 real test images against 10,000 real training images (1,000 per class).

Trains a throwaway classifier for a few steps (the features' quality does not change the time), then runs
`fidelity` once and prints the seconds. Usage: python bench/fidelity_speed.py [--per-class 1000] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from synthkit.analyse.fidelity import fidelity
from synthkit.classify.training import TrainConfig, train

from common import CACHE, cifar_store, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    real, test = cifar_store("train", args.per_class), cifar_store("test", args.per_class)
    classifier = CACHE / "models" / "fidelity-bench.safetensors"
    train(
        [real], classifier, TrainConfig.from_recipe("quick", steps=5, batch_size=64), device=args.device, overwrite=True
    )
    start = time.perf_counter()
    rows = fidelity(real, [test], classifier, Path(tempfile.mkdtemp()), per_class=args.per_class, device=args.device)
    seconds = time.perf_counter() - start
    row = next(r for r in rows if r["class"] == "all")
    print(f"machine: {machine()}")
    print(
        f"fidelity, {row['n_fake']} test images against {row['n_real']} training images (all classes and each class): "
        f"{seconds:.1f} s; Fréchet {row['frechet']:.3f}, precision {row['precision']:.3f}, recall {row['recall']:.3f}"
    )


if __name__ == "__main__":
    main()
