"""The GPU paths that can be exercised on CPU (issue 22): DDP with TTQ's delayed quantization over gloo, the device
and precision a trial picks (a patched ``torch.cuda`` probe), torch.compile across a quantization ramp, resume
across precisions, non-finite steps, and the determinism switches. What only a GPU shows is in
benchmarks/gpu_check.sh."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trainables.config import TrainConfig
from trainables.loop import run


def _cfg(model: dict | None = None, subset: int = 200, **train) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 1, "threads": 1, "augment": "none"}
    base.update(train)
    return TrainConfig.model_validate(
        {"data": {"subset": subset, "val_fraction": 0.2}, "model": {"arch": "tinynet", **(model or {})},
         "train": base})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, cfg_json: dict, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = run(TrainConfig.model_validate(cfg_json), None, device=torch.device("cpu"))
        results.put((rank, "ok", out["quant_mix"], out["world_size"]))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        results.put((rank, "error", f"{type(exc).__name__}: {str(exc)[:200]}", 0))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~22 s: two spawned processes import torch and load the data
def test_ttq_with_delayed_quantization_trains_under_ddp(data_root):
    """Item 1: TTQ's scales are in the graph while the layers still train at full precision (epoch 1), so DDP,
    built without find_unused_parameters, gets a gradient for every parameter in every step."""
    cfg = _cfg({"quantizer": "ttq"}, quantize_from_epoch=2)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, cfg.model_dump(mode="json"), results))
             for r in range(2)]
    for p in procs:
        p.start()
    outcome = sorted(results.get() for _ in procs)
    for p in procs:
        p.join(60)
    assert outcome == [(0, "ok", 1.0, 2), (1, "ok", 1.0, 2)], outcome
