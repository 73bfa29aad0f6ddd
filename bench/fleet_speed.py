"""Several classifiers in one job against the same classifiers trained one after another, in the same run.

Each classifier is a ResNet-18 under the `di` recipe's batch (128 by default) on the same real store, with its own
seed. One job trains all N with `synthkit.classify.training.train_many` (they advance a step each in turn; on CUDA
each on its own stream); the baseline trains the same N one after another with `train`. Both include loading the store
and building the models, as a user's job would. Windows alternate, so that drift in the machine's speed hits both alike;
prints images/s summed over the classifiers (median over windows) and the ratio.
Usage: python bench/fleet_speed.py [--classifiers 8] [--steps 50] [--batch-size 128] [--windows 3] [--per-class N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from synthkit.classify.training import TrainJob, train, train_many
from synthkit.core.config import TrainConfig

from common import cifar_store, machine


def jobs(folder: Path, store: Path, n: int, config: TrainConfig) -> list[TrainJob]:
    return [
        TrainJob([store], folder / f"m{k}.safetensors", TrainConfig(**{**config.__dict__, "seed": k})) for k in range(n)
    ]


def train_alone(jobs: list[TrainJob], device: str) -> None:
    """The baseline: each classifier trained by itself, one after another."""
    for job in jobs:
        train(job.data, job.out, job.config, device=device)


def timed(fn, *args, **kwargs) -> float:
    """Seconds of fn(*args, **kwargs), the GPU's queue included."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifiers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="steps per classifier in each window")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--windows", type=int, default=3, help="timed windows of each (after one warm-up window)")
    parser.add_argument("--per-class", type=int, default=None, help="training images per class (default: all 5,000)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    store = cifar_store("train", args.per_class)
    config = TrainConfig.from_recipe(
        "di", steps=args.steps, batch_size=args.batch_size, evals=0, compile=args.compile or None
    )
    images = args.classifiers * args.steps * args.batch_size
    print(
        f"machine: {machine()}; {args.classifiers} classifiers x {args.steps} steps at batch {args.batch_size} per "
        "window; "
        f"{args.windows} alternating windows after a warm-up"
    )
    rates: dict[str, list[float]] = {"one job": [], "one after another": []}
    with tempfile.TemporaryDirectory() as tmp:
        for w in range(args.windows + 1):
            fleet_jobs = jobs(Path(tmp) / str(w) / "fleet", store, args.classifiers, config)
            alone_jobs = jobs(Path(tmp) / str(w) / "alone", store, args.classifiers, config)
            fleet = timed(train_many, fleet_jobs, device=args.device)
            alone = timed(train_alone, alone_jobs, device=args.device)
            if w:
                rates["one job"].append(images / fleet)
                rates["one after another"].append(images / alone)
    a, b = (statistics.median(rates[k]) for k in ("one job", "one after another"))
    for name, value in (("one job", a), ("one after another", b)):
        print(
            f"  {name:<18} {value:10.0f} img/s summed over {args.classifiers} classifiers "
            f"(windows: {', '.join(f'{r:.0f}' for r in rates[name])})"
        )
    print(f"  ratio one job / one after another: {a / b:.2f}x")


if __name__ == "__main__":
    main()
