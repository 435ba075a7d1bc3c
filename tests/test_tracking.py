"""MLflow tracking against a real SQLite store in tmp_path: the tracker's trial runs, restarts, resume and end
statuses; the sweep test runs a real local Ray Tune sweep (a toy function trainable, no torch training) with the
tracker as its callback. Models logged and store outages: tests/test_tracking_store.py."""

from __future__ import annotations

import json
import pickle
import socket
import sys
import time

import pytest

from ternsearch.errors import TrackingError
from ternsearch.tracking.tracker import default_tracking_uri, flatten_config
from helpers_tracking import store  # noqa: F401 - a fixture
from helpers_tracking import children_of as _children, client_of as _client, make_trial as _trial
from helpers_tracking import make_tracker as _tracker, parents_of as _parents, result_at as _result
from helpers_tracking import steps_of as _steps


# ------------------------------------------------------------------------------------------------ no Ray needed
def test_default_uri_and_flatten(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path, None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_tracking_uri(tmp_path, "http://h:5000") == "http://h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:1")
    assert default_tracking_uri(tmp_path, None) == "http://env:1"
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(tmp_path, "sqlite:///rel.db") == f"sqlite:///{tmp_path.resolve()}/rel.db"
    assert flatten_config({"train": {"lr": 0.1}, "model": {"full_precision_layers": ["stem"]}, "name": "n"}) == {
        "train.lr": 0.1, "model.full_precision_layers": ["stem"], "name": "n"}


def test_error_reason_prefers_the_trainables_exception(tmp_path):
    from types import SimpleNamespace

    from ternsearch.tracking.tracker import error_reason

    text = ("Failure # 1 (occurred at x)\nray::ImplicitFunc.train() (pid=1, ip=h)\n  File \"a.py\", line 1\n"
            "ValueError: an older failure\nFailure # 2 (occurred at y)\nray::ImplicitFunc.train()\n"
            "ray.train.WorkerGroupError: Training failed due to worker errors:\n[Rank 0]\nTraceback (most recent "
            "call last):\n  File \"loop.py\", line 9\ntrainables.loop.DivergedError: diverged at epoch 7 "
            "(train_loss=inf)\n")
    (tmp_path / "error.txt").write_text(text)
    trial = SimpleNamespace(error_file=str(tmp_path / "error.txt"), get_pickled_error=lambda: None)
    assert error_reason(trial) == "DivergedError: diverged at epoch 7 (train_loss=inf)"


