"""MLflow tracking against a real SQLite store in tmp_path; the sweep test runs a real local Ray Tune sweep
(a toy function trainable, no torch training) with the tracker as its callback."""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import time

import pytest
from ray.tune.experiment import Trial

from ternsearch.errors import TrackingError
from ternsearch.tracking.tracker import (MLflowTracker, default_tracking_uri, describe_unwritten, flatten_config,
                                 log_single_run)

FIXED = {"train.epochs": 4, "train.batch_size": 64, "model.arch": "tinynet", "model.quantizer": "twn"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); one experiment per
    test keeps them apart."""
    return tmp_path_factory.mktemp("mlflow")


def _tracker(tmp_path, store, sweep_id: str, uri: str | None = None) -> MLflowTracker:
    spec = tmp_path / "spec.yaml"
    if not spec.exists():
        spec.write_text("name: toy\nsearch: {lr: {loguniform: [0.01, 1.0]}}\n")
    return MLflowTracker(uri=uri or default_tracking_uri(store, None), experiment=f"exp-{sweep_id}", sweep_name="toy",
                         sweep_id=sweep_id, spec_file=str(spec), results_dir=str(tmp_path), metric="val_acc",
                         mode="max", fixed_params=FIXED)


def _client(tracker: MLflowTracker):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracker.uri)


def _children(client, tracker: MLflowTracker) -> list:
    return client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'")


def _parents(client, tracker: MLflowTracker) -> list:
    return client.search_runs([tracker.experiment_id], "tags.`ternsearch.role` = 'sweep'")


def _steps(client, run_id: str, key: str = "val_acc") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _result(epoch: int, **extra) -> dict:
    """A result as Tune hands it to callbacks: the loop's metrics plus Tune's bookkeeping."""
    r = {"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch, "lr": 0.1, "early_stopped": False,
         "done": False, "ternary/layer1.0.conv1/zero_frac": 0.3, "node_id": "n1",
         "training_iteration": epoch, "time_this_iter_s": 0.1, "time_total_s": 0.1 * epoch, "timestamp": 1,
         "pid": 123, "hostname": "h1", "node_ip": "10.0.0.1", "config": {"lr": 0.1}, "trial_id": "x", "date": "d"}
    r.update(extra)
    return r


def _trial(trial_id: str, **config) -> Trial:
    return Trial("toy", config=config, trial_id=trial_id, stub=True)


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
    assert (tags["ternsearch.trial_number"], tags["ternsearch.status"], tags["ternsearch.restarts"]) == ("3", "running", "1")
    assert (tags["ternsearch.hostname"], tags["ternsearch.node_ip"], tags["mlflow.parentRunId"]) == ("h1", "10.0.0.1", parent)
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


def test_log_single_run(tmp_path, store):
    from ternsearch.spec.sweepfile import TrainFile

    uri = default_tracking_uri(store, None)
    out = tmp_path / "run"
    out.mkdir()
    rows = [{"epoch": 1, "val_acc": 0.3}, {"epoch": 2, "val_acc": 0.1}, {"epoch": 2, "val_acc": 0.4},
            {"epoch": 3, "val_acc": 0.5, "train_loss": 0.9}]
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = tmp_path / "best.yaml"
    source.write_text("name: toy-best\n")
    tf = TrainFile.model_validate({
        "name": "toy-best", "model": {"arch": "tinynet"}, "tracking": {"uri": uri, "experiment": "exp-single"},
        "origin": {"sweep": "toy", "parent_run_id": "abc123", "trial_id": "t_00001", "metric_value": 0.5}})
    final = {"epoch": 3, "val_acc": 0.5, "test_acc": 0.47, "test_loss": 1.2, "wall_seconds": 9.0,
             "output": str(out), "done": True}
    run_id = log_single_run(tf, source, final)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ternsearch.sweep_parent_run_id"] == "abc123"
    assert run.data.tags["ternsearch.origin.trial_id"] == "t_00001"
    assert run.data.params["model.arch"] == "tinynet" and run.data.params["train.epochs"] == "10"
    assert _steps(client, run_id) == [(1, 0.3), (2, 0.4), (3, 0.5)]
    assert run.data.metrics["test_acc"] == 0.47 and run.data.metrics["wall_seconds"] == 9.0
    assert "done" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/best.yaml"]
    assert "ternsearch.model_uri" not in run.data.tags  # no checkpoint in the run directory: no model to log
    assert run.data.tags["ternsearch.eval_on"] == "val"


def _retrain_dir(tmp_path, epochs=(1, 2)) -> tuple:
    """A `ternsearch train` run directory holding real checkpoints of (different) tinynet models, one an epoch."""
    import torch

    from trainables.checkpoint import save_checkpoint
    from trainables.config import TrainConfig
    from trainables.models import build_model

    cfg = TrainConfig.model_validate({"data": {"val_fraction": 0.0}, "model": {"arch": "tinynet"}})
    out, models = tmp_path / "run", {}
    for epoch in epochs:
        torch.manual_seed(epoch)
        models[epoch] = build_model(cfg.model).eval()
        save_checkpoint(out / "checkpoints" / f"epoch_{epoch:04d}", {"model": models[epoch].state_dict()},
                        {"config": cfg.model_dump(mode="json"), "epoch": epoch, "metrics": {}})
    (out / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": 0.1 * e, "eval_on": "train"})
                                               + "\n" for e in epochs))
    return out, models


def test_log_single_run_registers_the_evaluated_model(tmp_path, store, monkeypatch):
    """The retrained model: a new version of the sweep's registered model, the one the test evaluation used
    (``evaluated_checkpoint``; else the latest), test metrics on the version, its packed form on the run."""
    import mlflow.pytorch
    import torch

    from trainables.packed import load_packed
    from ternsearch.spec.sweepfile import TrainFile

    uri = default_tracking_uri(store, None)
    out, models = _retrain_dir(tmp_path)
    source = tmp_path / "best.yaml"
    source.write_text("name: toy2-best\n")
    tf = TrainFile.model_validate({
        "name": "toy2-best", "data": {"val_fraction": 0}, "model": {"arch": "tinynet"},
        "tracking": {"uri": uri, "experiment": "exp-retrain"}, "origin": {"sweep": "toy2", "parent_run_id": "p1"}})
    final = {"epoch": 2, "test_acc": 0.31, "test_loss": 1.9, "output": str(out),
             "evaluated_checkpoint": str(out / "checkpoints" / "epoch_0001")}
    run_id = log_single_run(tf, source, final)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ternsearch.model_uri"] == "models:/toy2/1"
    assert run.data.tags["ternsearch.eval_on"] == "train"
    assert run.data.tags["ternsearch.data"].startswith("Trains on the whole training set (50,000 images")
    assert run.data.metrics["test_acc"] == 0.31
    version = client.get_model_version("toy2", "1")
    assert version.run_id == run_id
    assert version.tags["test_acc"] == "0.31" and version.tags["test_loss"] == "1.9"
    # The SQLite registry keeps a version's metrics on its logged model (the version's source: models:/<model_id>).
    logged = client.get_logged_model(version.source.rsplit("/", 1)[-1])
    assert {m.key: m.value for m in logged.metrics} == {"test_acc": 0.31, "test_loss": 1.9}
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run_id
    x = torch.randn(4, 3, 32, 32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with torch.no_grad():
        assert torch.allclose(mlflow.pytorch.load_model("models:/toy2/1")(x), models[1](x), atol=1e-6)
        [packed] = client.list_artifacts(run_id, "packed")
        assert packed.path == "packed/toy2-best.tern" and run.data.tags["ternsearch.packed"] == packed.path
        model, _ = load_packed(client.download_artifacts(run_id, packed.path, str(tmp_path)))
        assert torch.equal(model(x), models[1](x))
    # Without evaluated_checkpoint: the latest checkpoint; without a sweep origin: registered under the run's name.
    alone = TrainFile.model_validate({"name": "solo", "model": {"arch": "tinynet"},
                                      "tracking": {"uri": uri, "experiment": "exp-retrain"}})
    run_id = log_single_run(alone, source, {"epoch": 2, "test_acc": 0.2, "output": str(out)})
    assert client.get_run(run_id).data.tags["ternsearch.model_uri"] == "models:/solo/1"
    with torch.no_grad():
        assert torch.allclose(mlflow.pytorch.load_model("models:/solo/1")(x), models[2](x), atol=1e-6)


def test_log_best_registers_a_loadable_model(tmp_path, store, monkeypatch):
    import mlflow.pytorch
    import torch

    from trainables.checkpoint import save_checkpoint
    from trainables.config import TrainConfig
    from trainables.models import build_model

    cfg = TrainConfig.model_validate({"model": {"arch": "tinynet"}, "train": {"epochs": 4}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ckpt = save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict()},
                           {"config": cfg.model_dump(mode="json"), "epoch": 3, "metrics": {"val_acc": 0.42}})
    t = _tracker(tmp_path, store, "toy-best")
    parent = t.start()
    uri = t.log_best("abc_00001", str(ckpt), "name: toy\ntrain: {lr: 0.1}\n")
    assert uri == "models:/toy/1"
    client = _client(t)
    run = client.get_run(parent)
    assert run.data.tags["ternsearch.best_trial_id"] == "abc_00001"
    assert run.data.metrics["best_val_acc"] == 0.42
    assert [a.path for a in client.list_artifacts(parent, "best")] == ["best/best.yaml"]
    assert str(store) in client.get_experiment(t.experiment_id).artifact_location  # not ./mlruns of the cwd
    version = client.get_model_version("toy", "1")
    assert version.run_id == parent
    logged = client.get_logged_model(version.source.rsplit("/", 1)[-1])  # source: models:/<model_id>
    assert logged.experiment_id == t.experiment_id and str(store) in logged.artifact_location
    assert not client.search_logged_models(experiment_ids=["0"])  # nothing in the default experiment

    monkeypatch.setenv("MLFLOW_TRACKING_URI", t.uri)
    loaded = mlflow.pytorch.load_model(uri)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    t.close()


# ------------------------------------------------------------------------------------------------ store outages
class _Outage:
    """Stands in for a tracker's MLflow client: passes calls through, except that while ``down`` every call
    fails as one to a stopped server does, and ``reject`` names methods the store answers with a 400."""

    def __init__(self, client):
        self.client, self.down, self.reject, self.failed = client, False, set(), 0
        self.lose_answer = set()  # methods whose next call is written but whose answer never comes (timeout)

    def __getattr__(self, name):
        from mlflow.exceptions import MlflowException, RestException

        attr = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down:
                self.failed += 1
                raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed "
                                      "with exception HTTPConnectionPool: Max retries exceeded (Connection refused)")
            if name in self.reject:
                self.reject.discard(name)
                raise RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad value"})
            if name in self.lose_answer:
                self.lose_answer.discard(name)
                attr(*args, **kwargs)
                raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed "
                                      "with exception HTTPConnectionPool: Read timed out. (read timeout=2)")
            return attr(*args, **kwargs)

        return call if callable(attr) else attr


def _outage(tracker: MLflowTracker) -> _Outage:
    tracker._client_obj = _Outage(tracker._client())
    return tracker._client_obj


def test_outage_buffers_writes_and_writes_them_later(tmp_path, store, monkeypatch):
    import ternsearch.tracking.writequeue as tq

    monkeypatch.setattr(tq, "_MIN_RETRY_S", 0.0)  # every callback may try (really: at most one try a second)
    monkeypatch.setattr(tq, "_RETRY_COST_FACTOR", 0)
    t = _tracker(tmp_path, store, "toy-outage")
    parent = t.start()
    fake = _outage(t)
    a, b = _trial("out_00000", lr=0.1), _trial("out_00001", lr=0.2)
    t.on_trial_start(0, [a], a)
    t.on_trial_result(0, [a], a, _result(1))
    fake.down = True
    t0 = tq._now_ms()
    t.on_trial_result(0, [a], a, _result(2))
    t.on_trial_result(0, [a], a, _result(2, val_acc=0.9))  # a repeat after a restart, while down
    t.on_trial_start(0, [a, b], b)  # its run cannot be created now
    t.on_trial_result(0, [b], b, _result(1))
    t.on_trial_result(0, [a], a, _result(3))
    t.on_trial_complete(0, [a], a)
    ended = tq._now_ms()
    t.on_step_end(0, [a, b])
    assert fake.failed == 7  # one attempt per callback, however much is queued
    assert t.pending == 6 and len(t.failures) == 1 and "unreachable" in t.failures[0]
    fake.down = False
    time.sleep(0.05)
    t.on_step_end(0, [a, b])  # the store is back: everything is written, in order
    assert t.pending == 0 and len(t.failures) == 1
    client = _client(t)
    run_a = client.get_run(t._runs["out_00000"])
    assert _steps(client, run_a.info.run_id) == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert (run_a.info.status, run_a.data.tags["ternsearch.status"]) == ("FINISHED", "stopped by ASHA at epoch 3")
    assert run_a.data.tags["ternsearch.restarts"] == "1"
    assert t0 <= min(m.timestamp for m in client.get_metric_history(run_a.info.run_id, "val_acc")[1:])
    assert run_a.info.end_time <= ended  # when it ended, not when that was written
    run_b = client.get_run(t._runs["out_00001"])
    assert run_b.data.params == {"lr": "0.2"} and run_b.info.status == "RUNNING"
    assert run_b.data.tags["mlflow.parentRunId"] == parent and run_b.data.tags["ternsearch.trial_number"] == "1"
    assert _steps(client, run_b.info.run_id) == [(1, 0.1)]
    assert run_b.info.start_time <= client.get_metric_history(run_b.info.run_id, "val_acc")[0].timestamp
    assert len(_children(client, t)) == 2

    # A write the store rejects is dropped (one warning) and the queue goes on.
    fake.reject = {"log_batch"}
    t.on_trial_result(0, [b], b, _result(2))
    t.on_trial_result(0, [b], b, _result(3))
    assert t.pending == 0 and len(t.failures) == 2 and "rejected" in t.failures[1]
    assert [s for s, _ in _steps(client, run_b.info.run_id)] == [1, 3]
    t.close()
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(run_b.info.run_id).info.status == "KILLED"
    (entry,) = t.unwritten
    assert (entry["trial_id"], entry["run_id"], entry["epochs"]) == ("out_00001", run_b.info.run_id, [2])
    assert json.loads((tmp_path / "tracking_unwritten.json").read_text()) == t.unwritten


def test_a_write_whose_answer_is_lost_is_reported_as_maybe_written(tmp_path, store, monkeypatch):
    """The store took epoch 2 but its answer timed out, then it went down for good: epochs 2 and 3 are reported
    unwritten, 2 flagged as possibly in the store (the tracker cannot know), 3 not."""
    monkeypatch.setenv("TERNSEARCH_MLFLOW_FINAL_FLUSH_S", "0")
    t = _tracker(tmp_path, store, "toy-maybe")
    t.start()
    fake = _outage(t)
    a = _trial("maybe_00000", lr=0.1)
    t.on_trial_start(0, [a], a)
    t.on_trial_result(0, [a], a, _result(1))
    fake.lose_answer = {"log_batch"}
    t.on_trial_result(0, [a], a, _result(2))
    fake.down = True
    t._retry_at = 0.0
    t.on_trial_result(0, [a], a, _result(3))
    t.close("FINISHED")
    entry = next(e for e in t.unwritten if e["trial_id"] == "maybe_00000")
    assert (entry["epochs"], entry["epochs_maybe_written"]) == ([2, 3], [2])
    assert "of which 2 may be in the store" in describe_unwritten(entry)
    fake.down = False
    assert [s for s, _ in _steps(_client(t), t._runs["maybe_00000"])] == [1, 2]


def test_a_write_to_a_stopped_server_fails_in_a_moment(tmp_path, store, monkeypatch):
    """With MLflow's own settings a refused connection is retried for minutes; during a sweep it costs one quick
    failed attempt, then the write waits in the queue. MLflow's settings are back afterwards."""
    from ternsearch.tracking.store import brief_http

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = _tracker(tmp_path, store, "toy-stopped", uri=f"http://127.0.0.1:{port}")
    t.experiment_id, t.parent_run_id = "1", "0" * 32  # as if start() had succeeded before the server stopped
    trial = _trial("stop_00000", lr=0.1)
    t0 = time.monotonic()
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, _result(1))
    t.on_step_end(0, [trial])  # within a second of the failure: not even tried
    assert time.monotonic() - t0 < 3 and t.pending == 2 and len(t.failures) == 1
    assert "store unreachable (Connection refused)" in t.failures[0]
    with brief_http():
        assert (os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"], os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == ("2", "1")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2" and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_outage_until_the_end_reports_exactly_what_is_lost(tmp_path, store, monkeypatch, caplog):
    monkeypatch.setenv("TERNSEARCH_MLFLOW_FINAL_FLUSH_S", "0")
    t = _tracker(tmp_path, store, "toy-lost")
    parent = t.start()
    fake = _outage(t)
    a, b = _trial("lost_00000", lr=0.1), _trial("lost_00001", lr=0.2)
    t.on_trial_start(0, [a], a)
    t.on_trial_result(0, [a], a, _result(1))
    fake.down = True
    for epoch in (2, 3):
        t.on_trial_result(0, [a], a, _result(epoch))
    t.on_trial_start(0, [b], b)
    t.on_trial_result(0, [b], b, _result(1))
    t.on_trial_error(0, [b], b)
    with pytest.raises(TrackingError, match="unreachable: the best model was not logged"):
        t.log_best("lost_00000", str(tmp_path), "name: toy\n")
    caplog.clear()
    t0 = time.monotonic()
    t.close("FINISHED")
    assert time.monotonic() - t0 < 5
    run_a = t._runs["lost_00000"]
    assert [(e["trial_id"], e["run_id"], e["epochs"], e["params"], e["end_status"]) for e in t.unwritten] == [
        ("lost_00000", run_a, [2, 3], False, None),
        ("lost_00001", None, [1], True, "FAILED (failed: unknown error)"),
        (None, parent, [], False, "FINISHED (and children left RUNNING not ended)")]
    lines = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert len(lines) == 3
    assert f"trial lost_00000 (run {run_a}): epochs 2, 3 (" in lines[0]
    assert "trial lost_00001 (run not created): epochs 1 (" in lines[1] and "params" in lines[1]
    assert json.loads((tmp_path / "tracking_unwritten.json").read_text()) == t.unwritten
    client = _client(t)
    assert _steps(client, run_a) == [(1, 0.1)] and len(_children(client, t)) == 1


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

    from ternsearch.results.recorder import error_text
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
