"""DDP ranks with an empty evaluation shard (issue 22): 1 validation image over 2 ranks is none on rank 0 and one
on rank 1. DDP's first forward after a training step broadcasts the BatchNorm buffers, so rank 1, evaluating
through DDP, would pair that broadcast with rank 0's all-reduce of the totals (an error or a wait until the
group's timeout). A training run cannot split that way on 2 ranks (every class keeps a validation image, so 10
or more), a 16-rank one can: two gloo ranks on CPU train a step of DDP on real CIFAR-10 images and evaluate one.
Both finish, and agree."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from helpers_cluster import run_ranks

GROUP_TIMEOUT_S = 60  # what a rank waits in a collective before it fails; Ray Train's default is 1800


def _rank(rank: int, port: int, results) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn

    from trainables.augment import normalize
    from trainables.config import ModelConfig
    from trainables.data import load_cifar10
    from trainables.evaluate import evaluate
    from trainables.models import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    try:
        torch.manual_seed(0)
        x, y = load_cifar10(None, train=False)
        net = nn.parallel.DistributedDataParallel(build_model(ModelConfig(arch="tinynet")))
        mine = slice(64 * rank, 64 * (rank + 1))  # a training step on each rank's own images: buffers differ
        F.cross_entropy(net(normalize(x[mine])), y[mine]).backward()
        torch.optim.SGD(net.parameters(), lr=0.1).step()
        one = evaluate(net, x[200:201], y[200:201])  # rank 0: no image, rank 1: one
        ten = evaluate(net, x[200:210], y[200:210], batch_size=2)  # 3 batches on each rank
        results.put((rank, "ok", one, ten))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        results.put((rank, type(exc).__name__, str(exc)[:300], None))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~10 s: two spawned processes import torch and load the images
def test_ranks_with_an_empty_evaluation_shard_finish_and_agree(data_root):
    outcome = run_ranks(_rank)
    assert [(rank, kind) for rank, kind, _, _ in outcome] == [(0, "ok"), (1, "ok")], outcome
    (_, _, one0, ten0), (_, _, one1, ten1) = outcome
    assert one0 == one1 and ten0 == ten1  # one all-reduced total on both ranks
    assert one0[1] in (0.0, 1.0) and one0[0] > 0
    assert round(ten0[1] * 10, 6) == int(round(ten0[1] * 10))
