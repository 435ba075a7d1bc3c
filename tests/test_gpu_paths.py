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


def test_shared_storage_packs_a_trials_ranks(tmp_path):
    """Item 5: a DDP trial's ranks go on as few nodes as possible, shared storage or not."""
    from ternsearch.spec import load_spec
    from ternsearch.tuner import make_plan, trial_setup

    spec_file = tmp_path / "ddp.yaml"
    spec_file.write_text("name: ddp\nmetric: {name: val_acc, mode: max}\nsearch:\n  lr: {loguniform: [0.01, 0.5]}\n"
                         f"resources: {{workers_per_trial: 2}}\nstorage: {{path: {tmp_path}/nfs, shared: true}}\n")
    spec = load_spec(spec_file)
    setup = trial_setup(spec, make_plan(spec, {"CPU": 4.0}), str(tmp_path / "nfs"))
    assert setup["mode"] == "torchtrainer" and setup["placement_strategy"] == "PACK"


def test_a_trial_without_a_gpu_trains_on_cpu(monkeypatch):
    """Item 2: a trial that reserved no GPU trains on CPU even where CUDA is visible (Ray leaves
    CUDA_VISIBLE_DEVICES alone for it); one that reserved a GPU in function mode uses the one Ray shows it."""
    from trainables.entry import trial_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert trial_device({"use_gpu": False}) == torch.device("cpu")
    assert trial_device({"use_gpu": False}, train_worker=True) == torch.device("cpu")
    assert trial_device({"use_gpu": True}) == torch.device("cuda", 0)


def test_auto_precision_ignores_emulated_bf16(monkeypatch):
    """Item 3: a GPU that only emulates bf16 (V100, T4) gets fp16 with a GradScaler."""
    from trainables.loop import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.bfloat16
