"""DDP ranks agree on a failure (issue 22, item 8): a real out-of-memory error on rank 1 only (its data segment
capped, TERNSEARCH_FAULT_MEMORY_MB with TERNSEARCH_FAULT_MEMORY_RANK) ends every rank promptly with rank 1's
reason, instead of rank 0 waiting in an all-reduce until the process group's 30-minute timeout. Gloo on CPU,
real CIFAR-10; the sweep test also runs real local Ray and a real SQLite MLflow store."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

from trainables.failures import MEMORY_CAP_ENV, MEMORY_CAP_RANK_ENV

from helpers_cluster import run_ranks

CFG = {"data": {"subset": 2500, "val_fraction": 0.2}, "model": {"arch": "tinynet"},
       "train": {"epochs": 1, "batch_size": 2000, "seed": 1, "threads": 1, "augment": "none"}}


GROUP_TIMEOUT_S = 90  # what a rank waits in a collective before it fails; Ray Train's default is 1800


def _rank(rank: int, port: int, results) -> None:
    """One gloo rank of a 2-rank run; rank 1 gets 300 MB more than it has, 1000 images a step need ~550 MB."""
    import torch
    import torch.distributed as dist

    from trainables.config import TrainConfig
    from trainables.failures import cap_memory_from_env
    from trainables.loop import run

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    cap_memory_from_env(rank)
    started = time.monotonic()
    try:
        run(TrainConfig.model_validate(CFG), None, device=torch.device("cpu"))
        results.put((rank, "ok", "", 0.0))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        results.put((rank, type(exc).__name__, str(exc), time.monotonic() - started))


@pytest.mark.slow  # ~20 s: two spawned processes import torch and load the data
def test_an_out_of_memory_error_on_rank_1_ends_every_rank_with_its_reason(data_root, monkeypatch):
    monkeypatch.setenv(MEMORY_CAP_ENV, "300")
    monkeypatch.setenv(MEMORY_CAP_RANK_ENV, "1")
    outcome = run_ranks(_rank)
    assert [(rank, kind) for rank, kind, _, _ in outcome] == [(0, "OutOfMemoryError"), (1, "OutOfMemoryError")]
    assert outcome[0][2] == outcome[1][2], outcome  # rank 0 raises rank 1's error, reason and all
    assert outcome[1][2].startswith("out of memory in epoch 1 at train.batch_size=2000 on cpu, rank 1 of 2 ("), outcome
    assert outcome[0][3] < 30, outcome  # seconds, rank 0 from start to its error


SPEC = """\
name: ddpoom
metric: {name: val_acc, mode: max}
data: {subset: 2500, val_fraction: 0.2}
model: {arch: tinynet}
train: {epochs: 1, batch_size: 2000, seed: 1, augment: none}
search:
  lr: {choice: [0.01]}
searcher: {algorithm: grid, num_samples: 1, max_concurrent_trials: 1}
scheduler: {algorithm: fifo}
resources: {workers_per_trial: 2, cpus_per_worker: 1}
storage: {path: %s}
failure: {max_failures: 2}
"""


@pytest.mark.slow
@pytest.mark.ray
def test_a_ddp_trial_whose_rank_1_runs_out_of_memory_fails_at_once_with_its_reason(tmp_path, data_root):
    """A 2-worker DDP trial under real Ray Train: rank 1 runs out of memory in its first step. The trial ends
    within minutes (on main it waited in Ray Train's report barrier and rank 0's all-reduce until the group's
    30-minute timeout), not retried, recorded with rank 1's out-of-memory reason."""
    import json
    import subprocess
    import sys

    spec = tmp_path / "ddpoom.yaml"
    spec.write_text(SPEC % (tmp_path / "results"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update({MEMORY_CAP_ENV: "300", MEMORY_CAP_RANK_ENV: "1"})
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), "-q"], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=600)
    took = time.monotonic() - started
    (trial,) = json.loads((tmp_path / "results" / "ddpoom" / "trials.json").read_text()).values()
    assert trial["status"] == "failed", (trial, proc.stderr[-3000:])
    assert "out of memory in epoch 1 at train.batch_size=2000 on cpu, rank 1 of 2 (" in trial["reason"], trial
    assert "restart" not in json.dumps(trial) or trial.get("restarts", 0) == 0, trial
    assert took < 240, took  # seconds for the whole sweep, Ray's start included
