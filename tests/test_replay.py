"""Replayed sweeps (``ternsearch sweep FILE --replay TABLE``, trainables/replay.py): the nearest recorded trial on a
hand-made table (pure logic), the table's checks, and a real replayed sweep through the CLI (TPE + ASHA, Tune,
records, MLflow) on the committed learning-curve table (benchmarks/data/curves-cpu.csv)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from trainables.replay import ReplayError, ReplayParam, distance, epoch_result, nearest, read_table

from helpers_report import cli

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "data" / "curves-cpu.csv"
LR = ReplayParam("lr", "loguniform", 0.01, 1.0)
AUG = ReplayParam("augment", "choice")
ALPHA = ReplayParam("mixup_alpha", "uniform", 0.0, 1.0)
WARM = ReplayParam("warmup_epochs", "int", 0, 4)
PARAMS = (LR, AUG, ALPHA, WARM)
# trial -> (lr, augment, mixup_alpha, warmup_epochs): a hand-made table, two epochs each
HAND = {"a": (0.01, "standard", "", 0), "b": (0.1, "standard", "", 0), "c": (0.1, "mixup", 0.9, 4),
        "d": (1.0, "mixup", 0.1, 0), "e": (0.1, "standard", "", 0)}


def _write(path: Path, rows: dict = HAND, drop: str = "") -> Path:
    cols = ["trial_id", "lr", "augment", "mixup_alpha", "warmup_epochs", "epoch", "val_acc", "val_loss"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([c for c in cols if c != drop])
        for i, (tid, values) in enumerate(rows.items()):
            for epoch in (1, 2):
                row = [tid, *values, epoch, 0.1 * i + 0.05 * epoch, 2.0 - 0.1 * epoch]
                w.writerow([v for c, v in zip(cols, row) if c != drop])
    return path


@pytest.fixture
def hand(tmp_path):
    return read_table(str(_write(tmp_path / "t.csv")), ("lr", "augment", "mixup_alpha", "warmup_epochs"))


def test_distance_is_on_the_spec_scale(hand):
    # lr is log-scaled over [0.01, 1]: 0.01 -> 0, 0.1 -> 0.5, 1 -> 1; a categorical mismatch is 1
    assert distance(PARAMS, {"lr": 0.1, "augment": "standard", "warmup_epochs": 0}, hand.values["b"]) == 0.0
    assert math.isclose(distance(PARAMS, {"lr": 0.01, "augment": "standard", "warmup_epochs": 0},
                                 hand.values["b"]), 0.5)
    assert math.isclose(distance(PARAMS, {"lr": 0.1, "augment": "standard", "warmup_epochs": 2},
                                 hand.values["b"]), 0.5)  # int: 2 of a 0..4 range
    # mixup_alpha is inactive for "standard": only augment's mismatch counts, not the alpha the other lacks
    assert distance(PARAMS, {"lr": 0.1, "augment": "mixup", "mixup_alpha": 0.9, "warmup_epochs": 0},
                    hand.values["b"]) == 1.0
    assert math.isclose(distance(PARAMS, {"lr": 0.1, "augment": "mixup", "mixup_alpha": 0.5, "warmup_epochs": 4},
                                 hand.values["c"]), 0.4)


def test_nearest_row(hand):
    # 0.03 is nearer 0.01 than 0.1 on the log scale (0.24 against 0.26), though not on a linear one
    assert nearest(hand, PARAMS, {"lr": 0.03, "augment": "standard", "warmup_epochs": 0})[0] == "a"
    assert nearest(hand, PARAMS, {"lr": 0.04, "augment": "standard", "warmup_epochs": 0})[0] == "b"
    # b and e are the same configuration: the first recorded wins
    assert nearest(hand, PARAMS, {"lr": 0.1, "augment": "standard", "warmup_epochs": 0}) == ("b", 0.0)
    # among the mixup trials the alpha decides (c is 0.9, d is 0.1), even against a nearer lr
    assert nearest(hand, PARAMS, {"lr": 0.9, "augment": "mixup", "mixup_alpha": 0.85, "warmup_epochs": 4})[0] == "c"
    # lr 1.0 without mixup: b (lr 0.5 away, augment equal) is nearer than d (lr equal, augment differs: 1)
    assert nearest(hand, PARAMS, {"lr": 1.0, "augment": "standard", "warmup_epochs": 0})[0] == "b"


def test_epoch_result_reports_the_recorded_epoch(hand):
    from trainables.replay import ReplaySetup

    setup = ReplaySetup(hand, PARAMS, epochs=2, metric="val_loss", mode="min", trial_dir_root="/nonexistent")
    first, last = (epoch_result(setup, "c", 0.25, e, 2) for e in (1, 2))
    assert (first["val_acc"], first["run_complete"], first["replay_of"]) == (0.25, False, "c")
    assert (last["epoch"], last["run_complete"], last["best_metric"], last["best_epoch"]) == (2, True, 1.8, 2)


@pytest.mark.parametrize("drop, rows, message", [
    ("trial_id", HAND, "not a replay table (no trial_id column"),
    ("val_acc", {"a": (0.01, "standard", "", "x")}, None),  # a value column stays text: read fine
])
def test_table_problems(tmp_path, drop, rows, message):
    path = str(_write(tmp_path / "t.csv", rows, drop))
    if message is None:
        assert read_table(path, ("lr", "augment", "mixup_alpha", "warmup_epochs")).metrics == ("val_loss",)
        return
    with pytest.raises(ReplayError, match=message.replace("(", r"\(")):
        read_table(path)


def test_epochs_must_run_in_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("trial_id,lr,epoch,val_acc\na,0.1,1,0.5\na,0.1,3,0.6\n")
    with pytest.raises(ReplayError, match=r"t.csv:3: trial a epoch 3 follows epoch 1"):
        read_table(str(path), ("lr",))


# ------------------------------------------------------------------------------------------ through the CLI
TABLE_SPEC = ROOT / "benchmarks" / "data" / "curves-cpu.yaml"  # the sweep that recorded the table


def _spec(tmp_path: Path, name: str = "replayed") -> Path:
    """The table's own sweep, as TPE + ASHA, 12 trials, tracked in MLflow (the recording was not)."""
    doc = yaml.safe_load(TABLE_SPEC.read_text())
    doc.pop("tracking")
    doc.update(name=name, searcher={"algorithm": "tpe", "seed": 3, "num_samples": 12},
               scheduler={"algorithm": "asha", "grace_period": 2, "reduction_factor": 3},
               storage={"path": str(tmp_path / "results")})
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return spec


