"""MLflow tracking against a real SQLite store in tmp_path: ``ternsearch train`` runs and the sweep's best model
logged and registered, and what the tracker does when the store is down (writes buffered, retried, reported)."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from ternsearch.errors import TrackingError
from ternsearch.tracking.tracker import MLflowTracker, default_tracking_uri, describe_unwritten, log_single_run
from helpers_tracking import store  # noqa: F401 - a fixture
from helpers_tracking import children_of as _children, client_of as _client, make_trial as _trial
from helpers_tracking import make_tracker as _tracker, result_at as _result, retrain_dir as _retrain_dir
from helpers_tracking import steps_of as _steps


def test_log_single_run(tmp_path, store):
    from ternsearch.spec import TrainFile

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


def test_log_single_run_registers_the_evaluated_model(tmp_path, store, monkeypatch):
    """The retrained model: a new version of the sweep's registered model, the one the test evaluation used
    (``evaluated_checkpoint``; else the latest), test metrics on the version, its packed form on the run."""
    import mlflow.pytorch
    import torch

    from trainables.packed import load_packed
    from ternsearch.spec import TrainFile

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
        self.gone_after = set()  # methods whose next call is written, then the server is gone (the retry refused)

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
            if name in self.gone_after:
                self.gone_after.discard(name)
                attr(*args, **kwargs)
                self.down = True
                raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/log-batch failed "
                                      "with exception HTTPConnectionPool: Max retries exceeded (Connection refused)")
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
    t0 = tq.now_ms()
    t.on_trial_result(0, [a], a, _result(2))
    t.on_trial_result(0, [a], a, _result(2, val_acc=0.9))  # a repeat after a restart, while down
    t.on_trial_start(0, [a, b], b)  # its run cannot be created now
    t.on_trial_result(0, [b], b, _result(1))
    t.on_trial_result(0, [a], a, _result(3))
    t.on_trial_complete(0, [a], a)
    ended = tq.now_ms()
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


def test_a_write_the_server_took_as_it_died_is_reported_as_maybe_written(tmp_path, store, monkeypatch):
    """The server wrote epoch 2 and died before answering; MLflow's retry of it was refused. The error says
    "refused", yet epoch 2 is in the store: it is reported as possibly there, epoch 3 (sent to a dead server) not."""
    monkeypatch.setenv("TERNSEARCH_MLFLOW_FINAL_FLUSH_S", "0")
    t = _tracker(tmp_path, store, "toy-gone")
    t.start()
    fake = _outage(t)
    a = _trial("gone_00000", lr=0.1)
    t.on_trial_start(0, [a], a)
    t.on_trial_result(0, [a], a, _result(1))
    fake.gone_after = {"log_batch"}
    t.on_trial_result(0, [a], a, _result(2))
    t._retry_at = 0.0
    t.on_trial_result(0, [a], a, _result(3))
    t.close("FINISHED")
    entry = next(e for e in t.unwritten if e["trial_id"] == "gone_00000")
    assert (entry["epochs"], entry["epochs_maybe_written"]) == ([2, 3], [2])
    fake.down = False
    assert [s for s, _ in _steps(_client(t), t._runs["gone_00000"])] == [1, 2]


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
