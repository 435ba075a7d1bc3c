"""``ternsearch train`` runs into MLflow: one run linked to its sweep, its per-epoch and final metrics, its config,
and its model registered as a new version of the sweep's registered model. No Ray here: ``ternsearch train``
runs without it."""

from __future__ import annotations

import sys
from pathlib import Path

from ternsearch.errors import TrackingError
from ternsearch.results.files import read_epochs
from ternsearch.results.trials import TUNE_KEYS
from ternsearch.spec.describe import data_line
from ternsearch.tracking.experiments import get_or_create_experiment, ui_path
from ternsearch.tracking.model import log_retrained_model
from ternsearch.tracking.store import (TAG, as_metrics, as_params, common_tags, ensure_sqlite_dir, flatten_config,
                                       is_metric_value, log_batch, one_line, quoted, redact, resolve_uri, search_all)

__all__ = ["describe_origin", "log_single_run", "sweep_links"]


def sweep_links(client, origin) -> dict[str, str]:
    """Tags that link a retrain to its sweep, read from the sweep's parent run (``origin.parent_run_id``) in the
    store: ``ternsearch.origin.sweep_id``, ``.experiment_id``, ``.experiment``, ``.ui_path`` (the sweep
    experiment's page in the MLflow UI) and ``.trial_run_id`` (the exported trial's run). Empty without a parent
    run, or when the store does not hold it (a train file moved to another store)."""
    from mlflow.exceptions import MlflowException  # mlflow is loaded already: a run is being recorded

    if not origin.parent_run_id:
        return {}
    try:
        parent = client.get_run(origin.parent_run_id)
    except MlflowException:
        return {}
    experiment_id = parent.info.experiment_id
    links = {"ternsearch.origin.sweep_id": parent.data.tags.get(TAG["sweep_id"]),
             "ternsearch.origin.experiment_id": experiment_id,
             "ternsearch.origin.experiment": client.get_experiment(experiment_id).name,
             "ternsearch.origin.ui_path": ui_path(experiment_id)}
    if origin.trial_id:
        found = search_all(client, experiment_id, f"tags.`{TAG['parent']}` = {quoted(origin.parent_run_id)} and "
                                                  f"tags.`{TAG['trial_id']}` = {quoted(origin.trial_id)}")
        if found:  # the earliest run of a trial is its run, as in the tracker
            links["ternsearch.origin.trial_run_id"] = min(found, key=lambda r: r.info.start_time or 0).info.run_id
    return {k: v for k, v in links.items() if v}


def describe_origin(origin, links: dict[str, str]) -> str:
    """The description of a retrained model's version: which sweep and trial it retrains, as Markdown links
    into the MLflow UI (relative to its base) where the sweep's runs are in the store."""
    if not origin.sweep:
        return ""
    trial = f"trial `{origin.trial_id}` of " if origin.trial_id else ""
    text = f"Retrain of {trial}sweep **{origin.sweep}**"
    if links.get("ternsearch.origin.sweep_id"):
        text += f" (sweep id `{links['ternsearch.origin.sweep_id']}`)"
    if links.get("ternsearch.origin.ui_path"):
        exp_id = links["ternsearch.origin.experiment_id"]
        text += f": [the sweep's runs]({links['ternsearch.origin.ui_path']})"
        if links.get("ternsearch.origin.trial_run_id"):
            text += f", [the trial's run]({ui_path(exp_id, links['ternsearch.origin.trial_run_id'])})"
        if origin.parent_run_id:
            text += f", [the sweep's parent run]({ui_path(exp_id, origin.parent_run_id)})"
    return text + "."


def log_single_run(tf, source: Path, final: dict, quiet: bool = False) -> str:
    """Record a finished ``ternsearch train`` run: one run linked to its sweep by
    ``ternsearch.sweep_parent_run_id``; params = the flattened resolved config; per-epoch metrics from
    ``<output>/history.jsonl``; final metrics (test_acc, test_loss, ...); the config file as an artifact; the
    final model registered as a new version of the sweep's registered model, with the test metrics as its tags and
    metrics, and packed at 2 bits as an artifact (``ternsearch.tracking.model.log_retrained_model``).
    ``quiet``: without MLflow's own console lines. Returns the run id.

    Raises:
        TrackingError: the store cannot be reached or used.
    """
    output = Path(final.get("output") or ".")
    experiment = tf.tracking.experiment or tf.name
    uri = resolve_uri(Path(tf.origin.results) if tf.origin.results else output, tf.tracking.uri, probe=True)
    try:
        return _log_single_run(tf, Path(source), final, output, uri, experiment, quiet)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow tracking store {redact(uri)}: logging the run failed "
                            f"({type(exc).__name__}: {one_line(exc)})") from None


def _log_single_run(tf, source: Path, final: dict, output: Path, uri: str, experiment: str, quiet: bool) -> str:
    from mlflow.tracking import MlflowClient  # ~1 s: only when a run is recorded

    ensure_sqlite_dir(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, uri, experiment)
    origin = tf.origin
    tags = {TAG["role"]: "train", "ternsearch.output": str(output.resolve()), "ternsearch.config_file":
            str(source.resolve()), TAG["sweep_parent"]: origin.parent_run_id, "ternsearch.origin.sweep": origin.sweep,
            "ternsearch.origin.results": origin.results, "ternsearch.origin.trial_id": origin.trial_id,
            "ternsearch.origin.metric_value": origin.metric_value, "ternsearch.data": data_line(tf.data.model_dump()),
            "ternsearch.eval_on": "train" if tf.data.val_fraction == 0 else "val", **common_tags()}
    links = sweep_links(client, origin)
    tags.update(links)
    run = client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items() if v is not None},
                            run_name=f"{tf.name} retrain" if origin.parent_run_id else tf.name)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        log_batch(client, run_id, params=as_params(flatten_config(tf.base_config().model_dump(mode="json"))))
        history = read_epochs(output, warn=lambda message: print(message, file=sys.stderr))  # torn lines skipped
        for epoch, row in sorted(history.items()):
            values = {k: v for k, v in row.items() if k not in TUNE_KEYS and is_metric_value(v)}
            log_batch(client, run_id, metrics=as_metrics(values, epoch))
        last_epoch = max(history) if history else int(final.get("epoch") or 0)
        logged = set(history.get(last_epoch, {}))
        finals = {k: v for k, v in final.items()
                  if is_metric_value(v) and k not in TUNE_KEYS and (k not in logged or k.startswith("test_"))}
        registered = log_retrained_model(client, uri, experiment_id, run_id, tf, final, output, quiet,
                                         origin_tags=links, description=describe_origin(origin, links))
        tests = {k: finals.pop(k) for k in list(finals) if k.startswith("test_")}
        log_batch(client, run_id, metrics=as_metrics(finals, last_epoch) + as_metrics(
            tests, last_epoch, model_id=registered.model_id if registered else None))
        if registered:
            client.set_tag(run_id, "ternsearch.model_uri", registered.uri)
        if source.is_file():
            client.log_artifact(run_id, str(source), "config")
        if (output / "final_metrics.json").is_file():
            client.log_artifact(run_id, str(output / "final_metrics.json"), "final")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id
