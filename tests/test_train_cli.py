"""`ternsearch train` as a user runs it: a real subprocess on real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_tensorboard import check_run_events

CONFIG = """\
name: cli
data: {subset: 600, val_fraction: 0.2}
model: {arch: tinynet}
train: {epochs: 2, batch_size: 64, threads: 2}
"""


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", "train", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)


def test_malformed_config_is_one_line_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("batch_size: 64", "batch_sise: 64"))
    proc = _train(str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{bad}:4: train.batch_sise: unknown key (did you mean 'batch_size'? allowed: "
        + proc.stderr.split("allowed: ", 1)[1].strip()
    ]
    assert "Traceback" not in proc.stderr


def test_train_then_resume_continues_and_evaluates_on_test(tmp_path, data_root):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    first = _train(str(cfg), "-o", str(out), "--epochs", "1", "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["epoch"] == 1
    resumed = _train(str(cfg), "--resume", str(out), "-q", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads(resumed.stdout)
    assert final["epoch"] == 2 and 0.0 <= final["test_acc"] <= 1.0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    check_run_events(out)  # TensorBoard event files of both runs, one value an epoch


def test_a_batch_larger_than_the_data_is_one_line_exit_1(tmp_path, data_root):
    """Found when the file loads, before any data is read or any folder made: one line naming the key and line."""
    cfg = tmp_path / "big.yaml"
    text = CONFIG.replace("subset: 600", "subset: 100").replace("batch_size: 64", "batch_size: 128")
    cfg.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "batch_size: 128" in row)
    proc = _train(str(cfg), "-o", str(tmp_path / "out"), "-q", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{cfg}:{line}: train.batch_size: batch_size 128 is more than the 80 training images of the split (a batch "
        "must fit: use at most 80, or a larger data.subset)"]
    assert not (tmp_path / "out").exists()
