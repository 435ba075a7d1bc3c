"""The user's journey as a user walks it: relative paths typed in another directory, a sweep that fails for a
reason a retry cannot fix, the fix, and ``--resume``. Real Ray, real MLflow (SQLite), real CIFAR-10."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = """\
name: journey
metric: {name: val_acc, mode: max}
data: {val_fraction: 0.2, subset: 400}
model: {arch: tinynet}
train: {epochs: 1, batch_size: 64}
search:
  lr: {loguniform: [0.01, 0.2]}
searcher: {algorithm: random, seed: 0, num_samples: 3}
scheduler: {algorithm: fifo}
resources: {workers_per_trial: 1, cpus_per_worker: 1}
storage: {path: results}
"""

# What a normal sweep may print on stderr: the plan, our progress lines and the summary. Nothing from Ray, Tune,
# MLflow or Optuna (no token-auth warning, configuration box, TensorBoard hint, INFO lines or tracebacks).
OUR_LINES = re.compile(r"^(sweep '\w+' from | +\S|\[ *\d+\.\ds\] \w{8} |best trial \w{8}: |results: |MLflow: |"
                       r"best config: )")


def _sweep(work: Path, data: str, *extra: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(TERNSEARCH_DATA=data, HOME=str(work.parent / "home"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", "journey.yaml", *extra], cwd=work,
                          env=env, text=True, capture_output=True, timeout=timeout)
    return proc, time.monotonic() - t0


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "somewhere" / "else"  # not the repository root, and not where the data lies
    work.mkdir(parents=True)
    (work / "journey.yaml").write_text(SPEC)
    return work


def _runs(results: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(results / "mlflow.db") as db:
        return db.execute("SELECT name, status FROM runs ORDER BY name").fetchall()


@pytest.mark.slow
@pytest.mark.ray
def test_relative_data_path_from_another_directory_and_a_quiet_console(tmp_path, data_root):
    work = _workdir(tmp_path)
    proc, _ = _sweep(work, os.path.relpath(data_root, work))
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = json.loads((work / "results" / "journey" / "trials.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    noise = [ln for ln in proc.stderr.splitlines() if ln.strip() and not OUR_LINES.match(ln)]
    assert not noise, "\n".join(noise[:20])
    assert json.loads(proc.stdout)["statuses"]["completed"] == 3


@pytest.mark.slow
@pytest.mark.ray
def test_wrong_relative_data_path_is_one_line_before_anything_starts(tmp_path):
    work = _workdir(tmp_path)
    proc, took = _sweep(work, "../no/such/data", timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    missing = (work / "../no/such/data").resolve()
    assert len(lines) == 1 and str(missing) in lines[0] and "journey.yaml" in lines[0], proc.stderr[-3000:]
    assert took < 30, took
    assert not (work / "results").exists()  # nothing recorded, nothing to resume or delete


def _corrupt_copy(folder: Path, data_root: Path) -> None:
    """Files of the right names and sizes (the preflight check passes) whose first label byte is 255: every
    trial fails reading them, the same way, and a retry would too."""
    bin_dir = folder / "cifar-10-batches-bin"
    bin_dir.mkdir(parents=True)
    for real in sorted((data_root / "cifar-10-batches-bin").glob("*.bin")):
        with open(bin_dir / real.name, "wb") as f:
            f.truncate(real.stat().st_size)
            f.write(b"\xff")


@pytest.mark.slow
@pytest.mark.ray
def test_trials_failing_the_same_way_stop_the_sweep_and_resume_recovers(tmp_path, data_root):
    work = _workdir(tmp_path)
    bad = tmp_path / "data"
    _corrupt_copy(bad, data_root)
    proc, took = _sweep(work, os.path.relpath(bad, work), timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"trial \w{8} failed: DataError: .*label bytes >= 10", last), proc.stderr[-3000:]
    assert str(bad.resolve()) in last and "--resume" in last
    assert took < 120, took
    results = work / "results" / "journey"
    trials = json.loads((results / "trials.json").read_text())
    failed = [t for t in trials.values() if t["status"] == "failed"]
    assert len(failed) == 2 and not [t for t in trials.values() if t["status"] == "completed"], trials
    for t in failed:
        assert t["reason"].startswith("DataError: ") and "label bytes" in t["reason"], t
    errors = list((results / "tune").glob("trial_*/error.txt"))
    assert errors and all(e.read_text().count("Failure # ") == 1 for e in errors)  # no trial was retried
    assert ("journey", "FAILED") in _runs(results)

    for real in (data_root / "cifar-10-batches-bin").glob("*.bin"):  # the user fixes the data...
        (bad / "cifar-10-batches-bin" / real.name).unlink()
        (bad / "cifar-10-batches-bin" / real.name).symlink_to(real.resolve())
    resumed, _ = _sweep(work, os.path.relpath(bad, work), "--resume")  # ...and resumes
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    trials = json.loads((results / "trials.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    runs = _runs(results)
    assert len(runs) == 4 and all(status == "FINISHED" for _, status in runs), runs  # parent + one per trial
