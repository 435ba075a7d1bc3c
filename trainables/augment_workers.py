"""Per-image augmentation policies (AutoAugment, RandAugment) in DataLoader worker processes on CPU.

On a GPU, running a per-image policy in the training loop launches thousands of tiny kernels a batch. With
``data.augment_workers`` N > 0 (``auto``: on CUDA only, see ``resolve_workers``), N CPU worker processes build
each batch instead: the batch's crop/flip and its per-image policy on uint8 CPU images, into pinned memory; the
loop copies it to the device with ``non_blocking=True`` and normalizes it there.

Randomness: every batch draws from its own seeds, ``(train.seed, epoch, rank, batch)``, for the crop/flip generator
and for torch's global RNG that torchvision's v2 policies use, so a batch is the same whichever worker builds it,
with 1 worker or 4, and a resumed run repeats the uninterrupted one. The draws differ from the inline path's
(``augment_workers: 0``), which takes one generator per epoch: switching between the two changes the run.
"""

from __future__ import annotations

from typing import Iterator, Union

import torch
from torch import Tensor

from trainables.augment import augment_is_per_image, normalize, random_crop_flip

__all__ = ["EpochBatches", "batches_from_workers", "resolve_workers"]

AUTO_MAX_WORKERS = 4


def resolve_workers(setting: Union[str, int], policy: str, device: torch.device) -> int:
    """How many worker processes build the batches: ``setting`` when a number (0: in the loop), else (``auto``)
    none on CPU or for a batched policy, and on CUDA one per CPU thread of the run but one (at most 4)."""
    if setting != "auto":
        return int(setting) if augment_is_per_image(policy) else 0
    if device.type != "cuda" or not augment_is_per_image(policy):
        return 0  # on CPU the inline path measured faster (BENCHMARKS.md, per-image policies)
    return max(1, min(AUTO_MAX_WORKERS, torch.get_num_threads() - 1))


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``b`` of one epoch: crop/flip and the per-image policy of the images ``order[b]`` (uint8, CPU)."""

    def __init__(self, images: Tensor, labels: Tensor, order: Tensor, batch_size: int, transform, seed: int):
        self.images, self.labels, self.order = images, labels, order.cpu()
        self.batch_size, self.transform, self.seed = batch_size, transform, seed

    def __len__(self) -> int:
        return self.order.shape[0] // self.batch_size

    def __getitem__(self, b: int) -> tuple[Tensor, Tensor]:
        idx = self.order[b * self.batch_size : (b + 1) * self.batch_size]
        seed = (self.seed * 1_000_003 + b) % (2**63 - 1)
        torch.manual_seed(seed)  # torchvision's v2 policies draw from the global RNG (of this worker process)
        x = random_crop_flip(self.images[idx], torch.Generator().manual_seed(seed + 1))
        x = torch.stack([self.transform(img) for img in x.unbind(0)])
        return x, self.labels[idx]


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # each worker is one core's worth of work; the training process keeps its threads


def batches_from_workers(batches: EpochBatches, workers: int, device: torch.device,
                         channels_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's ``(normalized images, labels)`` on ``device``, in order, built by ``workers`` processes."""
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, worker_init_fn=_one_thread,
        pin_memory=device.type == "cuda", prefetch_factor=4,
    )
    for x, y in loader:
        # Pinned host memory: the copy runs asynchronously to the GPU while the previous step computes.
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield normalize(x, channels_last), y
