"""Per-image policies (AutoAugment, RandAugment) inline in the training process vs in CPU DataLoader workers.

Usage::

    python benchmarks/per_image_workers.py [--data FOLDER] [--images 2560] [--batch-size 256] [--threads 2]

Times one epoch's batches, augmented and normalized as the loop gets them: inline (``BatchAugment``, what
``data.augment_workers: 0`` runs) and from 1 and 2 worker processes (``trainables.augment_workers``, what ``auto``
picks on CUDA), on CPU. Worker start-up is counted: the loop starts the workers every epoch. Keep it short.
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
from trainables.augment_workers import EpochBatches, batches_from_workers  # noqa: E402
from trainables.config import TrainParams  # noqa: E402
from trainables.data import load_cifar10, resolve_root  # noqa: E402


def epoch_seconds(x: torch.Tensor, y: torch.Tensor, policy: str, batch_size: int, workers: int) -> float:
    aug = BatchAugment(TrainParams(augment=policy), channels_last=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    if workers == 0:
        gen = torch.Generator().manual_seed(0)
        for b in range(len(x) // batch_size):
            idx = order[b * batch_size:(b + 1) * batch_size]
            aug(x[idx], y[idx], gen)
    else:
        batches = EpochBatches(x, y, order, batch_size, aug.per_image_transform, 0)
        for _ in batches_from_workers(batches, workers, torch.device("cpu"), True):
            pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder holding cifar-10-batches-bin/ (default: $TERNSEARCH_DATA)")
    parser.add_argument("--images", type=int, default=2_560)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    args = parser.parse_args(argv)
    root = resolve_root(args.data)
    if root is None:
        parser.error("give --data or set TERNSEARCH_DATA")
    torch.set_num_threads(args.threads)
    x, y = load_cifar10(root, train=True)
    x, y = x[: args.images].clone(), y[: args.images].clone()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; {len(x)} images, batch {args.batch_size}")
    print("| policy | inline img/s | 1 worker img/s | 2 workers img/s | epoch s (inline / 1 / 2) |")
    print("|---|---|---|---|---|")
    for policy in ("autoaugment", "randaugment"):
        secs = [epoch_seconds(x, y, policy, args.batch_size, w) for w in (0, 1, 2)]
        n = len(x) // args.batch_size * args.batch_size
        rates = " | ".join(f"{n / s:,.0f}" for s in secs)
        print(f"| {policy} | {rates} | {' / '.join(f'{s:.2f}' for s in secs)} |")
    print(f"done; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
