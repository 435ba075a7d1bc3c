"""What a retry would repeat, told apart from what it can fix; the guard that stops a sweep failing at setup; paths
pinned where the user typed them. Pure logic: Ray's own exception and policy classes, fake trials for the guard
(the real sweeps are in tests/test_journey.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from trainables.datafiles import DataError
from trainables.failures import (DivergedError, OutOfMemoryError, PermanentTrialError, as_permanent, find_permanent,
                                 without_permanent_prefix)


@pytest.mark.parametrize("exc", [DataError("CIFAR-10 data folder /x does not exist"), ImportError("no module x"),
                                 ValueError("batch_size 100 is not divisible by 3 workers"), KeyError("lr"),
                                 FileNotFoundError("/w/ckpt"), DivergedError(2, float("nan")),
                                 OutOfMemoryError("out of memory in epoch 1", 1)])
def test_errors_a_retry_would_repeat_are_permanent(exc):
    permanent = as_permanent(exc)
    assert permanent is not None and permanent.reason.startswith(type(exc).__name__ + ": ")
    assert permanent.setup is not isinstance(exc, (DivergedError, OutOfMemoryError))


@pytest.mark.parametrize("exc", [RuntimeError("Connection closed by peer"), OSError(5, "Input/output error"),
                                 ConnectionResetError()])
def test_crashes_and_lost_peers_stay_retryable(exc):
    assert as_permanent(exc) is None


def test_the_reason_is_one_line_and_survives_pickling():
    import pickle

    error = as_permanent(DataError("folder\n  /x\tmissing"))
    assert error.reason == "DataError: folder /x missing"
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.kind, again.setup) == (error.reason, "DataError", True)
    assert without_permanent_prefix(f"trainables.failures.PermanentTrialError: {error.reason}") == error.reason


def test_found_inside_ray_and_train_wrappers():
    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    inner = PermanentTrialError("DataError: x", "DataError")
    group = WorkerGroupError("training failed", {1: RuntimeError("peer gone"), 0: inner})
    assert find_permanent(group) is inner
    task = RayTaskError("train", "traceback", group)
    assert find_permanent(task) is inner
    assert find_permanent(WorkerGroupError("training failed", {0: RuntimeError("peer gone")})) is None


def test_train_policy_raises_on_permanent_and_retries_crashes():
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from trainables.entry import _permanent_aware_policy

    policy = _permanent_aware_policy()(FailureConfig(max_failures=3))
    crash = WorkerGroupError("failed", {0: RuntimeError("worker died")})
    assert policy.make_decision(crash) == FailureDecision.RETRY
    setup = WorkerGroupError("failed", {0: PermanentTrialError("DataError: x", "DataError")})
    assert policy.make_decision(setup) == FailureDecision.RAISE


def _trial(tid):
    return SimpleNamespace(trial_id=tid)


def _guard_with(failures: dict, needed=2):
    from ternsearch.run import failfast

    guard = failfast.SetupFailureGuard(needed=needed)
    for tid, error in failures.items():
        failfast._PERMANENT[tid] = error
    return guard


def test_guard_stops_when_the_first_trials_fail_the_same_way_at_setup(monkeypatch):
    import signal

    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)  # no Tune handler: the stopper path
    same = PermanentTrialError("DataError: /d missing", "DataError")
    guard = _guard_with({"a1": same, "b2": same})
    guard.on_trial_error(0, [], _trial("a1"))
    assert guard.reason is None and not guard.stopper.stop_all()
    guard.on_trial_error(0, [], _trial("b2"))
    assert guard.reason == "trial a1 failed: DataError: /d missing" and guard.stopper.stop_all()


@pytest.mark.parametrize("case", ["different reasons", "diverged", "an epoch trained first", "not permanent"])
def test_guard_lets_the_sweep_go_on(case):
    setup = PermanentTrialError("DataError: /d missing", "DataError")
    if case == "different reasons":
        guard = _guard_with({"c1": setup, "c2": PermanentTrialError("ValueError: lr", "ValueError")})
    elif case == "diverged":
        diverged = PermanentTrialError("DivergedError: diverged at epoch 1 (train_loss=nan)", "DivergedError")
        guard = _guard_with({"c1": diverged, "c2": diverged})
    elif case == "not permanent":
        from ternsearch.run import failfast

        failfast._PERMANENT.pop("c1", None), failfast._PERMANENT.pop("c2", None)
        guard = _guard_with({})
    else:
        guard = _guard_with({"c1": setup, "c2": setup})
        guard.on_trial_result(0, [], _trial("c0"), {"epoch": 1, "val_acc": 0.3})
    for tid in ("c1", "c2"):
        guard.on_trial_error(0, [], _trial(tid))
    assert guard.reason is None and not guard.stopper.stop_all()


def test_data_folder_from_the_environment_is_pinned_where_the_command_runs(tmp_path, monkeypatch):
    from ternsearch.spec import load_spec

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\nsearch:\n  lr: {loguniform: [0.01, 0.1]}\n")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    monkeypatch.setenv("TERNSEARCH_DATA", "../data")
    base = load_spec(str(spec_file)).base_config()
    assert base.data.root == str(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # a trial's working directory elsewhere sees the same absolute folder
    assert base.data.root == str(tmp_path / "data")


@pytest.mark.parametrize(("given", "expected"), [("sqlite:///m.db", "sqlite:///{here}/m.db"),
                                                 ("file:mlruns", "file://{here}/mlruns"),
                                                 ("./mlruns", "file://{here}/mlruns"),
                                                 ("http://127.0.0.1:5000", "http://127.0.0.1:5000")])
def test_relative_tracking_uris_are_made_absolute(tmp_path, monkeypatch, given, expected):
    from ternsearch.tracking.store import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(tmp_path / "results", given) == expected.format(here=os.fspath(tmp_path))
