"""Which Grad-CAM target layer gives the most faithful maps for synthkit's ResNet-18 at 32 px?

Trains ResNet-18s on real CIFAR-10 subsets (or takes --model files), explains the same seeded pick of real
test images at each candidate layer, and prints grad-cam's ROAD faithfulness (higher is more faithful)
beside the maps' size and concentration. The default of `synthkit gradcam --layer` is chosen from this.
Usage: python bench/gradcam_layers.py [--per-class 100,5000] [--steps 2930] [--n 256] [--model PATH ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from synthkit.analyse.gradcam import explain
from synthkit.classify.classifiers import CLASSIFIERS
from synthkit.classify.training import TrainConfig, train

from common import CACHE, cifar_store, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", default="100,5000", help="train a model on each real subset size (5000: all)")
    parser.add_argument("--model", type=Path, action="append", default=[], help="explain these classifiers instead")
    parser.add_argument(
        "--steps", type=int, default=2930, help="steps of the di recipe (15 epochs of 50,000 images at batch 256)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n", type=int, default=256, help="test images explained (the same for every layer)")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    test = cifar_store("test", args.test_per_class)
    models = list(args.model)
    if not models:
        for size in (int(s) for s in args.per_class.split(",")):
            out = CACHE / "models" / f"gradcam-real-{size}.safetensors"
            train(
                [cifar_store("train", None if size >= 5000 else size)],
                out,
                TrainConfig.from_recipe("di", steps=args.steps, batch_size=args.batch_size),
                device=args.device,
                overwrite=True,
            )
            models.append(out)
    print(f"machine: {machine()}; {args.n} real test images; ROAD over removal of 20/40/60/80% of pixels")
    print(f"{'model':<40} {'layer':<7} {'map':>5} {'ROAD':>7} {'entropy':>8} {'top10':>6} {'s':>6}")
    for model in models:
        for layer in CLASSIFIERS["resnet18"].cam_layers:
            start = time.perf_counter()
            s = explain([model], test, Path(tempfile.mkdtemp()), n=args.n, layer=layer, device=args.device)
            stats = next(iter(s["models"].values()))
            size = {"layer4": 4, "layer3": 8, "layer2": 16}[layer]
            print(
                f"{model.name:<40} {layer:<7} {size:>3}x{size:<1} {stats['road']['mean']:7.4f} "
                f"{stats['entropy']['mean']:8.3f} "
                f"{stats['top10_mass']['mean']:6.3f} {time.perf_counter() - start:6.1f}"
            )


if __name__ == "__main__":
    main()
