"""Out of memory, for real: the training process is capped (RLIMIT_DATA, via TERNSEARCH_FAULT_MEMORY_MB) at
its start-up size plus a few hundred MB, as on a small machine, and a batch too large for that fails in the
allocator. Activations per image, measured: tinynet ~0.55 MB, resnet20 ~1 MB. Real CIFAR-10, real Ray, real
SQLite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.failures import MEMORY_CAP_ENV


TRAIN = """\
name: oom
data: {subset: 2500, val_fraction: 0.2}
model: {arch: tinynet}
train: {epochs: 1, batch_size: 2000, threads: 1}
"""

SPEC = """\
name: oomsweep
metric: {name: val_acc, mode: max}
data: {subset: 3750, val_fraction: 0.2}
model: {arch: resnet20}
train: {epochs: 1, optimizer: adam, lr: 0.002, seed: 3}
search:
  batch_size: {choice: [3000, 32]}
searcher: {algorithm: grid, num_samples: 2, max_concurrent_trials: 1}
scheduler: {algorithm: fifo}
storage: {path: %s}
failure: {max_failures: 2}
"""


def _cli(*args: str, cwd: Path, cap_mb: int, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env[MEMORY_CAP_ENV] = str(cap_mb)
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def test_train_out_of_memory_is_one_line_exit_1(tmp_path, data_root):
    """tinynet at batch 2000 needs ~1.1 GB; the process gets 400 MB more than it has at start."""
    cfg = tmp_path / "oom.yaml"
    cfg.write_text(TRAIN)
    proc = _cli("train", str(cfg), "-q", cwd=tmp_path, cap_mb=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(
        f"{cfg}: training failed: out of memory in epoch 1 at train.batch_size=2000 on cpu ("), lines
    assert lines[0].endswith("; lower train.batch_size or pick a smaller model"), lines


@pytest.mark.slow
@pytest.mark.ray
def test_out_of_memory_fails_its_trial_alone(tmp_path, data_root):
    """resnet20 at batch 3000 needs ~3 GB; each trial process gets 1.5 GB more than it has at start (a Ray
    worker also needs room for its own threads). The batch-3000 trial fails with the reason, once (a retry finds
    its failure marker and does not train again), its MLflow run ends FAILED; the batch-32 trial completes and
    the sweep exits 0."""
    spec = tmp_path / "oomsweep.yaml"
    spec.write_text(SPEC % (tmp_path / "results"))
    proc = _cli("sweep", str(spec), "-q", cwd=tmp_path, cap_mb=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results" / "oomsweep"
    trials = {t["config"]["batch_size"]: t for t in json.loads((results / "trials.json").read_text()).values()}
    assert trials[32]["status"] == "completed" and trials[32]["epochs"] == 1, trials[32]
    big = trials[3000]
    assert big["status"] == "failed", big
    assert big["reason"].startswith("out of memory in epoch 1 at train.batch_size=3000 on cpu ("), big["reason"]
    assert json.loads(proc.stdout)["best_trial"] == trials[32]["trial_id"]
    rows = [json.loads(x) for x in (results / "history.jsonl").read_text().splitlines()]
    big_rows = [r for r in rows if r["trial_id"] == big["trial_id"]]
    assert [r.get("failed", "")[:13] for r in big_rows] == ["out of memory"], big_rows  # reported once

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("oomsweep")
    runs = {r.data.tags.get("ternsearch.trial_id"): r for r in client.search_runs([exp.experiment_id])}
    failed = runs[big["trial_id"]]
    assert failed.info.status == "FAILED" and "out of memory" in failed.data.tags["ternsearch.status"]
    assert runs[trials[32]["trial_id"]].info.status == "FINISHED"