def test_trial_runs_restarts_and_resume(tmp_path, store):
    t = _tracker(tmp_path, store, "toy-1")
    parent = t.start()
    client = _client(t)
    assert client.get_run(parent).data.params["train.epochs"] == "4"
    assert [a.path for a in client.list_artifacts(parent, "spec")] == ["spec/spec.yaml"]

    trial = _trial("abc_00003", lr=0.123456, **{"model.quantizer": "twn"})
    earlier = [_trial(f"abc_0000{i}", lr=0.1) for i in range(3)]  # the run is numbered by its place in Tune's list
    t.on_trial_start(0, earlier + [trial], trial)
    for r in (_result(1), _result(2), _result(2, val_acc=0.99), _result(3)):  # epoch 2 again: a restart
        t.on_trial_result(0, [trial], trial, r)
    run = client.get_run(t._runs["abc_00003"])
    assert run.info.run_name == "t003 lr=0.123 quantizer=twn"
    assert run.data.params == {"lr": "0.123456", "model.quantizer": "twn"}
    tags = run.data.tags
    assert (tags["ternsearch.trial_number"], tags["ternsearch.status"], tags["ternsearch.restarts"]) == (
        "3", "running", "1")
    assert (tags["ternsearch.hostname"], tags["ternsearch.node_ip"], tags["mlflow.parentRunId"]) == (
        "h1", "10.0.0.1", parent)
    assert _steps(client, run.info.run_id) == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert _steps(client, run.info.run_id, "ternary/layer1.0.conv1/zero_frac") == [(1, 0.3), (2, 0.3), (3, 0.3)]
    assert not {"training_iteration", "time_total_s", "pid", "timestamp", "done"} & set(run.data.metrics)

    # The driver is killed; a resumed sweep builds a new tracker (from its pickle), finds the same parent, and
    # reconciles the child left RUNNING before the trial restarts and reopens its own run.
    t2 = pickle.loads(pickle.dumps(_tracker(tmp_path, store, "toy-1")))
    assert t2.start() == parent
    assert t2.reconcile() == 1
    run = client.get_run(run.info.run_id)
    assert (run.info.status, run.data.tags["ternsearch.status"]) == ("KILLED", "interrupted (resumed)")
    t2.on_trial_start(0, [trial], trial)
    assert [r.info.run_id for r in _children(client, t2)] == [run.info.run_id]
    run = client.get_run(run.info.run_id)
    assert (run.info.status, run.data.tags["ternsearch.restarts"]) == ("RUNNING", "2")
    t2.on_trial_result(0, [trial], trial, _result(3, val_acc=0.5))  # repeated after the checkpoint: skipped
    t2.on_trial_result(0, [trial], trial, _result(4, done=True))
    t2.on_trial_complete(0, [trial], trial)
    run = client.get_run(run.info.run_id)
    assert (run.info.status, run.data.tags["ternsearch.status"]) == ("FINISHED", "completed")
    assert [s for s, _ in _steps(client, run.info.run_id)] == [1, 2, 3, 4]
    assert run.data.tags["ternsearch.restarts"] == "2"

    # Tune sets done=True on the result ASHA stops a trial at: the epoch count tells it from a full run.
    stopped = _trial("abc_00004", lr=0.5)
    t2.on_trial_start(0, [stopped], stopped)
    t2.on_trial_result(0, [stopped], stopped, _result(1))
    t2.on_trial_result(0, [stopped], stopped, _result(2, done=True))
    t2.on_trial_complete(0, [stopped], stopped)
    run = client.get_run(t2._runs["abc_00004"])
    assert (run.info.status, run.data.tags["ternsearch.status"]) == ("FINISHED", "stopped by ASHA at epoch 2")
    t2.close()
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(_parents(client, t2)) == 1 and t.failures == [] and t2.failures == []


def test_close_kills_running_children_and_is_idempotent(tmp_path, store):
    t = _tracker(tmp_path, store, "toy-close")
    parent = t.start()
    trial = _trial("def_00000", lr=0.2)
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, _result(1))
    pickle.dumps(t)  # a live client is not part of the pickle
    t.close("KILLED")
    t.close("FINISHED")  # no-op
    client = _client(t)
    child = client.get_run(t._runs["def_00000"])
    assert child.info.status == "KILLED"
    assert "sweep ended while trial was running" in child.data.tags["ternsearch.status"]
    assert client.get_run(parent).info.status == "KILLED"


