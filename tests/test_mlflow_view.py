"""What a user finds in MLflow, against a real SQLite store in tmp_path: experiments of the model-training kind
(new ones, and those an earlier version made, once a sweep resumes on them), logged models with a signature and
an input example that ``mlflow.pyfunc`` predicts on, and a retrained model's version linked to its sweep. The
MLflow UI itself, in Chromium, is in tests/test_browser.py."""

from __future__ import annotations

import pytest
import yaml

from ternsearch.tracking.experiments import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from ternsearch.tracking.tracker import default_tracking_uri, log_single_run
from helpers_tracking import store  # noqa: F401 - a fixture
from helpers_tracking import client_of, make_trial, make_tracker, result_at, retrain_dir

KIND = "mlflow.experimentKind"


def test_sweep_and_train_experiments_are_model_training_ones(tmp_path, store):
    """A new experiment gets the kind; one an earlier version made (no kind) gets it when a sweep resumes on it;
    a kind someone chose in the UI stays."""
    from mlflow.tracking import MlflowClient

    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == (KIND, "custom_model_development")  # what MLflow's UI reads
    t = make_tracker(tmp_path, store, "kind-new")
    t.start()
    client = client_of(t)
    assert client.get_experiment(t.experiment_id).tags[KIND] == "custom_model_development"
    t.close()
    old = client.create_experiment("exp-kind-old")  # as ternsearch made it before
    chosen = client.create_experiment("exp-kind-chosen", tags={KIND: "genai_development"})
    assert KIND not in client.get_experiment(old).tags
    for sweep_id in ("kind-old", "kind-chosen"):
        resumed = make_tracker(tmp_path, store, sweep_id)
        resumed.start()
        resumed.close()
    assert client.get_experiment(old).tags[KIND] == "custom_model_development"
    assert client.get_experiment(chosen).tags[KIND] == "genai_development"
    from ternsearch.spec import TrainFile

    uri = default_tracking_uri(store, None)
    tf = TrainFile.model_validate({"name": "kind-train", "model": {"arch": "tinynet"},
                                   "tracking": {"uri": uri, "experiment": "exp-kind-train"}})
    (tmp_path / "out").mkdir()
    run_id = log_single_run(tf, tmp_path / "t.yaml", {"epoch": 1, "output": str(tmp_path / "out")})
    experiment = MlflowClient(tracking_uri=uri).get_experiment(client.get_run(run_id).info.experiment_id)
    assert experiment.name == "exp-kind-train" and experiment.tags[KIND] == "custom_model_development"


def test_logged_model_has_a_signature_and_an_input_example_pyfunc_predicts_on(tmp_path, store, monkeypatch):
    import mlflow
    import numpy as np
    import torch

    from ternsearch.tracking.model import log_registered_model

    torch.manual_seed(0)
    from trainables.config import TrainConfig
    from trainables.models import build_model

    model = build_model(TrainConfig.model_validate({"model": {"arch": "tinynet"}}).model).eval()
    t = make_tracker(tmp_path, store, "signature")
    parent = t.start()
    client = client_of(t)
    registered = log_registered_model(client, t.uri, t.experiment_id, parent, model, registered_name="sig",
                                      tags={}, metadata={}, quiet=True)
    t.close()
    logged = client.get_logged_model(registered.model_id)
    mlmodel = yaml.safe_load(open(mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/MLmodel",
                                                                      dst_path=str(tmp_path))))
    assert mlmodel["saved_input_example_info"]["type"] == "ndarray"
    inputs, outputs = (yaml.safe_load(mlmodel["signature"][k]) for k in ("inputs", "outputs"))
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}]
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", t.uri)
    pyfunc = mlflow.pyfunc.load_model(registered.uri)  # models:/sig/1, as a user would
    example = pyfunc.input_example
    assert example.shape == (2, 3, 32, 32) and example.dtype == np.float32
    predicted = pyfunc.predict(example)
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    assert predicted.shape == (2, 10) and np.allclose(predicted, expected, atol=1e-5)
    with pytest.raises(mlflow.exceptions.MlflowException):  # the signature is enforced: not an image batch
        pyfunc.predict(np.zeros((2, 3, 16, 16), dtype=np.float32))


def test_retrained_version_links_to_its_sweep(tmp_path, store):
    """The version a retrain registers, read back through MlflowClient: tags naming the sweep (id, experiment,
    parent run, the exported trial's run, the experiment's page in the UI) and a description linking them; the
    retrain's run carries the same tags."""
    from ternsearch.spec import TrainFile

    t = make_tracker(tmp_path, store, "linked-1")
    parent = t.start()
    trial = make_trial("lnk_00001", lr=0.1)
    t.on_trial_start(0, [trial], trial)
    t.on_trial_result(0, [trial], trial, result_at(1, done=True))
    t.on_trial_complete(0, [trial], trial)
    t.close()
    client = client_of(t)
    trial_run = t._runs["lnk_00001"]
    out, _ = retrain_dir(tmp_path)
    source = tmp_path / "best.yaml"
    source.write_text("name: linked-best\n")
    tf = TrainFile.model_validate({
        "name": "linked-best", "model": {"arch": "tinynet"}, "data": {"val_fraction": 0},
        "tracking": {"uri": t.uri, "experiment": t.experiment},
        "origin": {"sweep": "linked", "parent_run_id": parent, "trial_id": "lnk_00001", "metric_value": 0.1}})
    run_id = log_single_run(tf, source, {"epoch": 2, "test_acc": 0.3, "output": str(out)}, quiet=True)
    page = f"#/experiments/{t.experiment_id}?workflowType=machine_learning"
    links = {"ternsearch.origin.sweep_id": "linked-1", "ternsearch.origin.experiment_id": t.experiment_id,
             "ternsearch.origin.experiment": "exp-linked-1", "ternsearch.origin.ui_path": page,
             "ternsearch.origin.trial_run_id": trial_run}
    version = client.get_model_version("linked", "1")
    assert version.run_id == run_id
    assert {k: version.tags.get(k) for k in links} == links
    assert version.tags["ternsearch.sweep_parent_run_id"] == parent
    assert version.tags["ternsearch.origin.trial_id"] == "lnk_00001" and version.tags["test_acc"] == "0.3"
    assert version.description == (
        f"Retrain of trial `lnk_00001` of sweep **linked** (sweep id `linked-1`): [the sweep's runs]({page}), "
        f"[the trial's run](#/experiments/{t.experiment_id}/runs/{trial_run}?workflowType=machine_learning), "
        f"[the sweep's parent run](#/experiments/{t.experiment_id}/runs/{parent}?workflowType=machine_learning).")
    run = client.get_run(run_id)
    assert {k: run.data.tags.get(k) for k in links} == links
    assert run.data.tags["ternsearch.sweep_parent_run_id"] == parent
    # A train file whose sweep is not in this store: no links, still registered.
    tf = tf.model_copy(update={"origin": tf.origin.model_copy(update={"parent_run_id": "elsewhere"})})
    run_id = log_single_run(tf, source, {"epoch": 2, "test_acc": 0.3, "output": str(out)}, quiet=True)
    version = client.get_model_version("linked", "2")
    assert version.run_id == run_id and "ternsearch.origin.sweep_id" not in version.tags
    assert version.description == "Retrain of trial `lnk_00001` of sweep **linked**."
