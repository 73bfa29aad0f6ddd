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

    from synthkit.generate.diffusion import decode, encode_images, load_diffusion
    from synthkit.io.store import Store, balanced_subset

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


def reconstructions(model: str, images: np.ndarray) -> np.ndarray:
    """Images through the model's VAE (encoder mean, decoder) at the model's size, back at the images' size."""
    import torch

    from synthkit.generate.diffusion import decode, encode_images, load_diffusion

    diffusion = load_diffusion(model, torch.device("cpu"), torch.float32)
    out = []
    for start in range(0, len(images), 100):
        mean, _ = encode_images(diffusion, images[start : start + 100], diffusion.native_resolution)
        out.append(decode(diffusion, mean, save_size=images.shape[1]))
    return np.concatenate(out)


def judge_share(judge: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The share of images the judge puts in their given class."""
    import torch

    from synthkit.classify.evaluation import predict
    from synthkit.classify.model import load_classifier, resize_images

    model, meta = load_classifier(judge, torch.device("cpu"))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != meta["image_size"]:
        x = resize_images(x, meta["image_size"])
    with torch.no_grad():
        preds = predict(model, x, torch.device("cpu")).numpy()
    return float((preds == labels).mean())


def retrieval(samples: np.ndarray, own: np.ndarray, sources: np.ndarray) -> float:
    """The share of samples whose nearest source in pixels (L2 over all values) is the one they were inverted from
    (chance: 1 / the number of sources)."""
    a = samples.reshape(len(samples), -1).astype(np.float64)
    b = sources.reshape(len(sources), -1).astype(np.float64)
    d = (a**2).sum(1)[:, None] - 2 * a @ b.T + (b**2).sum(1)[None, :]
    return float((d.argmin(1) == own).mean())


def di_measures(model: str, tag: str, sources: Path, judge: Path, updates: int, lr: float | None = None) -> dict:
    """Invert the sources at `updates`, sample them with the DI defaults and at noise 0 and interpolation 0, and
    measure: the loss curve, the judge's share of the samples, and how often a sample retrieves its own source."""
    from synthkit.io.checkpoint import read_meta
    from synthkit.io.store import Store

    name = f"{tag}-inv-{updates}" + (f"-lr{lr:g}" if lr else "")
    embeddings = once(
        OUT / f"{name}.safetensors",
        "invert", "--class", "all", "--data", sources, "--model", model, "--updates", updates,
        *(["--lr", lr] if lr else []), "--out", OUT / f"{name}.safetensors",
    )  # fmt: skip
    samples = once(OUT / f"{name}.h5", "sample", "--embeddings", embeddings, "--out", OUT / f"{name}.h5")
    exact = once(
        OUT / f"{name}-exact.h5",
        "sample", "--embeddings", embeddings, "--per-image", 1, "--noise", 0, "--interp", 0,
        "--out", OUT / f"{name}-exact.h5",
    )  # fmt: skip
    meta = read_meta(embeddings)
    with Store(sources) as s:
        source_images = s.images()
    with Store(samples) as s:
        share = judge_share(judge, s.images(), s.labels)
    with Store(exact) as s:
        found = retrieval(s.images(), s.column("source_index"), source_images)
        exact_share = judge_share(judge, s.images(), s.labels)
    history = meta.get("loss_history", [])
    return {
        "updates": updates,
        "lr": meta["params"]["lr"],
        "history": history,
        "fixed": meta.get("fixed_loss", []),
        "share": share,
        "exact_share": exact_share,
        "retrieval": found,
        "seconds": meta["seconds"],
        "sources": len(source_images),
    }


def curve_points(history: list[float]) -> str:
    """The loss at a few updates of the curve: first, 10%, 30%, half, final."""
    if not history:
        return "–"
    n = len(history)
    marks = sorted({0, n // 10, (3 * n) // 10, n // 2, n - 1})
    return ", ".join(f"{k + 1}: {history[k]:.3f}" for k in marks)


def judge_scores(judge: Path, test: Path, stores: dict[str, Path], folder: Path, per_class: int) -> dict[str, dict]:
    """`synthkit fidelity` of the stores against the real test set in the judge's features: Fréchet distance and
    agreement (the share the judge puts in each image's own class)."""
    from synthkit.analyse.fidelity import fidelity

    args = ["fidelity", "--real", test, "--classifier", judge, "--per-class", per_class, "--out", folder]
    for path in stores.values():
        args += ["--data", path]
    print("$ synthkit " + shlex.join(map(str, args)), flush=True)
    rows = fidelity(test, list(stores.values()), judge, folder, per_class=per_class, device="cpu")
    by_store = {row["store"]: row for row in rows if row["class"] == "all" and row["features"] == "classifier"}
    return {name: by_store[path.stem] for name, path in stores.items()}


def judge_accuracy(judge: Path) -> tuple[float, str]:
    """The judge's own final test accuracy and how it was trained, from its file."""
    from synthkit.io.checkpoint import read_meta

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
    parser.add_argument("--updates", type=int, default=300, help="inversion updates per image (the main table's)")
    parser.add_argument(
        "--di-updates", type=int, nargs="*", default=[], help="more update counts for the DI table (e.g. 60 1000 3000)"
    )
    parser.add_argument("--demo-updates", type=int, default=60, help="the demo's update count (the loss goal's)")
    parser.add_argument("--demo-lr", type=float, default=0.3, help="the demo's inversion lr (the Makefile's INV_LR)")
    parser.add_argument("--skip-tiny", action="store_true", help="leave out model tiny's column (saves its minutes)")
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
    runs = {(args.updates, None), (args.demo_updates, args.demo_lr), *((u, None) for u in args.di_updates)}
    runs = sorted(runs, key=lambda run: (run[0], run[1] or 0))
    di = {run: di_measures(args.model, tag, sources, judge, *run) for run in runs}
    stores["mini DI"] = OUT / f"{tag}-inv-{args.updates}.h5"
    scores = judge_scores(judge, test, stores, OUT / f"fidelity-{tag}", args.per_class)
    psnr = {"mini": vae_psnr(args.model, test), "tiny": vae_psnr(str(tiny), test)}
    accuracy, how = judge_accuracy(judge)
    from synthkit.io.store import Store

    with Store(sources) as s:
        source_images, source_labels = s.images(), s.labels
    ceiling = judge_share(judge, source_images, source_labels)
    recon = judge_share(judge, reconstructions(args.model, source_images), source_labels)

    print(f"\n{args.model} against its goals (judge: {judge}, {100 * accuracy:.2f}% on 10,000 real test images)")
    print("| measure | mini | tiny (random weights) | goal |")
    print("|---|---:|---:|---|")
    print(
        f"| VAE reconstruction PSNR, 1,000 real test images | {psnr['mini']:.2f} dB | {psnr['tiny']:.2f} dB | ≥ 24 dB |"
    )
    prompts = scores["mini prompts"]["agreement"]
    print(
        f"| prompt samples the judge puts in the prompted class ({args.per_class} per class) | "
        f"{100 * prompts:.1f}% | {100 * scores['tiny prompts']['agreement']:.1f}% | ≥ 70% |"
    )
    main_di, demo_di = di[(args.updates, None)], di[(args.demo_updates, args.demo_lr)]
    print(
        f"| DI samples the judge puts in their source's class ({args.invert_per_class} images per class, "
        f"{args.updates} updates, 5 samples each) | {100 * main_di['share']:.1f}% | – | ≥ 0.9 × sources "
        f"({90 * ceiling:.1f}%) |"
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

    n = main_di["sources"]
    print(f"\nDiffusion Inversion of {n} training images ({args.invert_per_class} per class) on {args.model}")
    print(
        f"the judge on the sources themselves: {100 * ceiling:.1f}%; on their VAE reconstructions: {100 * recon:.1f}%"
    )
    print(
        "| updates, lr | loss at the start → the end, same fixed draws (ratio) "
        "| loss curve, random draws (update: loss) "
        "| judged as their source's class "
        "(5 per image, DI defaults) | at noise 0, interp 0 | own source nearest in pixels (chance "
        f"{100 / n:.1f}%) | invert s |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for run in runs:
        row, h = di[run], di[run]["history"]
        fixed = row["fixed"]
        loss = f"{fixed[0]:.3f} → {fixed[1]:.3f} ({fixed[1] / fixed[0]:.2f}×)" if fixed else "–"
        print(
            f"| {row['updates']}, {row['lr']:g} | {loss} | {curve_points(h)} "
            f"| {100 * row['share']:.1f}% ({row['share'] / ceiling:.2f}× sources) "
            f"| {100 * row['exact_share']:.1f}% | {100 * row['retrieval']:.1f}% | {row['seconds']:.0f} |"
        )
    demo = demo_di["fixed"]
    goals = []
    for row in (main_di, demo_di):
        how = f"{row['updates']} updates at lr {row['lr']:g}"
        goals += [
            (f"DI samples judged as their class ≥ 0.9 × the sources' ({how})", row["share"] >= 0.9 * ceiling,
             f"{row['share'] / ceiling:.2f}×"),
            (f"own source retrieved ≥ 50% ({how})", row["retrieval"] >= 0.5, f"{100 * row['retrieval']:.1f}%"),
        ]  # fmt: skip
    goals += [
        (f"loss after the demo's {args.demo_updates} updates (lr {args.demo_lr:g}) ≤ 0.6 × its start",
         bool(demo) and demo[-1] <= 0.6 * demo[0], f"{demo[-1] / demo[0]:.2f}×" if demo else "–"),
        ("prompt samples judged as their class ≥ 70%", prompts >= 0.7, f"{100 * prompts:.1f}%"),
        ("VAE PSNR ≥ 24 dB", psnr["mini"] >= 24, f"{psnr['mini']:.2f} dB"),
    ]  # fmt: skip
    print("\n| goal | measured | |")
    print("|---|---:|---|")
    for text, met, value in goals:
        print(f"| {text} | {value} | {'met' if met else 'MISSED'} |")


if __name__ == "__main__":
    main()
