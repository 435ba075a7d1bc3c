"""What tests/test_tracking.py, tests/test_tracking_store.py and tests/test_mlflow_view.py share: a SQLite store
per test module, a tracker on it, Tune's trials and results as the tracker's callbacks get them, and a
``ternsearch train`` run directory with real checkpoints."""

from __future__ import annotations

import json

import pytest
from ray.tune.experiment import Trial

from ternsearch.tracking.tracker import MLflowTracker, default_tracking_uri

FIXED = {"train.epochs": 4, "train.batch_size": 64, "model.arch": "tinynet", "model.quantizer": "twn"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one runs MLflow's migrations: seconds); one experiment per
    test keeps them apart."""
    return tmp_path_factory.mktemp("mlflow")


def make_tracker(tmp_path, store, sweep_id: str, uri: str | None = None) -> MLflowTracker:
    spec = tmp_path / "spec.yaml"
    if not spec.exists():
        spec.write_text("name: toy\nsearch: {lr: {loguniform: [0.01, 1.0]}}\n")
    return MLflowTracker(uri=uri or default_tracking_uri(store, None), experiment=f"exp-{sweep_id}", sweep_name="toy",
                         sweep_id=sweep_id, spec_file=str(spec), results_dir=str(tmp_path), metric="val_acc",
                         mode="max", fixed_params=FIXED)


def client_of(tracker: MLflowTracker):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracker.uri)


def children_of(client, tracker: MLflowTracker) -> list:
    return client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'")


def parents_of(client, tracker: MLflowTracker) -> list:
    return client.search_runs([tracker.experiment_id], "tags.`ternsearch.role` = 'sweep'")


def steps_of(client, run_id: str, key: str = "val_acc") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def result_at(epoch: int, **extra) -> dict:
    """A result as Tune hands it to callbacks: the loop's metrics plus Tune's bookkeeping."""
    r = {"epoch": epoch, "val_acc": 0.1 * epoch, "train_loss": 1.0 / epoch, "lr": 0.1, "early_stopped": False,
         "done": False, "ternary/layer1.0.conv1/zero_frac": 0.3, "node_id": "n1",
         "training_iteration": epoch, "time_this_iter_s": 0.1, "time_total_s": 0.1 * epoch, "timestamp": 1,
         "pid": 123, "hostname": "h1", "node_ip": "10.0.0.1", "config": {"lr": 0.1}, "trial_id": "x", "date": "d"}
    r.update(extra)
    return r


def make_trial(trial_id: str, **config) -> Trial:
    return Trial("toy", config=config, trial_id=trial_id, stub=True)


def retrain_dir(tmp_path, epochs=(1, 2)) -> tuple:
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
