"""One training epoch (``train_epoch``): its data order and augmentation draws (RNGs seeded by ``seed_for``), its
steps, and the sums its loss and accuracy come from."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainables import recipes
from trainables.augment_workers import EpochBatches, batches_from_workers
from trainables.distributed import all_sum, shard_digest
from trainables.failures import DivergedError
from trainables.training import Training

__all__ = ["MAX_NONFINITE_FRACTION", "EpochResult", "epoch_loss", "seed_for", "train_epoch"]

# More than this fraction of an epoch's steps with a non-finite loss is divergence. Fewer are fp16 overflows
# that GradScaler skipped (it halves the scale and drops the step): they leave the mean loss out, not the run.
MAX_NONFINITE_FRACTION = 0.25


@dataclass
class EpochResult:
    """What an epoch's training pass measured."""

    sums: torch.Tensor  # see train_epoch, summed over ranks
    train_loss: float
    train_seconds: float
    started: float  # time.perf_counter() when the epoch began
    shard_digest: str
    mix: float  # the quantization mix it ran at (recipes.quant_mix)


def seed_for(base: int, epoch: int, rank: int, stream: int) -> int:
    # Distinct, reproducible streams per (seed, epoch, rank, purpose); nothing depends on how far a previous
    # epoch advanced an RNG, which is what makes resume exact.
    return (base * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63 - 1)


def epoch_loss(sums: torch.Tensor, steps: int, epoch: int) -> float:
    """The epoch's mean training loss over its finite steps; DivergedError past the non-finite threshold.

    ``sums``: (loss over finite steps, correct, images, images in finite steps, non-finite steps), already
    summed over ranks; ``steps``: the steps of all ranks."""
    bad, finite_images = sums[4].item(), sums[3].item()
    if bad > MAX_NONFINITE_FRACTION * steps or finite_images == 0:
        raise DivergedError(epoch, float("nan") if finite_images == 0 else float("inf"))
    loss = sums[0].item() / finite_images
    if not math.isfinite(loss):  # finite steps whose sum overflowed
        raise DivergedError(epoch, loss)
    return loss


def train_epoch(t: Training, epoch: int, on_batch: Optional[Callable[[int, int, int], None]]) -> EpochResult:
    """Train epoch ``epoch`` over this rank's shard of the epoch's permutation; DivergedError as ``epoch_loss``."""
    p = t.cfg.train
    mix = recipes.quant_mix(epoch, p.quantize_from_epoch, p.ramp_epochs) if t.latent else 0.0
    if t.latent:
        recipes.set_quant_mix(t.model, mix)
    t0 = time.perf_counter()
    torch.manual_seed(seed_for(p.seed, epoch, t.rank, 0))  # torchvision v2 transforms draw from the global RNG
    order_gen = torch.Generator().manual_seed(seed_for(p.seed, epoch, 0, 1))  # same permutation on all ranks
    aug_gen = torch.Generator(device=t.device).manual_seed(seed_for(p.seed, epoch, t.rank, 2))
    perm = torch.randperm(t.train_x.shape[0], generator=order_gen)[t.rank::t.world][: t.batches * t.local_bs]
    digest = shard_digest(perm, t.world)
    perm = perm.to(t.device)
    t.net.train()
    # loss over finite steps, correct, count, count in finite steps, non-finite steps: no per-step sync
    sums = torch.zeros(5, dtype=torch.float64, device=t.device)
    for b, (xb, yb) in enumerate(_batches(t, perm, aug_gen, seed_for(p.seed, epoch, t.rank, 3))):
        if t.first_step is None:
            t.first_step = time.time()
        out, loss = _step(t, xb, yb, b)
        _add_to_sums(sums, out, loss, yb)
        if on_batch is not None:
            on_batch(epoch, b, t.batches)
    if t.device.type == "cuda":
        # Kernels run asynchronously: without waiting for them the clock stops while the GPU still works
        # on the epoch's last steps, and images_per_sec comes out too high. No CPU test can show this.
        torch.cuda.synchronize(t.device)
    train_seconds = time.perf_counter() - t0
    sums = all_sum(sums, t.world)
    return EpochResult(sums, epoch_loss(sums, t.batches * t.world, epoch), train_seconds, t0, digest, mix)


def _batches(t: Training, perm: torch.Tensor, aug_gen: torch.Generator, worker_seed: int) -> Iterator:
    """The epoch's augmented batches ``(images, targets)``: in this process, or from ``t.augment_workers``
    processes on CPU (a per-image policy, ``trainables.augment_workers``, seeded per batch from ``worker_seed``)."""
    if t.augment_workers:
        batches = EpochBatches(t.cpu_images, t.train_y.cpu(), perm, t.local_bs, t.augment.per_image_transform,
                               worker_seed)
        yield from batches_from_workers(batches, t.augment_workers, t.device, t.channels_last)
        return
    for b in range(t.batches):
        idx = perm[b * t.local_bs : (b + 1) * t.local_bs]
        yield t.augment(t.train_x[idx], t.train_y[idx], aug_gen)


def _step(t: Training, xb: torch.Tensor, yb: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward batch ``b``; the optimizer steps every ``train.grad_accum`` batches (and at the
    epoch's last). Returns ``(logits, loss)``."""
    p = t.cfg.train
    step_now = (b + 1) % p.grad_accum == 0 or b + 1 == t.batches
    sync = nullcontext() if step_now or t.world == 1 else t.net.no_sync()
    with sync:
        with t.amp:
            out = t.net(xb)
            if t.teacher is None:
                loss = F.cross_entropy(out, yb, label_smoothing=p.label_smoothing)
            else:
                with torch.no_grad():
                    taught = t.teacher(xb)
                loss = recipes.distill_loss(out, taught, yb, p.distill_weight, p.distill_temperature,
                                            p.label_smoothing)
        t.scaler.scale(loss / p.grad_accum).backward()
    if step_now:
        if p.grad_clip:
            t.scaler.unscale_(t.optimizer)
            nn.utils.clip_grad_norm_(t.model.parameters(), p.grad_clip)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.optimizer.zero_grad(set_to_none=True)
        t.schedule.step()
    return out, loss


def _add_to_sums(sums: torch.Tensor, out: torch.Tensor, loss: torch.Tensor, yb: torch.Tensor) -> None:
    hard = yb if yb.ndim == 1 else yb.argmax(1)
    finite = torch.isfinite(loss.detach())
    sums[0] += torch.where(finite, loss.detach().double(), 0.0) * hard.numel()
    sums[1] += (out.detach().argmax(1) == hard).sum()
    sums[2] += hard.numel()
    sums[3] += finite * hard.numel()
    sums[4] += ~finite
