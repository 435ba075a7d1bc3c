"""Whole-batch data augmentation on uint8 image tensors (CPU or CUDA, same code).

The training set lives in memory as uint8 ``[N, 3, 32, 32]`` (see :mod:`trainables.data`). A training step takes a
batch of it and calls :class:`BatchAugment`, which returns normalized float32 images and the targets:

- ``none``: normalize only.
- ``standard``: random crop with 4 pixels of zero padding + horizontal flip, vectorized over the batch (one
  ``gather`` with per-image offsets; no per-image Python loop), then normalize.
- ``cutmix`` / ``mixup``: ``standard``, then torchvision's v2 ``CutMix`` / ``MixUp`` on the whole normalized
  batch; targets become soft float rows ``[B, num_classes]`` that sum to 1.
- ``cutmix_mixup``: ``standard``, then CutMix or MixUp, one of the two picked per batch with equal odds (v2
  ``RandomChoice``, as torchvision's CutMix/MixUp guide does); RandomChoice's pick also comes from the global RNG.
- ``autoaugment`` / ``randaugment``: ``standard`` crop/flip, then v2 ``AutoAugment`` (CIFAR-10 policy) /
  ``RandAugment`` **per image** on uint8 (a batched call would apply one random op to the whole batch), then
  normalize. These are ~100x slower than the batched policies; :func:`augment_is_per_image` lets a caller move
  them into DataLoader workers.

Randomness: the crop offsets and flips come from the ``generator`` argument (it may live on the CPU or on the
images' device). torchvision's v2 transforms (CutMix, MixUp, AutoAugment, RandAugment) cannot take a generator and
draw from torch's **global** CPU RNG; the training loop seeds the global RNG at every epoch start, which makes a
resumed run reproduce the uninterrupted one. Label smoothing is not applied here: the loop's loss does it.

No import-time side effects; torchvision is imported only by the policies that need it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.config import AUGMENTS, TrainParams
from trainables.data import CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    "PER_IMAGE_AUGMENTS",
    "BatchAugment",
    "augment_is_per_image",
    "crop_flip",
    "normalize",
    "random_crop_flip",
]

PER_IMAGE_AUGMENTS = ("autoaugment", "randaugment")
_SOFT_TARGET_AUGMENTS = ("cutmix", "mixup", "cutmix_mixup")


def augment_is_per_image(name: str) -> bool:
    """Whether augment policy ``name`` runs a per-image Python loop (AutoAugment, RandAugment).

    Args:
        name: One of ``trainables.config.AUGMENTS``.

    Raises:
        ValueError: ``name`` is not a known policy.
    """
    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {name!r}; expected one of {', '.join(AUGMENTS)}")
    return name in PER_IMAGE_AUGMENTS


@functools.lru_cache(maxsize=8)
def _scale_shift(device: torch.device) -> tuple[Tensor, Tensor]:
    # (x - mean) / std == x * (1/std) + (-mean/std): precomputed so normalization is a single addcmul that also
    # does the uint8 -> float32 promotion, instead of convert + subtract + divide (three passes over the batch).
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64)
    scale = (1.0 / std).to(torch.float32).view(3, 1, 1).to(device)  # [3,1,1] broadcasts over [3,H,W] and [B,3,H,W]
    shift = (-mean / std).to(torch.float32).view(3, 1, 1).to(device)
    return scale, shift


def normalize(x_uint8: Tensor, channels_last: bool = False) -> Tensor:
    """Normalize images with the CIFAR-10 per-channel mean/std (``trainables.data.CIFAR10_MEAN/STD``, 0-255 scale).

    Args:
        x_uint8: uint8 ``[B, 3, H, W]`` or ``[3, H, W]`` (a float tensor on the 0-255 scale works too).
        channels_last: Return a 4-D result in ``torch.channels_last`` memory format (faster convolutions on CPU).

    Returns:
        float32 tensor of the same shape on the same device, roughly zero-mean unit-variance per channel.
    """
    scale, shift = _scale_shift(x_uint8.device)
    if channels_last and x_uint8.dim() == 4:
        # Converting the 1-byte input is 4x cheaper than converting the float output; addcmul keeps the layout.
        x_uint8 = x_uint8.contiguous(memory_format=torch.channels_last)
    return torch.addcmul(shift, x_uint8, scale)


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Deterministic batched crop + flip: zero-pad by ``padding``, crop at per-image offsets, mirror some images.

    Output pixel ``(i, j)`` of image ``b`` is padded pixel ``(dy[b] + i, dx[b] + j)``, or ``(dy[b] + i,
    dx[b] + W - 1 - j)`` when ``flip[b]``. With ``dy = dx = padding`` the crop is the identity.

    Args:
        x: ``[B, C, H, W]`` images of any dtype (uint8 in the pipeline); padding is 0 (black for uint8).
        dy: int64 ``[B]`` row offsets in ``[0, 2 * padding]``.
        dx: int64 ``[B]`` column offsets in ``[0, 2 * padding]``.
        flip: bool ``[B]``, mirror horizontally.
        padding: Pixels of zero padding on every side.

    Returns:
        A new contiguous ``[B, C, H, W]`` tensor of ``x``'s dtype.
    """
    b, c, h, w = x.shape
    device = x.device
    dy, dx, flip = dy.to(device), dx.to(device), flip.to(device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    hp, wp = h + 2 * padding, w + 2 * padding
    rows = dy.view(b, 1) + torch.arange(h, device=device)  # [B, H]
    ar_w = torch.arange(w, device=device)
    # The flip is folded into the column index, so crop and flip are a single gather (one pass over the batch).
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # [B, W]
    flat = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, flat).view(b, c, h, w)


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> Tensor:
    """Random crop with zero padding and random horizontal flip, independently per image, vectorized.

    Equivalent in distribution to torchvision's ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()``
    applied to every image. Draws ``3 * B`` numbers from ``generator`` (on the generator's device; they are
    moved to ``x``'s device), so the same generator state gives the same output.

    Args:
        x: ``[B, C, H, W]`` images (uint8 in the pipeline).
        generator: Source of the offsets and flips (CPU or the images' device).
        padding: Pixels of zero padding; 0 means flip only.
        flip: Whether to flip half of the images at random.

    Returns:
        A new ``[B, C, H, W]`` tensor of ``x``'s dtype and device.
    """
    b = x.shape[0]
    gdev = generator.device
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev)
    mirror = torch.randint(0, 2, (b,), generator=generator, device=gdev).bool()
    if not flip:
        mirror = torch.zeros_like(mirror)
    return crop_flip(x, dy, dx, mirror, padding)


