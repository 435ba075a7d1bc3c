"""Models into MLflow: the one way a trained model is logged and registered, used by the sweep (its best trial,
``ternsearch.tracking.tracker``) and by ``ternsearch train`` (a retrained exported config,
``ternsearch.tracking.train_runs``).

A model is logged as an MLflow 3 ``LoggedModel`` created in the run's own experiment (``mlflow.pytorch.log_model``
without an active run would put it in the default experiment and ./mlruns of the current directory), pickled with
its class (``serialization_format="pickle"``: the ternary layers are our own modules), with a signature and an
input example (``model_example``: what ``mlflow.pyfunc.load_model(uri).predict`` takes), and registered as a new
version of a registered model. torch and MLflow are imported only when a model is logged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainables.mlflow_compat import import_mlflow_pytorch

from ternsearch.tracking.store import (TAG, as_metrics, as_tags, is_metric_value, log_batch, mlflow_console_off,
                                       pip_requirements, using_tracking_uri)

__all__ = ["RegisteredModel", "log_best_model", "log_registered_model", "log_retrained_model", "model_example"]

MODEL_INPUT = "float32 NCHW 3x32x32, normalized like trainables.augment.normalize"


@dataclass(frozen=True)
class RegisteredModel:
    """A logged and registered model: ``uri`` is ``models:/<name>/<version>`` (the logged model's own URI when
    the store registered no version)."""

    name: str
    version: Optional[str]
    uri: str
    model_id: str


def model_example(model) -> tuple:
    """``(input example, signature)`` of a logged model: a batch of 2 normalized images (float32 NCHW
    3x32x32, seeded noise: MODEL_INPUT), and the signature MLflow infers from it and the model's logits for it
    (any batch size: the batch dimension is -1)."""
    # numpy and torch (mlflow comes with them): only when a model is logged, not when the tracker or train_runs
    # import this module
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    training = model.training
    model.eval()  # logits as the logged model gives them (batch norm on its running statistics)
    try:
        with torch.no_grad():
            device = next(model.parameters(), torch.empty(0)).device
            logits = model(torch.from_numpy(example).to(device)).float().cpu().numpy()
    finally:
        model.train(training)
    return example, infer_signature(example, logits)


def log_registered_model(client, uri: str, experiment_id: str, run_id: str, model, *, registered_name: str,
                         tags: dict[str, str], metadata: dict[str, Any], quiet: bool = False) -> RegisteredModel:
    """Log the torch ``model`` on run ``run_id`` (a ``LoggedModel`` named "model" in ``experiment_id``, tagged
    ``tags``) and register it as a new version of ``registered_name``; ``quiet``: without MLflow's own console
    lines (see ``mlflow_console_off``)."""
    mlflow_pytorch = import_mlflow_pytorch()
    example, signature = model_example(model)
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, tags=tags)
    with using_tracking_uri(uri), mlflow_console_off(quiet):
        info = mlflow_pytorch.log_model(
            model, name="model", input_example=example, signature=signature, serialization_format="pickle",
            pip_requirements=pip_requirements(), registered_model_name=registered_name, run_id=run_id,
            model_id=logged.model_id, metadata={**metadata, "input": MODEL_INPUT},
        )
    version = getattr(info, "registered_model_version", None)
    model_uri = f"models:/{registered_name}/{version}" if version else info.model_uri
    return RegisteredModel(registered_name, str(version) if version else None, model_uri, logged.model_id)


def log_best_model(client, uri: str, experiment_id: str, parent_run_id: str, child_run_id: Optional[str], *,
                   trial_id: str, checkpoint_dir: str, best_config_yaml: str, metric: str, registered_name: str,
                   quiet: bool = False) -> str:
    """The model of a sweep's best trial (from its checkpoint) and its config (``best/best.yaml``) on the sweep's
    parent run, the model registered as a new version of ``registered_name``; the parent run gets the best value
    of ``metric`` and the tags naming the trial, its run ``child_run_id`` (if found) is tagged ``ternsearch.best``.
    Returns the model's URI (``models:/<name>/<version>``)."""
    # torch: only once the best model is logged, at the end of a sweep
    from trainables.checkpoint import read_manifest
    from trainables.restore import model_from_checkpoint  # torch, as above

    model, cfg = model_from_checkpoint(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir)
    model_uri = log_registered_model(
        client, uri, experiment_id, parent_run_id, model, registered_name=registered_name,
        tags={"ternsearch.trial_id": trial_id}, quiet=quiet,
        metadata={"ternsearch_trial_id": trial_id, "arch": cfg.model.arch, "quantizer": cfg.model.quantizer},
    ).uri
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.yaml"
        path.write_text(best_config_yaml)
        client.log_artifact(parent_run_id, str(path), "best")
    value = (manifest.get("metrics") or {}).get(metric)
    if value is None and child_run_id:
        value = client.get_run(child_run_id).data.metrics.get(metric)
    tags = {TAG["best_trial_id"]: trial_id, "ternsearch.model_uri": model_uri, "ternsearch.best_run_id": child_run_id}
    metrics = {f"best_{metric}": value} if is_metric_value(value) else {}
    log_batch(client, parent_run_id, metrics=as_metrics(metrics, int(manifest.get("epoch") or 0)),
              tags=as_tags(tags))
    if child_run_id:
        client.set_tag(child_run_id, "ternsearch.best", "true")
    return model_uri


