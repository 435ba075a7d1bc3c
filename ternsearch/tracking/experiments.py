"""The MLflow experiments a sweep and ``ternsearch train`` write to, and where the MLflow UI shows them.

MLflow 3's UI has two faces: GenAI (traces, token usage, judges) and model training (runs, metrics, models).
Which one an experiment page shows depends on the UI version: an experiment tagged ``mlflow.experimentKind``
opens as that kind where the UI reads the tag, and the 3.17 UI reads the switch at its top left instead (GenAI by
default, remembered by the browser, and set for one page by the URL parameter ``workflowType``). So our experiments
carry the tag, and every address of ours into the UI (``ui_path``) asks for the model-training face."""

from __future__ import annotations

import re
from typing import Optional

from ternsearch.tracking.store import sqlite_path

__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "get_or_create_experiment", "ui_path"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning" in the UI's kind selector
_WORKFLOW = "workflowType=machine_learning"  # the UI's "Model training" switch, for the page it opens


def _artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Beside the database for a SQLite store (MLflow's default, ./mlruns, depends on the current directory);
    the server's choice otherwise."""
    path = sqlite_path(uri)
    if path is None:
        return None
    safe = re.sub(r"[^\w.\-]", "_", experiment) or "experiment"
    return (path.expanduser().resolve().parent / "mlartifacts" / safe).as_uri()


def get_or_create_experiment(client, uri: str, name: str) -> str:
    """The id of the experiment ``name``: created (artifacts beside a SQLite store) as a model-training
    experiment, or restored if deleted. An existing experiment without a kind (one an earlier version made) gets
    it; a kind someone chose is left alone."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if not exp.tags.get(EXPERIMENT_KIND_TAG):
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def ui_path(experiment_id: str, run_id: Optional[str] = None) -> str:
    """The MLflow UI's address of an experiment's runs table (or of one of its runs), relative to the UI's base
    (``http://127.0.0.1:5000/`` + this), on the model-training face."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?{_WORKFLOW}"