def test_unreachable_http_store_fails_fast(tmp_path, store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = _tracker(tmp_path, store, "toy-http", uri=f"http://user:s3cret@127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as info:
        t.start()
    assert time.monotonic() - t0 < 20
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "unreachable" in msg and "s3cret" not in msg and "\n" not in msg



# ------------------------------------------------------------------------------------------------ a real sweep
_QUALITY = {1.0: 0.9, 0.4: 0.8, 0.2: 0.7, 0.05: 0.2}  # 4 trials of 0.5 CPU: all run at once on 2 CPUs


def _toy_trial(config: dict, marker: str) -> None:
    """Fake but config-dependent epochs. lr=1.0 has the best epoch 1, repeats it (as a restarted trial does) and
    diverges at epoch 2; the bad trial (lr=0.05) reports its epoch 1 only after the driver processed lr=1.0's
    (the marker file), so ASHA always has a better result to stop it against."""
    from pathlib import Path

    from ray import tune

    lr = config["lr"]
    quality = _QUALITY[lr]
    for epoch in range(1, 5):
        if lr >= 1.0 and epoch == 2:
            from trainables.failures import DivergedError

            raise DivergedError(2, float("nan"))
        if quality < 0.5 and epoch == 1:
            deadline = time.monotonic() + 60
            while not Path(marker).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        metrics = {"epoch": epoch, "val_acc": quality * (0.6 + 0.1 * epoch), "val_loss": 2.0 - quality,
                   "train_loss": 1.0 / epoch, "ternary/stem/zero_frac": 0.3, "early_stopped": False,
                   "done": epoch == 4}
        tune.report(metrics)  # returns once the driver has processed the result and asks for the next one
        if lr >= 1.0 and epoch == 1:
            Path(marker).touch()  # ASHA never stops this trial at epoch 1: its value is the highest
            tune.report(dict(metrics, val_acc=0.0))
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray():
    import ray
    import ray.cloudpickle

    # Ray workers cannot import this test module: ship the toy trainable by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_sweep_with_real_tune(tmp_path, store, local_ray):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tracker = _tracker(tmp_path, store, "toy-sweep")
    parent = tracker.start()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_toy_trial, marker=str(tmp_path / "good-epoch")), {"cpu": 0.5}),
        param_space={"lr": tune.grid_search(list(_QUALITY)), "augment": tune.choice(["mixup", "cutmix"])},
        tune_config=tune.TuneConfig(num_samples=1, scheduler=ASHAScheduler(
            time_attr="epoch", metric="val_acc", mode="max", max_t=4, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="toy", storage_path=str(tmp_path / "ray"), callbacks=[tracker], verbose=0),
    )
    grid = tuner.fit()
    tracker.close("FINISHED")
    # Tune calls this very object (its pickled copy in tuner.pkl is only for Tuner.restore)
    assert len(grid) == len(_QUALITY) == len(tracker._runs) and tracker.failures == []

    client = _client(tracker)
    assert [p.info.run_id for p in _parents(client, tracker)] == [parent]
    assert client.get_run(parent).info.status == "FINISHED"
    children = _children(client, tracker)
    assert len(children) == len(_QUALITY)
    statuses, restarts = {}, {}
    for run in children:
        assert run.info.status != "RUNNING"
        assert set(run.data.params) == {"lr", "augment"}
        lr = float(run.data.params["lr"])
        epochs = int(run.data.metrics["epoch"])
        steps = _steps(client, run.info.run_id)
        assert [s for s, _ in steps] == list(range(1, epochs + 1))  # one value per epoch it ran
        assert steps[0][1] == pytest.approx(_QUALITY[lr] * 0.7)  # the first report of epoch 1 is kept
        status = run.data.tags["ternsearch.status"]
        statuses[lr], restarts[lr] = status, run.data.tags["ternsearch.restarts"]
        if status == "completed":
            assert run.info.status == "FINISHED" and epochs == 4
        elif status.startswith("stopped by ASHA at epoch"):
            assert run.info.status == "FINISHED" and status.endswith(f" {epochs}") and epochs < 4
        else:
            assert status.startswith("failed: ") and run.info.status == "FAILED"
    assert "diverged at epoch 2" in statuses[1.0]
    assert restarts[1.0] == "1" and set(restarts.values()) <= {"0", "1"}  # lr=1.0 repeated epoch 1
    assert any(s.startswith("stopped by ASHA at epoch") for s in statuses.values()), statuses

    # --resume: the same sweep id finds the same parent (from a pickled copy, as Tune stores callbacks)
    again = pickle.loads(pickle.dumps(tracker))
    assert again.start() == parent
    again.close("FINISHED")


def test_resumed_sweep_records_trials_tune_lost(tmp_path, store):
    """A killed driver may have started a trial that Tune's last saved state lacks: on the resumed sweep's first
    step the records move it to trials_lost.json (with its reason; its history rows stay) and its MLflow run,
    left KILLED by reconcile(), is re-tagged as a lost trial, not counted among the trials."""
    from ternsearch.results.files import read_history
    from ternsearch.results.recorder import LOST, LOST_REASON, SweepRecorder

    t = _tracker(tmp_path, store, "toy-lost-trial")
    t.start()
    rec = SweepRecorder(str(tmp_path), ["lr"])
    kept, lost = _trial("keep_00000", lr=0.1), _trial("lost_00001", lr=0.2)
    for trial in (kept, lost):
        rec.on_trial_start(0, [kept, lost], trial)
        rec.on_trial_result(0, [kept, lost], trial, _result(1))
        t.on_trial_start(0, [kept, lost], trial)
        t.on_trial_result(0, [kept, lost], trial, _result(1))
    rec.on_trial_result(0, [kept, lost], kept, _result(1, val_acc=0.9))  # a replayed epoch: not a second row

    # The driver dies; the resumed sweep's Tune knows only `kept`.
    t2 = _tracker(tmp_path, store, "toy-lost-trial")
    t2.start()
    assert t2.reconcile() == 2
    rec2 = SweepRecorder(str(tmp_path), ["lr"])
    for cb in (rec2, t2):
        cb.on_step_begin(0, [kept])
    assert set(json.loads((tmp_path / "trials.json").read_text())) == {"keep_00000"}
    gone = json.loads((tmp_path / LOST).read_text())
    assert set(gone) == {"lost_00001"} and gone["lost_00001"]["reason"] == LOST_REASON
    rows = read_history(tmp_path)
    assert sorted((r["trial_id"], r["epoch"]) for r in rows) == [("keep_00000", 1), ("lost_00001", 1)]
    assert [r["val_acc"] for r in rows if r["trial_id"] == "keep_00000"] == [0.1]
    client = _client(t2)
    roles = {r.data.tags["ternsearch.trial_id"]: (r.data.tags["ternsearch.role"], r.info.status)
             for r in _children(client, t2)}
    assert roles == {"keep_00000": ("trial", "KILLED"), "lost_00001": ("lost-trial", "KILLED")}


