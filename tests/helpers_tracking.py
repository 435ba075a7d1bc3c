"""What tests/test_tracking.py and tests/test_tracking_store.py share: a SQLite store per test module, a tracker
on it, and Tune's trials and results as the tracker's callbacks get them."""

from __future__ import annotations

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
