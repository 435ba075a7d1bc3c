"""The MLflow runs of a sweep's trials, for the report's links: found in the store the sweep recorded in its
results directory (``sweep.json``), or in the SQLite file moved with that directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ternsearch.tracking.experiments import ui_path
from ternsearch.tracking.store import (TAG, brief_http, check_reachable, one_line, quoted, redact, search_all,
                                       sqlite_path, sqlite_uri)

__all__ = ["RunLinks", "UI_PORT", "mlflow_links"]

UI_PORT = 5000


@dataclass(frozen=True)
class RunLinks:
    """The sweep's MLflow runs: ``runs`` maps trial id to run id; ``base`` is the UI's address (the server
    itself for an http store, ``mlflow ui``'s default address for a SQLite one, which ``command`` starts)."""

    uri: Optional[str] = None
    experiment_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    runs: dict = field(default_factory=dict)
    base: Optional[str] = None
    command: Optional[str] = None
    error: Optional[str] = None

    def url(self, run_id: Optional[str]) -> Optional[str]:
        if not (self.base and self.experiment_id and run_id):
            return None
        return f"{self.base.rstrip('/')}/{ui_path(self.experiment_id, run_id)}"


def _store(results) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(uri to query, UI base address, command that opens the UI); a SQLite store moved with its results
    directory is found there."""
    uri = results.meta.get("tracking_uri")
    if not uri:
        return None, None, None
    path = sqlite_path(uri)
    if path is not None:
        if not path.expanduser().is_file() and (results.path / "mlflow.db").is_file():
            uri = sqlite_uri((results.path / "mlflow.db").resolve())
            path = sqlite_path(uri)
        if not path.expanduser().is_file():
            return None, None, None
        cmd = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"
        return uri, f"http://127.0.0.1:{UI_PORT}", cmd
    if uri.startswith(("http://", "https://")):
        return uri, uri, None
    return uri, None, None


def mlflow_links(results) -> RunLinks:
    """Find each trial's child run (tag ``ternsearch.trial_id`` under the sweep's parent run) of ``results``, a
    loaded sweep (``ternsearch.report.data.Results``: its ``meta``, sweep.json, and ``path``). Never raises: an
    unreachable or missing store gives a RunLinks without runs and the reason in ``error``."""
    parent = results.meta.get("parent_run_id")
    uri, base, command = _store(results)
    if not uri or not parent:
        return RunLinks(uri=uri, parent_run_id=parent, error="no MLflow store recorded for this sweep")
    try:
        check_reachable(uri)  # an http store that is down fails here within seconds
        # mlflow takes ~1 s to import: only when the report looks for the runs
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        with brief_http():
            exp_id = client.get_run(parent).info.experiment_id
            runs = search_all(client, exp_id, f"tags.`{TAG['parent']}` = {quoted(parent)}")
        by_trial = {}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
            tid = run.data.tags.get(TAG["trial_id"])
            if tid:
                by_trial[tid] = run.info.run_id  # the earliest run of a trial wins, as in tracking
    except Exception as exc:  # noqa: BLE001 - the report still renders without links
        return RunLinks(uri=uri, parent_run_id=parent, base=base, command=command,
                        error=f"{redact(uri)}: {type(exc).__name__}: {one_line(exc)}")
    return RunLinks(uri=uri, experiment_id=exp_id, parent_run_id=parent, runs=by_trial, base=base, command=command)