@pytest.mark.slow
@pytest.mark.ray
def test_replayed_sweep(tmp_path, monkeypatch):
    from ternsearch.run.replay import load_replay, replay_params
    from ternsearch.spec import load_spec

    monkeypatch.delenv("TERNSEARCH_DATA", raising=False)  # a replayed sweep reads no data
    spec_file = _spec(tmp_path)
    t0 = time.perf_counter()
    proc = cli("sweep", str(spec_file), "--replay", str(TABLE), cwd=tmp_path, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary, results = json.loads(proc.stdout), tmp_path / "results" / "replayed"
    trials = json.loads((results / "trials.json").read_text())
    history = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    spec = load_spec(str(spec_file))
    table, params = load_replay(spec, str(TABLE)), replay_params(spec)
    for tid, entry in trials.items():
        source, _ = nearest(table, params, entry["config"])
        rows = sorted((r for r in history if r["trial_id"] == tid), key=lambda r: r["epoch"])
        assert [r["epoch"] for r in rows] == list(range(1, entry["epochs"] + 1))
        assert {r["replay_of"] for r in rows} == {source}
        for row, recorded in zip(rows, table.curves[source]):
            assert {k: row[k] for k in recorded} == recorded
    stopped = [t for t in trials.values() if t["status"] == "stopped"]
    assert stopped and all(t["epochs"] < 8 and t["reason"].startswith("stopped by ASHA") for t in stopped)
    assert all(t["epochs"] == 8 for t in trials.values() if t["status"] == "completed")
    assert summary["trials"] == len(trials) == 12
    assert summary["statuses"] == {"completed": 12 - len(stopped), "stopped": len(stopped), "failed": 0}
    assert "model_uri" not in summary  # a replayed checkpoint holds no model
    best = max(r["val_acc"] for r in history if r["trial_id"] == summary["best_trial"])
    assert summary["best_value"] <= best
    spent = max(t["ended"] for t in trials.values()) - min(t["started"] for t in trials.values())
    assert spent < 30, f"the 12 replayed trials took {spent:.1f} s ({wall:.1f} s for the whole command)"
    runs = _mlflow_runs(results)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}


def _mlflow_runs(results: Path):
    from mlflow.tracking import MlflowClient  # MLflow: only for the test that reads the sweep's store

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("replayed")
    return [r for r in client.search_runs([exp.experiment_id], max_results=100)
            if r.data.tags.get("mlflow.parentRunId")]


@pytest.mark.parametrize("drop, message", [
    ("lr", "no column for the searched key lr of "),
    ("val_acc", "no column for the objective val_acc of "),
])
def test_table_missing_a_column(tmp_path, drop, message):
    rows = list(csv.reader(TABLE.open()))
    keep = [i for i, c in enumerate(rows[0]) if c != drop]
    table = tmp_path / "table.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([[row[i] for i in keep] for row in rows])
    proc = cli("sweep", str(_spec(tmp_path)), "--replay", str(table), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"--replay {table}: {message}"), proc.stderr
    assert not (tmp_path / "results").exists()


def test_searcher_settings_reach_the_sampler():
    """The settings the replay benchmark compares (searcher.algorithm gp, n_startup_trials, multivariate,
    constant_liar) are the samplers' own."""
    import optuna  # Optuna: only for the tests of the samplers

    from ternsearch.spec.models import Param
    from ternsearch.spec.space import make_sampler

    params = (Param("augment", "choice", choices=("standard", "mixup")),
              Param("mixup_alpha", "uniform", low=0.1, high=1.0, when={"augment": ("mixup",)}))
    gp = make_sampler("gp", params, 1, 36, n_startup_trials=5)
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 5
    tpe = make_sampler("tpe", params, 1, 36)
    assert (tpe._multivariate, tpe._group, tpe._constant_liar, tpe._n_startup_trials) == (True, True, True, 9)
    plain = make_sampler("tpe", params, 1, 36, multivariate=False, constant_liar=False, n_startup_trials=3)
    settings = (plain._multivariate, plain._group, plain._constant_liar, plain._n_startup_trials)
    assert settings == (False, False, False, 3)


def test_the_table_command_extends_a_table_it_wrote(tmp_path):
    """benchmarks/replay_table.py takes an earlier table as a source: rows kept byte for byte, a second copy of the
    same trials refused (the recording extended by a second random-search seed goes through this)."""
    tool = ROOT / "benchmarks" / "replay_table.py"
    out = tmp_path / "again.csv"
    done = subprocess.run([sys.executable, str(tool), str(TABLE), "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == TABLE.read_bytes()
    twice = subprocess.run([sys.executable, str(tool), str(TABLE), str(out), "-o", str(tmp_path / "x.csv")],
                           capture_output=True, text=True)
    assert twice.returncode == 1 and "is already in the table" in twice.stderr, twice.stderr
    assert not (tmp_path / "x.csv").exists()
