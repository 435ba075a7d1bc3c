"""This process's place among a run's DDP ranks, and what the loop sums or gathers over them (one rank: itself)."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

__all__ = ["all_sum", "rank_world", "shard_digest"]


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` under ``torch.distributed``, ``(0, 1)`` outside it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    """``values`` summed over the ranks, in place."""
    if world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def shard_digest(indices: torch.Tensor, world: int) -> str:
    """A short digest of the images each rank trains on this epoch, gathered from all ranks ("a,b")."""
    mine = hashlib.sha1(indices.cpu().numpy().tobytes()).hexdigest()[:10]
    if world == 1:
        return mine
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return ",".join(gathered)
