"""Multi-objective search on real CIFAR-10: accuracy and ternary sparsity, the Pareto front, and picking a point
of it to export. Real local Ray, real SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers_report import cli

SPEC = """\
name: mo
metric:
  - {{name: val_acc, mode: max}}
  - {{name: ternary_zero_frac, mode: max}}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 2, batch_size: 64, optimizer: adam}}
search:
  lr: {{loguniform: [0.0005, 0.02]}}
  weight_decay: {{loguniform: [1.0e-5, 0.3]}}
  model.quantizer: {{choice: [twn, ttq]}}
searcher: {{algorithm: {algorithm}, num_samples: 6, seed: 3, max_concurrent_trials: 2}}
scheduler: {{algorithm: fifo}}
storage: {{path: {storage}}}
"""


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("algorithm", ["tpe"])
def test_two_objectives_give_a_pareto_front_to_pick_from(tmp_path, data_root, algorithm):
    spec = tmp_path / "mo.yaml"
    spec.write_text(SPEC.format(algorithm=algorithm, storage=tmp_path / "results"))
    proc = cli("sweep", str(spec), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    results = Path(summary["results"])
    trials = json.loads((results / "trials.json").read_text())
    assert len(trials) == 6 and all(t["status"] == "completed" for t in trials.values())

    # The front is exactly the non-dominated set of the trials' final (val_acc, ternary_zero_frac).
    point = {tid: [t["last"]["val_acc"], t["last"]["ternary_zero_frac"]] for tid, t in trials.items()}
    front = {p["trial_id"] for p in summary["pareto"]}
    assert front
    for tid, p in point.items():
        dominated = any(_dominates(q, p) for other, q in point.items() if other != tid)
        assert (tid in front) == (not dominated), (tid, p, point)
    assert summary["best_trial"] in front  # the best accuracy is never dominated
    assert "Pareto front (max val_acc, max ternary_zero_frac)" in proc.stderr

    # The study on disk is multi-objective: both values of every trial, labelled with its Tune id.
    import optuna

    study = optuna.load_study(study_name=json.loads((results / "sweep.json").read_text())["sweep_id"],
                              storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.directions) == 2 and study.user_attrs["objectives"] == ["val_acc", "ternary_zero_frac"]
    records = {r.user_attrs["tune_trial_id"]: r for r in study.get_trials()}
    assert sorted(records) == sorted(trials) and all(r.state.name == "COMPLETE" for r in records.values())
    for tid, r in records.items():
        assert r.values == pytest.approx(point[tid])

    # --pick: the sparsest front trial within a tolerance of the front's best accuracy.
    best_acc = max(point[t][0] for t in front)
    near = [t for t in front if best_acc - point[t][0] <= 0.05]
    sparsest = max(near, key=lambda t: point[t][1])
    out = tmp_path / "picked.yaml"
    picked = cli("export", str(results), "--pick", "ternary_zero_frac:0.05", "-o", str(out), cwd=tmp_path)
    assert picked.returncode == 0, picked.stderr
    assert yaml.safe_load(out.read_text())["origin"]["trial_id"] == sparsest

    bad = cli("export", str(results), "--pick", "val_loss", "-o", str(tmp_path / "x.yaml"), cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        "--pick val_loss: 'val_loss' is not an objective of sweep 'mo' (choose from: val_acc, ternary_zero_frac)")


def test_best_trial_breaks_ties_on_the_first_objective_by_the_others():
    from ternsearch.results.best import best_trial, pareto_trials

    def trial(tid, acc, zero, status="completed"):
        return tid, {"trial_id": tid, "status": status, "last": {"val_acc": acc, "ternary_zero_frac": zero}}

    objectives = [["val_acc", "max"], ["ternary_zero_frac", "max"]]
    # "a" comes first and ties "b" on val_acc, but "b" is sparser: "a" is dominated and must not be chosen.
    trials = dict([trial("a", 0.5, 0.30), trial("b", 0.5, 0.40), trial("c", 0.4, 0.90),
                   trial("d", 0.9, 0.10, status="failed")])
    best = best_trial(trials, "val_acc", "max", objectives)
    assert best["trial_id"] == "b"
    assert best["trial_id"] in {t["trial_id"] for t in pareto_trials(trials, objectives)}
    # A minimized second objective breaks the tie the other way; one objective keeps the first-seen trial.
    assert best_trial(trials, "val_acc", "max", [["val_acc", "max"], ["ternary_zero_frac", "min"]])["trial_id"] == "a"
    assert best_trial(trials, "val_acc", "max")["trial_id"] == "a"
