"""Throughput of the training data pipeline: batched tensor augmentation vs a PIL DataLoader.

Usage::

    python benchmarks/data_pipeline.py [--data FOLDER] [--images 10000] [--batch-size 256]

The data folder comes from ``--data`` or ``TERNSEARCH_DATA``. Both paths do the same work on the same images:
random crop (32, padding 4) + horizontal flip + normalize, batch 256. Each DataLoader is timed on its second pass
over the data (persistent workers), so worker start-up is not counted against it. Keep it short: other work
shares this machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from trainables.augment import BatchAugment  # noqa: E402
from trainables.config import TrainParams  # noqa: E402
from trainables.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10, resolve_root  # noqa: E402


def _rate(fn, n_images: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` images/s of ``fn`` (one pass over ``n_images``), after one warm-up pass."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def tensor_rate(x: torch.Tensor, y: torch.Tensor, policy: str, batch_size: int, repeats: int = 3) -> float:
    aug = BatchAugment(TrainParams(augment=policy))
    gen = torch.Generator().manual_seed(0)

    def one_pass() -> None:
        for i in range(0, len(x), batch_size):
            aug(x[i:i + batch_size], y[i:i + batch_size], gen)

    return _rate(one_pass, len(x), repeats)


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def dataloader_rate(x: torch.Tensor, y: torch.Tensor, batch_size: int, workers: int) -> float:
    from PIL import Image
    from torchvision import transforms as T

    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    transform = T.Compose([
        T.RandomCrop(32, padding=4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize([m / 255 for m in CIFAR10_MEAN], [s / 255 for s in CIFAR10_STD]),
    ])  # fmt: skip
    loader = torch.utils.data.DataLoader(
        _PilDataset(pil, y.tolist(), transform), batch_size=batch_size, shuffle=True,
        num_workers=workers, persistent_workers=workers > 0,
    )  # fmt: skip

    def one_pass() -> None:
        for _ in loader:
            pass

    return _rate(one_pass, len(x), repeats=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding cifar-10-batches-bin/ (default: $TERNSEARCH_DATA)")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--per-image-images", type=int, default=2_560, help="images for autoaugment/randaugment")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    root = resolve_root(args.data)
    if root is None:
        parser.error("give --data or set TERNSEARCH_DATA")
    x, y = load_cifar10(root, train=True)
    x, y = x[: args.images].clone(), y[: args.images].clone()
    load = "load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {load}; "
          f"{len(x)} CIFAR-10 train images from {root}, batch {args.batch_size}")  # fmt: skip

    tensor = tensor_rate(x, y, "standard", args.batch_size)
    print(f"(a) tensor batch crop+flip+normalize       : {tensor:10,.0f} img/s")
    loader = {}
    for workers in (0, 2):
        loader[workers] = dataloader_rate(x, y, args.batch_size, workers)
        print(f"(b) DataLoader+PIL, num_workers={workers}          : {loader[workers]:10,.0f} img/s")
    for workers, rate in loader.items():
        print(f"ratio (a)/(b, num_workers={workers})               : {tensor / rate:10.1f}x")

    n = min(args.per_image_images, len(x))
    for policy in ("cutmix", "mixup"):
        print(f"tensor path, {policy:<11} (crop+flip+mix)  : {tensor_rate(x, y, policy, args.batch_size):10,.0f} img/s")
    for policy in ("autoaugment", "randaugment"):
        rate = tensor_rate(x[:n], y[:n], policy, args.batch_size, repeats=1)
        print(f"tensor path, {policy:<11} (per image)     : {rate:10,.0f} img/s  ({n} images)")
    print(f"done; load average now {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "done")


if __name__ == "__main__":
    main()