def retrain_checkpoint(final: dict, output: Path) -> Optional[Path]:
    """The checkpoint a finished ``ternsearch train`` run's test evaluation used (``evaluated_checkpoint``), else
    the run directory's latest usable one; None when there is none."""
    if final.get("evaluated_checkpoint"):
        return Path(final["evaluated_checkpoint"])
    from trainables.checkpoint import latest_checkpoint  # torch: only once a retrained model is logged

    return latest_checkpoint(output)


def log_retrained_model(client, uri: str, experiment_id: str, run_id: str, tf, final: dict, output: Path,
                        quiet: bool = False, *, origin_tags: Optional[dict[str, str]] = None,
                        description: str = "") -> Optional[RegisteredModel]:
    """The model of a finished ``ternsearch train`` run: registered as a new version of its sweep's registered
    model (``origin.sweep``; the run's ``name`` without one), the test metrics and ``origin_tags`` (the links to
    the sweep) as tags of that version, ``description`` as its description, and the model packed at 2 bits a
    weight as the run's artifact ``packed/<name>.tern``. None (nothing logged) when the run directory has no
    checkpoint. The caller logs the test metrics with ``model_id`` so that they are the logged model's (and so
    the version's) metrics too."""
    ckpt = retrain_checkpoint(final, output)
    if ckpt is None:
        return None
    from trainables.restore import model_from_checkpoint  # torch: only once a retrained model is logged

    model, cfg = model_from_checkpoint(ckpt)
    origin = tf.origin
    tags = {"ternsearch.role": "retrain", "ternsearch.checkpoint": str(ckpt)}
    if origin.trial_id:
        tags["ternsearch.trial_id"] = origin.trial_id
    registered = log_registered_model(
        client, uri, experiment_id, run_id, model, registered_name=origin.sweep or tf.name, tags=tags, quiet=quiet,
        metadata={"ternsearch_run": tf.name, "ternsearch_trial_id": origin.trial_id, "arch": cfg.model.arch,
                  "quantizer": cfg.model.quantizer, "checkpoint": str(ckpt)})
    if registered.version:
        version_tags = {k: final[k] for k in ("test_acc", "test_loss") if final.get(k) is not None}
        version_tags.update({"ternsearch.run_id": run_id, "ternsearch.role": "retrain",
                             "ternsearch.checkpoint": ckpt.name, "ternsearch.origin.sweep": origin.sweep,
                             "ternsearch.origin.trial_id": origin.trial_id,
                             TAG["sweep_parent"]: origin.parent_run_id, **(origin_tags or {})})
        for key, value in version_tags.items():
            if value is not None:
                client.set_model_version_tag(registered.name, registered.version, key, str(value))
        if description:
            client.update_model_version(registered.name, registered.version, description=description)
    client.set_tag(run_id, "ternsearch.packed", _log_packed(client, run_id, model, cfg, tf.name))
    return registered


def _log_packed(client, run_id: str, model, cfg, name: str) -> str:
    """Log the packed 2-bit model as ``packed/<name>.tern``; what happened, for the run's tag."""
    from trainables.packed import PackError, save_packed  # torch: only once a model is packed

    if cfg.model.quantizer == "none":
        return "not packed: full precision (model.quantizer: none)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = save_packed(model, cfg, Path(tmp) / f"{name}.tern")
        except PackError as exc:
            return f"not packed: {exc}"
        client.log_artifact(run_id, str(path), "packed")
    return f"packed/{path.name}"
