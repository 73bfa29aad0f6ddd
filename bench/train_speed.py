"""Training throughput: synthkit's on-device loop against a typical DataLoader + PIL loop, at each image size.

Both train the same ResNet-18 (CIFAR stem up to 64 px, ImageNet stem above, as synthkit train chooses) with the
same batch size, threads, number format and memory layout; only the data pipeline differs (crop with size/8
padding and flip, as the recipes' crop-flip). CIFAR-10 is resized once to each size. Prints img/s for
each (median over timed windows) and the ratio, per size.
Usage: python bench/train_speed.py [--sizes 32,64,96] [--batch-size 512] [--windows 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from synthkit.classify.model import build_classifier, resize_images, stem_for
from synthkit.classify.training import TrainConfig, load_stores, step_rows, training_batch
from synthkit.core.device import autocast, configure_threads, memory_format, pick_device
from synthkit.io.store import Store

from common import cifar_store, machine


def step(model, optimizer, x, y, device):
    with autocast(device):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def window(next_batch, model, optimizer, device, batch, steps):
    """img/s of one window of `steps` training steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next_batch()
        step(model, optimizer, x, y, device)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def fresh_model(device, size):
    model = build_classifier("resnet18", 10, size).to(device, memory_format=memory_format(device))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def synthkit_loop(path, device, batch, size):
    """Data and augmentation on the device, as synthkit.classify.training does: a next-batch function."""
    data = load_stores([path], device, image_size=size)
    config = TrainConfig(batch_size=batch)
    generator = torch.Generator(device=device).manual_seed(0)
    batches, done = iter(()), 0

    def next_batch():
        nonlocal batches, done
        rows = next(batches, None)
        if rows is None:  # the next 100 steps' rows, as synthkit train draws them
            batches, done = iter(step_rows(data, config, done, done + 100)), done + 100
            rows = next(batches)
        x = training_batch(data.images[rows], generator).contiguous(memory_format=memory_format(device))
        return x, data.labels[rows]

    return next_batch


class PilDataset(torch.utils.data.Dataset):
    """The usual way: PIL images and torchvision transforms, one image at a time in workers."""

    def __init__(self, images, labels):
        from torchvision import transforms

        size = images.shape[1]
        crop = transforms.RandomCrop(size, padding=size // 8)  # the official RandomCrop(res, padding=res // 8)
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([crop, transforms.RandomHorizontalFlip(), transforms.ToTensor()])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def dataloader_loop(path, device, batch, workers, size):
    """torchvision's DataLoader with `workers` workers and PIL transforms: a next-batch function."""
    with Store(path) as store:
        images = resize_images(torch.from_numpy(store.images()).permute(0, 3, 1, 2), size).permute(0, 2, 3, 1).numpy()
        dataset = PilDataset(images, store.labels)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    batches = iter(loader)

    def next_batch():
        nonlocal batches
        item = next(batches, None)
        if item is None:
            batches = iter(loader)
            item = next(batches)
        x, y = item
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format(device))
        return x, y.to(device, non_blocking=True)

    return next_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64,96", help="image sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (after one warm-up window)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the CPU count)")
    parser.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    configure_threads()
    device = pick_device(args.device)
    workers = args.workers if args.workers is not None else len(__import__("os").sched_getaffinity(0))
    path = cifar_store("train", args.per_class)
    print(
        f"machine: {machine()}; batch {args.batch_size}; {args.windows} alternating windows of {args.steps} steps; "
        f"{torch.get_num_threads()} torch threads; DataLoader workers {workers}"
    )
    for size in (int(x) for x in args.sizes.split(",")):
        loops = {
            "synthkit": synthkit_loop(path, device, args.batch_size, size),
            "dataloader": dataloader_loop(path, device, args.batch_size, workers, size),
        }
        models = {name: fresh_model(device, size) for name in loops}
        rates = {name: [] for name in loops}
        for w in range(args.windows + 1):  # windows alternate, so drift in the machine's speed hits both alike
            for name, next_batch in loops.items():
                rate = window(next_batch, *models[name], device, args.batch_size, args.steps)
                if w:  # the first window warms up kernels, caches and workers
                    rates[name].append(rate)
        ours, theirs = rates["synthkit"], rates["dataloader"]
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{size} px (resnet18, {stem_for(size)} stem):")
        print(
            f"  synthkit (on-device data + augmentation): {a:10.0f} img/s  (windows: "
            f"{', '.join(f'{r:.0f}' for r in ours)})"
        )
        print(
            f"  DataLoader + PIL transforms:              {b:10.0f} img/s  (windows: "
            f"{', '.join(f'{r:.0f}' for r in theirs)})"
        )
        print(f"  ratio synthkit / DataLoader: {a / b:.2f}x")
        del loops, models


if __name__ == "__main__":
    main()
