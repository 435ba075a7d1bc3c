"""At scale: the sweep's records do not grow a cost per result with the number of trials, and a small version of
benchmarks/scale.py (replayed trials through the real driver, ASHA + TPE, SQLite MLflow store, report) ends every
trial exactly once in Tune, trials.json, the Optuna study and MLflow, also after a SIGKILLed driver and --resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _trial(tid: str):
    return SimpleNamespace(trial_id=tid, config={"lr": 0.1}, error_file=None)


def test_trials_json_is_not_rewritten_on_every_result(tmp_path, monkeypatch):
    """Rewriting trials.json whole on each result cost O(trials) per result (a quarter of the driver's time at 200
    trials, py-spy): results rewrite it at most once a second; a trial's start and end, and the sweep's end, at
    once."""
    from ternsearch.results import recorder

    writes = []
    real = recorder._write_json
    monkeypatch.setattr(recorder, "_write_json", lambda path, data: (writes.append(path.name), real(path, data)))
    rec = recorder.SweepRecorder(str(tmp_path), ["lr"])
    trials = [_trial(f"t{i:05d}") for i in range(20)]
    for t in trials:
        rec.on_trial_start(0, trials, t)
    started = len(writes)
    assert started == 20  # each start at once
    t0 = time.monotonic()
    for epoch in range(1, 6):
        for t in trials:
            rec.on_trial_result(0, trials, t, {"epoch": epoch, "val_acc": 0.1 * epoch})
        rec.on_step_end(0, trials)
    results_writes = len(writes) - started
    assert results_writes <= 2 + (time.monotonic() - t0) / recorder.SAVE_EVERY_S, results_writes  # not 100
    rec.on_trial_complete(0, trials, trials[0])
    on_disk = json.loads((tmp_path / "trials.json").read_text())
    assert on_disk["t00000"]["status"] == "stopped"  # an end is written at once (no run_complete: ASHA-stopped)
    rec.on_experiment_end(trials)
    on_disk = json.loads((tmp_path / "trials.json").read_text())
    assert {e["epochs"] for e in on_disk.values()} == {5}  # the sweep's end writes what was stale
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 100  # every result has its row


def _curves(path: Path) -> Path:
    """A hand-made learning-curve table over the benchmark's search space: 12 trials x 4 epochs."""
    import csv
    import random

    rng = random.Random(0)
    cols = ["trial_id", "lr", "weight_decay", "ternary_lr_ratio", "augment", "mixup_alpha", "label_smoothing",
            "schedule", "warmup_epochs", "epoch", "val_acc", "val_loss"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(12):
            aug = rng.choice(["standard", "cutmix", "mixup", "autoaugment", "randaugment"])
            values = [f"r{i:03d}", 10 ** rng.uniform(-2, -0.3), 10 ** rng.uniform(-5, -3), 10 ** rng.uniform(-1, 0.3),
                      aug, rng.uniform(0.1, 1) if aug == "mixup" else "", rng.uniform(0, 0.2),
                      rng.choice(["cosine", "step", "onecycle"]), rng.randint(0, 2)]
            top = rng.uniform(0.3, 0.6)
            for epoch in range(1, 5):
                w.writerow([*values, epoch, top * epoch / 4, 2.0 - top * epoch / 4])
    return path


def _scale(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    table = _curves(tmp_path / "curves.csv")
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--trials", "100", "--epochs", "5",
                           "--concurrent", "16", "--stores", "sqlite", "--table", str(table), "--work",
                           str(tmp_path / "work"), "--json", str(out), *extra],
                          cwd=tmp_path, text=True, capture_output=True, timeout=600)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())["sqlite"]


def _assert_exactly_once(m: dict, proc) -> None:
    assert m["problems"] == [], proc.stdout[-3000:]
    assert sum(m["statuses"].values()) == 100 and "running" not in m["statuses"]
    assert sum(m["tune"].values()) == 100 and set(m["tune"]) <= {"TERMINATED"}
    assert m["study"].get("COMPLETE", 0) + m["study"].get("PRUNED", 0) == 100 and not m["study"].get("RUNNING")
    assert m["mlflow_trial_runs"] == 100 and m["lost_values"] == 0


@pytest.mark.slow
@pytest.mark.ray
def test_small_scale_sweep_killed_half_way_resumes_every_trial_once(tmp_path):
    """100 replayed trials x 5 epochs (the table's 4, the 5th holding the 4th), 16 at once; the driver SIGKILLed
    once half the trials have ended, then --resume: still every trial exactly once, none RUNNING, no value lost.
    (One test, not a straight run beside it: the resumed sweep asserts all a straight one would, in half the time.)"""
    proc, m = _scale(tmp_path, "--kill-at", "0.5")
    assert "epochs 5-5 hold epoch 4's values" in proc.stdout
    assert m["targets"]["0 runs RUNNING"] and m["targets"]["0 metrics lost"]
    assert m["killed_at"] is not None and 0 < m["killed_at"] < 100, proc.stdout[-2000:]
    _assert_exactly_once(m, proc)
