"""What the Optuna study learns from how trials end (pure logic: the real OptunaSearch and Optuna study, driven
through the callbacks Tune calls, without running trials)."""

from __future__ import annotations

import optuna
import pytest

from ternsearch.spec import load_spec
from ternsearch.run.tuner import _searcher_and_scheduler, make_plan

SPEC = """\
name: s
metric: {name: val_acc, mode: max}
model: {arch: tinynet}
train: {epochs: 4}
search:
  lr: {loguniform: [1.0e-4, 1.0e-1]}
searcher: {algorithm: tpe, num_samples: 8, seed: 1}
scheduler: {algorithm: asha, grace_period: 1, reduction_factor: 2}
"""

TState = optuna.trial.TrialState


@pytest.fixture
def searcher(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    spec = load_spec(path)
    search, _ = _searcher_and_scheduler(spec, make_plan(spec, {"CPU": 2.0}))
    search.set_search_properties(spec.metric.name, spec.metric.mode, config={})
    return search


def _epoch(value: float, epoch: int, **extra) -> dict:
    return {"val_acc": value, "epoch": epoch, "run_complete": False, **extra}


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return study.get_trials(deepcopy=False)[number]


def test_how_trials_end_is_what_the_study_records(searcher):
    ids = [f"t{i}" for i in range(4)]
    for tid in ids:
        assert "lr" in searcher.suggest(tid)
    study = searcher._ot_study

    # t0 runs all 4 epochs; a restart repeats epoch 2 with another value: Optuna keeps the first.
    for e, v in [(1, 0.3), (2, 0.4), (2, 0.9), (3, 0.5), (4, 0.6)]:
        searcher.on_trial_result("t0", _epoch(v, e, run_complete=e == 4))
    searcher.on_trial_complete("t0", result=_epoch(0.6, 4, run_complete=True))
    # t1: ASHA stops it after epoch 1.
    searcher.on_trial_result("t1", _epoch(0.2, 1))
    searcher.on_trial_complete("t1", result=_epoch(0.2, 1))
    # t2 ran out of memory in epoch 2: its failure report carries the worst value, then the trial errors and
    # Tune tells the searcher without a result.
    searcher.on_trial_result("t2", _epoch(0.35, 1))
    searcher.on_trial_result("t2", _epoch(0.0, 2, run_complete=True, failed="out of memory in epoch 2 ..."))
    searcher.on_trial_complete("t2", error=True)
    # t3 crashed without a failure report (e.g. its node died for good).
    searcher.on_trial_result("t3", _epoch(0.25, 1))
    searcher.on_trial_complete("t3", error=True)

    t0, t1, t2, t3 = (_trial(study, i) for i in range(4))
    assert (t0.state, t0.value, t0.intermediate_values) == (TState.COMPLETE, 0.6, {1: 0.3, 2: 0.4, 3: 0.5, 4: 0.6})
    assert (t1.state, t1.intermediate_values) == (TState.PRUNED, {1: 0.2})
    assert (t2.state, t2.value) == (TState.COMPLETE, 0.0)
    assert t3.state == TState.FAIL
    assert searcher._completed_trials == set(ids) and not searcher.__dict__.get("_failed")

    # A diverged trial ASHA stopped on its failure report: it ends completed with that value, not pruned.
    searcher.suggest("t4")
    searcher.on_trial_result("t4", _epoch(0.0, 1, run_complete=True, diverged=True))
    searcher.on_trial_complete("t4", result=_epoch(0.0, 1, run_complete=True, diverged=True))
    t4 = _trial(study, 4)
    assert (t4.state, t4.value) == (TState.COMPLETE, 0.0)