@contextlib.contextmanager
def _single_threaded(x: Tensor) -> Iterator[None]:
    """Run CPU work on one intra-op thread, then restore the previous setting (a ~0.3 us toggle).

    Augmentation is many small, memory-bound ops (a 256-image batch is 0.8 MB of uint8; a single image for the
    per-image policies is 3 KB). Splitting them over threads saves little, and on a shared 2-core machine every
    parallel region waits for a descheduled thread. Measured on this machine under load (other jobs running),
    batch 256: crop+flip+normalize 106-137k img/s on 1 thread vs 10-200k (erratic) on 2; AutoAugment 4,100 vs
    1,000 img/s; RandAugment 4,200 vs 80-330 img/s. Idle, 1 thread was no slower. The model keeps its threads.
    """
    previous = torch.get_num_threads()
    if x.device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BatchAugment:
    """The training-time augmentation policy ``params.augment``, applied to whole batches.

    Attributes:
        policy: The policy name.
        soft_targets: True when targets are soft float ``[B, num_classes]`` rows (cutmix, mixup), else the int64
            labels are returned unchanged.
        per_image_transform: The v2 per-image transform (autoaugment, randaugment) or None; a caller that wants
            to run it in DataLoader workers can apply it to single uint8 ``[3, H, W]`` images and then build a
            ``BatchAugment`` with ``per_image=False`` (the policy then precedes crop/flip instead of following).
    """

    def __init__(
        self,
        params: TrainParams,
        num_classes: int = 10,
        *,
        channels_last: Optional[bool] = None,
        per_image: bool = True,
    ) -> None:
        """Build the policy.

        Args:
            params: The run's training parameters (``augment``, ``mixup_alpha``, ``cutmix_alpha``,
                ``randaugment_ops``, ``randaugment_magnitude``, ``channels_last``).
            num_classes: Width of the soft targets of cutmix/mixup.
            channels_last: Output memory format; None means ``params.channels_last is True`` (the loop resolves
                ``"auto"`` and should pass the result).
            per_image: Apply the per-image policy in ``__call__`` (False when it already ran elsewhere).
        """
        if params.augment not in AUGMENTS:
            raise ValueError(f"unknown augment {params.augment!r}; expected one of {', '.join(AUGMENTS)}")
        self.policy: str = params.augment
        self.num_classes = int(num_classes)
        self.channels_last = (params.channels_last is True) if channels_last is None else bool(channels_last)
        self.soft_targets = self.policy in _SOFT_TARGET_AUGMENTS
        self.per_image_transform: Optional[Callable[[Tensor], Tensor]] = None
        self._batch_mix: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = None
        if self.policy == "none":
            return
        from torchvision.transforms import v2  # heavy import, only for the policies that use it

        if self.policy == "cutmix":
            self._batch_mix = v2.CutMix(alpha=params.cutmix_alpha, num_classes=self.num_classes)
        elif self.policy == "mixup":
            self._batch_mix = v2.MixUp(alpha=params.mixup_alpha, num_classes=self.num_classes)
        elif self.policy == "cutmix_mixup":  # RandomChoice draws its pick from the global RNG, seeded per epoch
            self._batch_mix = v2.RandomChoice([v2.CutMix(alpha=params.cutmix_alpha, num_classes=self.num_classes),
                                               v2.MixUp(alpha=params.mixup_alpha, num_classes=self.num_classes)])
        elif self.policy == "autoaugment":
            self.per_image_transform = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        elif self.policy == "randaugment":
            self.per_image_transform = v2.RandAugment(
                num_ops=params.randaugment_ops, magnitude=params.randaugment_magnitude
            )
        self._run_per_image = per_image and self.per_image_transform is not None

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Augment and normalize one batch.

        Args:
            x: uint8 ``[B, 3, 32, 32]`` images (CPU or CUDA). Not modified.
            y: int64 ``[B]`` labels on the same device.
            generator: Seeded source of the crop/flip randomness (v2 transforms use the global RNG, see module
                docstring).

        Returns:
            ``(images, targets)``: float32 normalized ``[B, 3, 32, 32]`` (channels_last if configured), and ``y``
            unchanged for hard-label policies or float32 ``[B, num_classes]`` rows summing to 1 for cutmix/mixup.

        On CPU the call runs on one intra-op thread (restored afterwards; see ``_single_threaded``), so do not
        call it while another thread of the process relies on ``torch.get_num_threads()``.
        """
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"BatchAugment expects uint8 [B, C, H, W] images, got {x.dtype} {tuple(x.shape)}")
        with _single_threaded(x):
            return self._augment(x, y, generator)

    def _augment(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.policy == "none":
            return normalize(x, self.channels_last), y
        x = random_crop_flip(x, generator)
        if self._run_per_image:
            # After crop/flip, as in the AutoAugment paper's CIFAR pipeline (crop, flip, policy). One random
            # sub-policy per image: a batched call would apply the same op to every image of the batch.
            x = torch.stack([self.per_image_transform(img) for img in x.unbind(0)])
        out = normalize(x, self.channels_last)
        if self._batch_mix is not None:
            # On normalized floats: MixUp's blend would truncate in uint8. It pairs each image with its neighbour
            # in the batch (roll by 1), which is random because the loop shuffles the batch order.
            out, y = self._batch_mix(out, y)
            if self.channels_last:
                out = out.contiguous(memory_format=torch.channels_last)
        return out, y

    def __repr__(self) -> str:
        return f"BatchAugment(policy={self.policy!r}, channels_last={self.channels_last})"
