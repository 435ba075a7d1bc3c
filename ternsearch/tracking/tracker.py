"""MLflow tracking: the sweep driver is the only process that talks to MLflow.

``MLflowTracker`` is a Ray Tune callback living on the sweep driver. One writer means a SQLite store works, a
restarted or resumed trial finds its run by tag instead of duplicating it, and no run is left RUNNING:

- one parent run per sweep (found again by the tag ``ternsearch.sweep_id`` on ``--resume``), holding the
  fixed config as params, the spec file, and at the end the best model (registered under the sweep's name);
- one child run per trial (tag ``ternsearch.trial_id``, nested through ``mlflow.parentRunId``) holding the
  searched values as params and every epoch's metrics at ``step=epoch``; a restarted trial that repeats
  epochs logs each epoch once and counts its restarts in ``ternsearch.restarts``;
- ``ternsearch.status`` says how a trial ended: ``completed``, ``stopped by ASHA at epoch N``,
  ``failed: <reason>``, ``interrupted (resumed)`` or ``killed: sweep ended while trial was running``.

Outages. An unreachable store at ``start()`` is a ``TrackingError`` (one line naming the URI, within seconds;
the sweep makes that check before starting Ray, ``resolve_uri(..., probe=True)``). During the sweep every
write goes through an in-order queue (``ternsearch.tracking.writequeue``): a write the store cannot take now (server
down, overloaded, timing out) stays queued with its original timestamps and is retried at later callbacks (at
most one failed attempt per callback, each bounded to a few seconds, spaced out while the store stays down), so
trials never wait for MLflow, and a run created late still gets its params, its metrics at their epochs, its
start and end times. ``log_best()`` and ``close()`` wait for the store for up to ~30 s
(``$TERNSEARCH_MLFLOW_FINAL_FLUSH_S``); whatever is still unwritten, or was rejected by the store, is reported
exactly: one warning per run (trial, run or "not created", epochs lost), ``tracker.unwritten`` and
``<results_dir>/tracking_unwritten.json``. The sweep's own records in the results directory stay the source of
truth.

``log_single_run`` records a ``ternsearch train`` run (a retrain of an exported config), linked to its sweep.
Credentials (``MLFLOW_TRACKING_PASSWORD``/``TOKEN``, user:password in a URI) never appear in messages.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback

from ternsearch.errors import TrackingError
from ternsearch.numbers import fmt_number
from ternsearch.results.trials import LOST_REASON, TUNE_KEYS, error_text, trial_status
from ternsearch.tracking.experiments import get_or_create_experiment
from ternsearch.tracking.model import log_best_model
from ternsearch.tracking.store import (TAG, as_metrics, as_params, as_tags, check_reachable, common_tags,
                                       configure_http_env, copy_redacted, default_tracking_uri, ensure_sqlite_dir,
                                       flatten_config, is_metric_value, log_batch, one_line, quoted, redact,
                                       search_all, without_credentials)
from ternsearch.tracking.train_runs import log_single_run
from ternsearch.tracking.writequeue import UNWRITTEN_FILE, WriteQueue, describe_unwritten

__all__ = ["MLflowTracker", "TAG", "UNWRITTEN_FILE", "check_reachable", "default_tracking_uri", "describe_unwritten",
           "error_reason", "flatten_config", "log_single_run"]

log = logging.getLogger("ternsearch.tracking")

_FINAL_FLUSH_S = 30.0  # close(): how long to keep trying to write what is still queued
_NODE_TAGS = ("node_ip", "hostname", "node_id")  # where a trial ran: tags of its run, not metrics


# ------------------------------------------------------------------------------------------------ the callback
_FULL_URIS: dict[str, str] = {}  # this process's tracking URIs with credentials, by their pickled form


class MLflowTracker(WriteQueue, Callback):
    """Records a sweep in MLflow from the Tune driver: one parent run, one child run per trial.

    Picklable (Tune pickles its callbacks with the run config): the MLflow client is created lazily and not
    pickled. Call ``start()`` before ``Tuner.fit()`` and ``close(status)`` in a ``finally:``; after ``close()``,
    ``unwritten`` lists what never reached the store (empty when everything did).

    The callbacks turn Tune's events into ops for the write queue (``ternsearch.tracking.writequeue``): they never
    wait long for the store and never raise.
    """

    def __init__(self, *, uri: str, experiment: str, sweep_name: str, sweep_id: str, spec_file: str,
                 results_dir: str, metric: str, mode: str, fixed_params: dict[str, Any], quiet: bool = False):
        self.uri = uri
        self.quiet = quiet  # keep MLflow's own console lines (model registry, pickle warning) off the console
        self.experiment = experiment
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        self.spec_file = str(spec_file)
        self.results_dir = str(results_dir)
        self.metric = metric
        self.mode = mode
        self.fixed_params = dict(fixed_params)
        self.experiment_id: Optional[str] = None
        self.parent_run_id: Optional[str] = None
        self._client_obj = None
        self._closed = False
        self._runs: dict[str, str] = {}  # trial_id -> run_id (once the run exists in the store)
        self._opened: set[str] = set()  # trials whose run was asked for (maybe still queued)
        self._last_epoch: dict[str, int] = {}
        self._restarts: dict[str, int] = {}
        self._restart_noted: dict[str, bool] = {}  # a restart already counted since the last new epoch
        self._node: dict[str, dict[str, str]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self.failures: list[str] = []  # tracking problems met during the sweep (also logged as warnings)
        self._init_queue()

    # -------------------------------------------------------------------------------------------- plumbing
    def __getstate__(self) -> dict:
        # Tune pickles callbacks into its experiment state on storage: no user:password of the URI in there.
        # A copy made in this process (Tune deep-copies its config) gets it back from _FULL_URIS.
        state = self.__dict__.copy()
        state["_client_obj"] = None
        state["uri"] = without_credentials(self.uri)
        if state["uri"] != self.uri:
            _FULL_URIS[state["uri"]] = self.uri
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.uri = _FULL_URIS.get(self.uri, self.uri)

    def _client(self):
        if self._client_obj is None:
            # mlflow takes ~1 s to import: the tracker is made (and pickled by Tune) before it talks to the store
            from mlflow.tracking import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.uri)
        return self._client_obj

    def _guard(self, what: str, fn, *args):
        """Run a tracking step; a failure is a warning, never the end of the sweep."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException, requests/SQLAlchemy errors...
            self._warn(f"{what} failed: {type(exc).__name__}: {one_line(exc)}")
            return None

    # -------------------------------------------------------------------------------------------- sweep level
    def start(self, probe: bool = True) -> str:
        """Find (by ``ternsearch.sweep_id``) or create the sweep's parent run; returns its id. ``probe``: first
        check that an http(s) store answers (``check_reachable``); False where the caller has just done so.

        Raises:
            TrackingError: the store cannot be reached or used (one line, naming the URI).
        """
        if probe:
            check_reachable(self.uri)
        else:
            configure_http_env()
        try:
            ensure_sqlite_dir(self.uri)
            client = self._client()
            self.experiment_id = get_or_create_experiment(client, self.uri, self.experiment)
            found = search_all(client, self.experiment_id,
                               f"tags.`{TAG['sweep_id']}` = {quoted(self.sweep_id)} and "
                               f"tags.`{TAG['role']}` = 'sweep'")
            if found:
                run = sorted(found, key=lambda r: r.info.start_time or 0)[0]
                self.parent_run_id = run.info.run_id
                if run.info.status != "RUNNING":
                    client.update_run(self.parent_run_id, status="RUNNING")
            else:
                self.parent_run_id = self._create_parent(client)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"MLflow tracking store {redact(self.uri)}: cannot use it "
                                f"({type(exc).__name__}: {one_line(exc)})") from None
        self._closed = False
        return self.parent_run_id

    def _create_parent(self, client) -> str:
        tags = {TAG["sweep_id"]: self.sweep_id, TAG["role"]: "sweep", TAG["results_dir"]: self.results_dir,
                "ternsearch.sweep_name": self.sweep_name, "ternsearch.spec_file": self.spec_file,
                "ternsearch.metric": self.metric, "ternsearch.mode": self.mode, **common_tags()}
        run = client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name)
        run_id = run.info.run_id
        log_batch(client, run_id, params=as_params(self.fixed_params))
        if Path(self.spec_file).is_file():  # with any credentials in it (a tracking URI's user:password) masked
            with tempfile.TemporaryDirectory(prefix="ternsearch-spec-") as tmp:
                copy = Path(tmp) / Path(self.spec_file).name
                copy_redacted(self.spec_file, copy)
                client.log_artifact(run_id, str(copy), "spec")
        return run_id

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            self.start()
        return self.parent_run_id  # type: ignore[return-value]

    def _children(self, status: Optional[str] = None) -> list:
        flt = f"tags.`{TAG['parent']}` = {quoted(self._require_parent())}"
        if status:
            flt += f" and attributes.status = {quoted(status)}"
        return search_all(self._client(), self.experiment_id, flt)

    def reconcile(self) -> int:
        """Before a resumed sweep restarts trials: mark child runs left RUNNING by a killed driver as KILLED
        (``ternsearch.status=interrupted (resumed)``). Returns how many were marked."""
        def _do() -> int:
            client = self._client()
            runs = self._children("RUNNING")
            for run in runs:
                log_batch(client, run.info.run_id, tags=as_tags({TAG["status"]: "interrupted (resumed)"}))
                client.set_terminated(run.info.run_id, "KILLED")
            return len(runs)

        self.__dict__["_resumed"] = True
        return self._guard("reconcile", _do) or 0

    def on_step_begin(self, iteration, trials, **info):
        """First step of a resumed sweep: a trial the killed driver started but Tune's last saved state does not
        hold is lost (Tune will not continue it; the searcher may propose its configuration again). Its run
        stays KILLED and is re-tagged ``ternsearch.role=lost-trial`` so it is not counted as a trial."""
        if not self.__dict__.pop("_resumed", False):
            return
        known = {t.trial_id for t in trials}

        def _do() -> None:
            client = self._client()
            for run in self._children():
                tid = run.data.tags.get(TAG["trial_id"])
                if tid and tid not in known and run.data.tags.get(TAG["role"]) == "trial":
                    log_batch(client, run.info.run_id, tags=as_tags({
                        TAG["role"]: "lost-trial", TAG["status"]: LOST_REASON}))

        self._guard("marking lost trials", _do)

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED/KILLED/FAILED) and any child still RUNNING as KILLED,
        after writing what is still queued (a few tries over up to ~30 s). What cannot be written is reported:
        ``unwritten``, one warning per run, ``<results_dir>/tracking_unwritten.json``. Idempotent."""
        if self._closed or self.parent_run_id is None:
            return
        self._closed = True
        self._queue.append(self._op("close", None, status=status))
        self._drain(_final_wait_s())
        self._report_unwritten()

    # -------------------------------------------------------------------------------------------- trial runs
    def _trial_number(self, trial) -> Optional[int]:
        # Tune's trial ids are random hex; the trial's place in Tune's list (creation order, kept across
        # --resume) gives readable, stable numbers.
        return self.__dict__.get("_numbers", {}).get(trial.trial_id)

    def _run_name(self, trial) -> str:
        number = self._trial_number(trial)
        parts = [f"t{number:03d}" if number is not None else f"t-{trial.trial_id}"]
        for key, value in flatten_config(dict(trial.config or {})).items():
            if value is not None:
                parts.append(f"{key.rsplit('.', 1)[-1]}={fmt_number(value, 3)}")
        return " ".join(parts)[:200]

    def _find_child(self, trial_id: str):
        runs = search_all(self._client(), self.experiment_id,
                          f"tags.`{TAG['trial_id']}` = {quoted(trial_id)} and "
                          f"tags.`{TAG['parent']}` = {quoted(self._require_parent())}")
        return sorted(runs, key=lambda r: r.info.start_time or 0)[0] if runs else None

    def _open_ops(self, trial) -> list[dict]:
        """The op creating (or finding) ``trial``'s run, if none was asked for yet."""
        tid = trial.trial_id
        if tid in self._opened:
            return []
        self._opened.add(tid)
        self._last_epoch.setdefault(tid, 0)
        self._restarts.setdefault(tid, 0)
        number = self._trial_number(trial)
        tags = {TAG["trial_id"]: tid, TAG["role"]: "trial", TAG["sweep_id"]: self.sweep_id,
                TAG["status"]: "running", TAG["restarts"]: "0"}
        if number is not None:
            tags[TAG["trial_number"]] = str(number)
        params = {k: v for k, v in flatten_config(dict(trial.config or {})).items() if v is not None}
        return [self._op("open", tid, tags=tags, run_name=self._run_name(trial), params=params)]

    def on_trial_start(self, iteration, trials, trial, **info):
        numbers = self.__dict__.setdefault("_numbers", {})
        numbers[trial.trial_id] = next((i for i, t in enumerate(trials) if t is trial), len(numbers))
        self._guard(f"starting the run of trial {trial.trial_id}", self._start_trial, trial)

    def _start_trial(self, trial) -> None:
        tid = trial.trial_id
        if tid not in self._opened:
            self._submit(*self._open_ops(trial))
            return
        # Started again (Tune retried it): a start after logged epochs counts as a restart.
        restarted = self._last_epoch.get(tid, 0) > 0 and not self._restart_noted.get(tid)
        if restarted:
            self._restarts[tid] = self._restarts.get(tid, 0) + 1
            self._restart_noted[tid] = True
        self._submit(self._op("reopen", tid, tags={TAG["status"]: "running"}, restarts=restarted))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(f"logging a result of trial {trial.trial_id}", self._log_result, trial, result)

    def _log_result(self, trial, result: dict) -> None:
        tid = trial.trial_id
        if "epoch" not in result:
            return
        ops = self._open_ops(trial)
        epoch = int(result["epoch"])
        tags: dict[str, Any] = {}
        node = {k: str(result[k]) for k in _NODE_TAGS if result.get(k) not in (None, "")}
        if node and self._node.get(tid) != node:
            tags.update({f"ternsearch.{k}": v for k, v in node.items()})
            self._node[tid] = node
        if epoch <= self._last_epoch.get(tid, 0):
            # A restarted trial repeats epochs after its checkpoint: keep the first value of each epoch.
            restarted = not self._restart_noted.get(tid)
            if restarted:
                self._restarts[tid] = self._restarts.get(tid, 0) + 1
                self._restart_noted[tid] = True
            if tags or restarted:
                ops.append(self._op("log", tid, tags=tags, restarts=restarted))
            self._submit(*ops)
            return
        values = {k: v for k, v in result.items()
                  if k not in TUNE_KEYS and is_metric_value(v) and v is not None}
        ops.append(self._op("log", tid, epoch=epoch, metrics=as_metrics(values, epoch), tags=tags))
        self._last_epoch[tid] = epoch
        self._restart_noted[tid] = False
        self._last[tid] = {k: result.get(k)
                           for k in ("epoch", "early_stopped", "run_complete", "done", "diverged", "failed")}
        self._submit(*ops)

    def on_step_end(self, iteration, trials, **info):
        if self._queue:  # the store was down: try again (rate-limited in _flush) even when no trial reports
            self._guard("writing buffered results", self._flush)

    def _planned_epochs(self, trial) -> Optional[int]:
        config = dict(trial.config or {})
        for value in (config.get("epochs"), config.get("train.epochs"), self.fixed_params.get("train.epochs")):
            if value is not None:
                return int(value)
        return None

    def _end_status(self, trial, errored: bool) -> tuple[str, str]:
        """(run status, ``ternsearch.status``) of a finished trial, by the rule of the sweep's records
        (``trial_status``): a failure it reported ends it FAILED even when ASHA stopped it on that report."""
        last = self._last.get(trial.trial_id) or dict(trial.last_result or {})
        status, reason = trial_status(last, errored, error_reason(trial) if errored else "",
                                      planned_epochs=self._planned_epochs(trial))
        if status == "failed":
            return "FAILED", f"failed: {reason}"
        return "FINISHED", reason if status == "stopped" else status

    def _end_trial(self, trial, errored: bool) -> None:
        run_status, status_tag = self._end_status(trial, errored)
        ops = self._open_ops(trial)
        ops.append(self._op("end", trial.trial_id, status=run_status, tags={TAG["status"]: status_tag}))
        self._submit(*ops)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self._opened and not trial.has_reported_at_least_once:
            return  # a trial removed before it ever ran
        self._guard(f"ending the run of trial {trial.trial_id}", self._end_trial, trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(f"ending the run of trial {trial.trial_id}", self._end_trial, trial, True)

    # -------------------------------------------------------------------------------------------- best model
    def log_best(self, trial_id: str, checkpoint_dir: str, best_config_yaml: str) -> str:
        """Log the best trial's model (from its checkpoint) and config on the parent run, register the model
        under the sweep's name, and return its URI (``models:/<sweep>/<version>``). Writes still queued are
        written first (waiting up to ~30 s for the store to come back); if they cannot be, ``TrackingError``."""
        if not self._drain(_final_wait_s()):
            raise TrackingError(f"MLflow tracking store {redact(self.uri)} is unreachable: the best model was not "
                                f"logged ({len(self._queue)} writes still buffered)")
        try:
            return self._log_best(trial_id, checkpoint_dir, best_config_yaml)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"MLflow tracking store {redact(self.uri)}: logging the best model failed "
                                f"({type(exc).__name__}: {one_line(exc)})") from None

    def _log_best(self, trial_id: str, checkpoint_dir: str, best_config_yaml: str) -> str:
        parent = self._require_parent()
        child_id = self._runs.get(trial_id)
        if child_id is None:
            child = self._find_child(trial_id)
            child_id = child.info.run_id if child else None
        return log_best_model(self._client(), self.uri, self.experiment_id, parent, child_id, trial_id=trial_id,
                              checkpoint_dir=checkpoint_dir, best_config_yaml=best_config_yaml, metric=self.metric,
                              registered_name=self.sweep_name, quiet=self.quiet)


def _final_wait_s() -> float:
    """How long the end of a sweep waits for an unreachable store: ``$TERNSEARCH_MLFLOW_FINAL_FLUSH_S`` or 30 s."""
    try:
        return max(0.0, float(os.environ.get("TERNSEARCH_MLFLOW_FINAL_FLUSH_S", _FINAL_FLUSH_S)))
    except ValueError:
        return _FINAL_FLUSH_S


# ------------------------------------------------------------------------------------------------ trial errors
def error_reason(trial) -> str:
    """One line saying why a trial failed (``ternsearch.results.trials.error_text``), credentials masked."""
    return redact(error_text(trial, limit=None))[:300]