def test_a_trial_asha_stops_on_its_failure_report_ends_failed(tmp_path, store):
    """A trial that diverged or ran out of memory reports the worst value and then raises; ASHA may stop it on
    that report first (Tune then calls on_trial_complete, not on_trial_error): its run still ends FAILED."""
    t = _tracker(tmp_path, store, "toy-stopped-failure")
    t.start()
    nan, oom = _trial("nan_00000", lr=100.0), _trial("oom_00001", lr=0.1)
    t.on_trial_start(0, [nan, oom], nan)
    t.on_trial_result(0, [nan, oom], nan, _result(1, val_acc=0.0, diverged=True, run_complete=True))
    t.on_trial_complete(0, [nan, oom], nan)
    t.on_trial_start(0, [nan, oom], oom)
    t.on_trial_result(0, [nan, oom], oom, _result(1))
    t.on_trial_result(0, [nan, oom], oom, _result(2, val_acc=0.0, failed="out of memory in epoch 2 at ...",
                                                   run_complete=True))
    t.on_trial_complete(0, [nan, oom], oom)
    client = _client(t)
    ends = {r.data.tags["ternsearch.trial_id"]: (r.info.status, r.data.tags["ternsearch.status"])
            for r in _children(client, t)}
    assert ends == {"nan_00000": ("FAILED", "failed: diverged at epoch 1"),
                    "oom_00001": ("FAILED", "failed: out of memory in epoch 2 at ...")}


def test_error_reason_of_a_truncated_ddp_worker_error(tmp_path):
    """Train V2 keeps a long worker traceback (DDP's) as head + tail: the exception line falls out of the error
    file, which then ends in ``[Rank 0,1 Error Snippet]:`` and a truncated traceback. The reason recorded is the
    workers' own exception, from the pickled error (issue 22, item 1)."""
    from types import SimpleNamespace

    from ray.train.v2.api.exceptions import WorkerGroupError

    from ternsearch.results.trials import error_text
    from ternsearch.tracking.tracker import error_reason

    ddp = RuntimeError("Expected to have finished reduction in the prior iteration before starting a new one. "
                       "This error indicates that your module has parameters that were not used in producing "
                       "loss.\nParameter indices which did not receive grad for rank 0: 4 5")
    text = ("Failure # 1 (occurred at x)\nTraceback (most recent call last):\n  File \"entry.py\", line 250\n"
            "ray.train.v2.api.exceptions.WorkerGroupError: Training failed due to worker errors:\n"
            "[Rank 0,1 Error Snippet]:\nTraceback (most recent call last):\n  File \"loop.py\", line 9...\n"
            "... (Output truncated. See individual worker logs for full details) ...\n"
            "which did not receive grad for rank 0: 4 5\n")
    (tmp_path / "error.txt").write_text(text)
    group = WorkerGroupError("[Rank 0,1 Error Snippet]:\n...", {1: ddp, 0: ddp})
    trial = SimpleNamespace(error_file=str(tmp_path / "error.txt"), get_pickled_error=lambda: group)
    expected = ("RuntimeError: Expected to have finished reduction in the prior iteration before starting a new "
                "one. This error indicates that your module has parameters that were not used in producing loss.")
    assert error_reason(trial) == expected
    assert error_text(trial) == expected
