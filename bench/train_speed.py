"""Training throughput: synthkit's on-device loop against a typical DataLoader + PIL loop.

Both train the same CIFAR ResNet-18 with the same batch size, threads, number format and memory
layout; only the data pipeline differs. Prints img/s for each (median over timed windows) and
the ratio. Usage: python bench/train_speed.py [--batch-size 512] [--windows 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from common import cifar_store, machine
from synthkit.device import autocast, configure_threads, memory_format, pick_device
from synthkit.model import ResNet18
from synthkit.store import Store
from synthkit.training import TrainConfig, augment, epoch_batches, load_stores


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


def fresh_model(device):
    model = ResNet18(10).to(device, memory_format=memory_format(device))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def synthkit_loop(path, device, batch):
    """Data and augmentation on the device, as synthkit.training does: a next-batch function."""
    data = load_stores([path], device)
    config = TrainConfig(batch_size=batch)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = iter(())

    def next_batch():
        nonlocal batches
        rows = next(batches, None)
        if rows is None:
            batches = iter(epoch_batches(data, config, generator))
            rows = next(batches)
        x = augment(data.images[rows], generator).float().div_(255).contiguous(memory_format=memory_format(device))
        return x, data.labels[rows]

    return next_batch


class PilDataset(torch.utils.data.Dataset):
    """The usual way: PIL images and torchvision transforms, one image at a time in workers."""

    def __init__(self, images, labels):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor()])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def dataloader_loop(path, device, batch, workers):
    """torchvision's DataLoader with `workers` workers and PIL transforms: a next-batch function."""
    with Store(path) as store:
        dataset = PilDataset(store.images(), store.labels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
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
    loops = {"synthkit": synthkit_loop(path, device, args.batch_size), "dataloader": dataloader_loop(path, device, args.batch_size, workers)}
    models = {name: fresh_model(device) for name in loops}
    rates = {name: [] for name in loops}
    for w in range(args.windows + 1):  # windows alternate, so drift in the machine's speed hits both alike
        for name, next_batch in loops.items():
            rate = window(next_batch, *models[name], device, args.batch_size, args.steps)
            if w:  # the first window warms up kernels, caches and workers
                rates[name].append(rate)
    ours, theirs = rates["synthkit"], rates["dataloader"]
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"machine: {machine()}; batch {args.batch_size}; {args.windows} alternating windows of {args.steps} steps; "
          f"{torch.get_num_threads()} torch threads; DataLoader workers {workers}")
    print(f"synthkit (on-device data + augmentation): {a:10.0f} img/s  (windows: {', '.join(f'{r:.0f}' for r in ours)})")
    print(f"DataLoader + PIL transforms:              {b:10.0f} img/s  (windows: {', '.join(f'{r:.0f}' for r in theirs)})")
    print(f"ratio synthkit / DataLoader: {a / b:.2f}x")


if __name__ == "__main__":
    main()
