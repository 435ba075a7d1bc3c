"""A model's loss and accuracy on a set of images, split over the DDP ranks."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainables.augment import normalize
from trainables.distributed import all_sum, rank_world

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    channels_last: bool = False,
    autocast_dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on uint8 images ``x``; reduced over DDP ranks.

    Each rank evaluates its own contiguous shard, so the work splits and the totals are exact. Under DDP a shard
    can be empty (fewer images than ranks), so the ranks evaluate the module inside DDP (see ``_plain``), whose
    forward holds no collective.
    """
    rank, world = rank_world()
    model = _plain(model, world)
    device = device or next(model.parameters()).device
    n = x.shape[0]
    lo, hi = n * rank // world, n * (rank + 1) // world
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for i in range(lo, hi, batch_size):
        xb = normalize(x[i : min(i + batch_size, hi)].to(device, non_blocking=True), channels_last=channels_last)
        yb = y[i : min(i + batch_size, hi)].to(device, non_blocking=True)
        with amp:
            out = model(xb)
        totals[0] += F.cross_entropy(out.float(), yb, reduction="sum")
        totals[1] += (out.argmax(1) == yb).sum()
        totals[2] += yb.numel()
    totals = all_sum(totals, world)
    model.train(was_training)
    count = max(totals[2].item(), 1.0)
    return totals[0].item() / count, totals[1].item() / count


def _plain(model: nn.Module, world: int) -> nn.Module:
    """``model`` without DDP, its buffers (BatchNorm's running statistics) made rank 0's on every rank.

    That is what DDP's own first forward after a training step does, as a broadcast: a rank with an empty shard
    makes no forward, and its peers would pair that broadcast with its all-reduce of the totals. Broadcast here,
    on every rank, and the evaluation is DDP's, without DDP. A compiled DDP model is evaluated uncompiled (the
    forward of the module inside).
    """
    inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the module it compiled here
    if world == 1 or not isinstance(inner, nn.parallel.DistributedDataParallel):
        return model
    inner = inner.module
    for buffer in inner.buffers():
        dist.broadcast(buffer, src=0)
    return inner
