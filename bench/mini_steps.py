"""How many steps the mini-study's rows need: ResNet-18 under the `quick` recipe on the mini-study's real store (50
CIFAR-10 training images per class), at a few step budgets, each over 3 seeds, scored on its 2,000 real test images.

The budget is chosen where the seeds' spread is small against the gaps the study's claims are about (a few points)
and a doubled budget no longer gains more than that spread. Every step is a synthkit command, printed before it runs;
outputs are cached in bench/.cache/mini-steps/ (delete it to start again).
Usage: python bench/mini_steps.py [--steps 150 300 600] [--per-class 50] [--test-per-class 200] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics

from mini_quality import once

from common import CACHE, cifar_store, machine

OUT = CACHE / "mini-steps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[150, 300, 600], help="step budgets to compare")
    parser.add_argument("--per-class", type=int, default=50, help="real training images per class (PER_CLASS)")
    parser.add_argument("--test-per-class", type=int, default=200, help="real test images per class")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (SEEDS)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    train, test = cifar_store("train", args.per_class), cifar_store("test", args.test_per_class)
    print(f"machine: {machine()}")
    from synthkit.io.checkpoint import read_meta

    rows = []
    for steps in args.steps:
        pattern = OUT / f"real-{steps}-s{{seed}}.safetensors"
        seeds = [part for seed in args.seeds for part in ("--seed", seed)]
        once(
            OUT / f"real-{steps}-s{args.seeds[-1]}.safetensors",
            "train", "--data", train, "--recipe", "quick", "--steps", steps, *seeds, "--test", test, "--evals", 1,
            "--out", pattern, "--resume",
        )  # fmt: skip
        metas = [read_meta(str(pattern).format(seed=seed)) for seed in args.seeds]
        accuracy = [100 * meta["evals"][-1]["accuracy"] for meta in metas]
        seconds = sum(meta.get("seconds", 0) for meta in metas)
        rows.append((steps, accuracy, seconds))
    print(
        f"\nResNet-18, recipe quick (batch 32), {args.per_class} real images per class, "
        f"{10 * args.test_per_class} real test images, seeds {' '.join(map(str, args.seeds))}"
    )
    print("| steps | accuracy % per seed | mean ± std | seconds, all seeds |")
    print("|---:|---|---:|---:|")
    for steps, accuracy, seconds in rows:
        print(
            f"| {steps} | {' / '.join(f'{a:.2f}' for a in accuracy)} | {statistics.mean(accuracy):.2f} ± "
            f"{statistics.stdev(accuracy):.2f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
