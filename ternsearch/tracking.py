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

``log_single_run`` records a ``ternsearch train`` run (a retrain of an exported config), linked to its sweep.

Failures of the store during a sweep are logged as warnings and never stop the sweep (its own records in the
results directory are the source of truth); an unreachable store at ``start()`` is a ``TrackingError``.
Credentials (``MLFLOW_TRACKING_PASSWORD``/``TOKEN``, user:password in a URI) never appear in messages.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import pathname2url

from ray.tune import Callback

from ternsearch.errors import TrackingError

__all__ = ["MLflowTracker", "default_tracking_uri", "flatten_config", "log_single_run", "TAG"]

log = logging.getLogger(__name__)

# Tag keys (one place, so readers such as the report agree with the writer).
TAG = {
    "sweep_id": "ternsearch.sweep_id",
    "role": "ternsearch.role",  # "sweep" | "trial" | "train"
    "results_dir": "ternsearch.results_dir",
    "trial_id": "ternsearch.trial_id",
    "trial_number": "ternsearch.trial_number",
    "status": "ternsearch.status",
    "restarts": "ternsearch.restarts",
    "parent": "mlflow.parentRunId",
    "best_trial_id": "ternsearch.best_trial_id",
    "sweep_parent": "ternsearch.sweep_parent_run_id",
}

# Keys Tune adds to every result (bookkeeping), never logged as metrics. ``done`` is Tune's too: it is forced to
# True when a scheduler stops a trial, so it cannot tell "ran all epochs" from "stopped by ASHA".
_TUNE_KEYS = frozenset({
    "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "episodes_total", "timestamp", "pid", "hostname", "node_ip",
    "config", "trial_id", "date", "done", "experiment_tag", "experiment_id", "checkpoint_dir_name",
    "should_checkpoint", "__duplicate__", "warmup_time",
})
_NODE_TAGS = ("node_ip", "hostname", "node_id")
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
               "DATABRICKS_TOKEN", "AWS_SECRET_ACCESS_KEY")
# Bounded waits for an HTTP store (MLflow's defaults retry 7 times with backoff factor 2: minutes).
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_PROBE_TIMEOUT_S = 5.0
_MAX_PARAM_VAL = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH (3.17)
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_MAX_ENTITIES_PER_BATCH = 1000  # also the metrics limit
_MAX_PARAMS_TAGS_PER_BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^\w.\-/ :]")
_EXC_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Failure)): ?(.*)$")


# ------------------------------------------------------------------------------------------------ small helpers
def flatten_config(cfg_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in cfg_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, prefix=name + "."))
        else:
            out[name] = value
    return out


def default_tracking_uri(results_dir: Path, configured: Optional[str]) -> str:
    """The tracking URI of a sweep: ``configured``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file
    ``<results_dir>/mlflow.db``. A relative SQLite path is made absolute (against the current directory) so
    the recorded URI still works from another directory (``export``, ``train``)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return _sqlite_uri(Path(results_dir).expanduser().resolve() / "mlflow.db")
    path = _sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return _sqlite_uri(path.resolve())
    return uri


def _sqlite_uri(path: Path) -> str:
    # Like mlflow.utils.file_utils.path_to_local_sqlite_uri: an absolute POSIX path gives sqlite:////abs/file.db
    return "sqlite:///" + pathname2url(str(path))


def _sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))


def _redact(text: str) -> str:
    """``text`` without credentials: user:password in URLs and the values of secret environment variables."""
    text = re.sub(r"(://)[^/@\s]+@", r"\1***@", str(text))
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _one_line(exc: BaseException, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return _redact(text)[:limit]


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _metric_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:_MAX_KEY]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, str)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("torch", "torchvision", "ray", "optuna", "mlflow", "ternsearch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> Optional[str]:
    """The commit of the checkout this package runs from, if it is a git checkout (read-only query)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _common_tags() -> dict[str, str]:
    tags = {f"ternsearch.version.{k}": v for k, v in _package_versions().items()}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _configure_http_env() -> None:
    for key, value in _HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _probe_http(uri: str) -> None:
    """Fail fast (a few seconds) when nothing answers at an http(s) tracking URI."""
    import requests

    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        requests.get(base, timeout=_PROBE_TIMEOUT_S, verify=False if os.environ.get(
            "MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true" else True)
    except requests.exceptions.SSLError:
        return  # something answers; MLflow's own client applies the TLS settings
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        reason = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "connection failed"
        raise TrackingError(f"MLflow tracking store {_redact(uri)} is unreachable ({reason} within "
                            f"{_PROBE_TIMEOUT_S:.0f} s): start the server or fix tracking.uri") from None


def _ensure_sqlite_dir(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is not None:
        path.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Beside the database for a SQLite store (MLflow's default, ./mlruns, depends on the current directory);
    the server's choice otherwise."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    safe = re.sub(r"[^\w.\-]", "_", experiment) or "experiment"
    return (path.expanduser().resolve().parent / "mlartifacts" / safe).as_uri()


def _get_or_create_experiment(client, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _log_batch(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    """One ``log_batch`` call when within MLflow's batch limits, else as few as needed."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:  # limits: 1000 metrics, 100 params, 100 tags, 1000 entities in all
        n = min(len(metrics), _MAX_ENTITIES_PER_BATCH)
        m, metrics = metrics[:n], metrics[n:]
        n = min(len(params), _MAX_PARAMS_TAGS_PER_BATCH, _MAX_ENTITIES_PER_BATCH - len(m))
        p, params = params[:n], params[n:]
        n = min(len(tags), _MAX_PARAMS_TAGS_PER_BATCH, _MAX_ENTITIES_PER_BATCH - len(m) - len(p))
        t, tags = tags[:n], tags[n:]
        client.log_batch(run_id, metrics=m, params=p, tags=t)


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k[:_MAX_KEY], str(v)[:_MAX_PARAM_VAL]) for k, v in values.items() if v is not None]


def _tags(values: dict[str, Any]):
    from mlflow.entities import RunTag

    return [RunTag(k[:_MAX_KEY], str(v)[:_MAX_TAG_VAL]) for k, v in values.items() if v is not None]


def _metrics(values: dict[str, Any], step: int, ts: Optional[int] = None):
    from mlflow.entities import Metric

    ts = ts or _now_ms()
    return [Metric(_metric_key(k), float(v), ts, int(step)) for k, v in values.items()]


@contextlib.contextmanager
def _using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.pytorch.log_model``, registry) at ``uri`` for a moment."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils  # to restore the previous value

    previous = getattr(tracking_utils, "_tracking_uri", None)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None also clears MLFLOW_TRACKING_URI...
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env  # ...which the user may have set


def _pip_requirements() -> list[str]:
    reqs = []
    for pkg in ("torch", "torchvision"):
        try:
            reqs.append(f"{pkg}=={importlib.metadata.version(pkg).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


# ------------------------------------------------------------------------------------------------ the callback
class MLflowTracker(Callback):
    """Records a sweep in MLflow from the Tune driver: one parent run, one child run per trial.

    Picklable (Tune pickles its callbacks with the run config): the MLflow client is created lazily and not
    pickled. Call ``start()`` before ``Tuner.fit()`` and ``close(status)`` in a ``finally:``.
    """

    def __init__(self, *, uri: str, experiment: str, sweep_name: str, sweep_id: str, spec_file: str,
                 results_dir: str, metric: str, mode: str, fixed_params: dict[str, Any]):
        self.uri = uri
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
        self._runs: dict[str, str] = {}  # trial_id -> run_id
        self._last_epoch: dict[str, int] = {}
        self._restarts: dict[str, int] = {}
        self._restart_noted: dict[str, bool] = {}  # a restart already counted since the last new epoch
        self._node: dict[str, dict[str, str]] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self.failures: list[str] = []  # tracking problems met during the sweep (also logged as warnings)

    # -------------------------------------------------------------------------------------------- plumbing
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client_obj"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _client(self):
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.uri)
        return self._client_obj

    def _guard(self, what: str, fn, *args):
        """Run a tracking step; a store failure is a warning, never the end of the sweep."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException, requests/SQLAlchemy errors...
            msg = f"MLflow tracking ({_redact(self.uri)}): {what} failed: {type(exc).__name__}: {_one_line(exc)}"
            self.failures.append(msg)
            log.warning("%s (the sweep continues; its results directory keeps every result)", msg)
            return None

    # -------------------------------------------------------------------------------------------- sweep level
    def start(self) -> str:
        """Find (by ``ternsearch.sweep_id``) or create the sweep's parent run; returns its id.

        Raises:
            TrackingError: the store cannot be reached or used (one line, naming the URI).
        """
        _configure_http_env()
        if self.uri.startswith(("http://", "https://")):
            _probe_http(self.uri)
        try:
            _ensure_sqlite_dir(self.uri)
            client = self._client()
            self.experiment_id = _get_or_create_experiment(client, self.uri, self.experiment)
            found = _search_all(client, self.experiment_id,
                                f"tags.`{TAG['sweep_id']}` = {_quote(self.sweep_id)} and "
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
            raise TrackingError(f"MLflow tracking store {_redact(self.uri)}: cannot use it "
                                f"({type(exc).__name__}: {_one_line(exc)})") from None
        self._closed = False
        return self.parent_run_id

    def _create_parent(self, client) -> str:
        tags = {TAG["sweep_id"]: self.sweep_id, TAG["role"]: "sweep", TAG["results_dir"]: self.results_dir,
                "ternsearch.sweep_name": self.sweep_name, "ternsearch.spec_file": self.spec_file,
                "ternsearch.metric": self.metric, "ternsearch.mode": self.mode, **_common_tags()}
        run = client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name)
        run_id = run.info.run_id
        _log_batch(client, run_id, params=_params(self.fixed_params))
        if Path(self.spec_file).is_file():
            client.log_artifact(run_id, self.spec_file, "spec")
        return run_id

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            self.start()
        return self.parent_run_id  # type: ignore[return-value]

    def _children(self, status: Optional[str] = None) -> list:
        flt = f"tags.`{TAG['parent']}` = {_quote(self._require_parent())}"
        if status:
            flt += f" and attributes.status = {_quote(status)}"
        return _search_all(self._client(), self.experiment_id, flt)

    def reconcile(self) -> int:
        """Before a resumed sweep restarts trials: mark child runs left RUNNING by a killed driver as KILLED
        (``ternsearch.status=interrupted (resumed)``). Returns how many were marked."""
        def _do() -> int:
            client = self._client()
            runs = self._children("RUNNING")
            for run in runs:
                _log_batch(client, run.info.run_id, tags=_tags({TAG["status"]: "interrupted (resumed)"}))
                client.set_terminated(run.info.run_id, "KILLED")
            return len(runs)

        return self._guard("reconcile", _do) or 0

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` (FINISHED/KILLED/FAILED) and any child still RUNNING as KILLED.
        Idempotent."""
        if self._closed or self.parent_run_id is None:
            return

        def _do() -> None:
            client = self._client()
            for run in self._children("RUNNING"):
                _log_batch(client, run.info.run_id,
                           tags=_tags({TAG["status"]: "killed: sweep ended while trial was running"}))
                client.set_terminated(run.info.run_id, "KILLED")
            client.set_terminated(self.parent_run_id, status)

        self._guard("closing the sweep's runs", _do)
        self._closed = True

    # -------------------------------------------------------------------------------------------- trial runs
    @staticmethod
    def _trial_number(trial) -> Optional[int]:
        tail = str(trial.trial_id).rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else None

    def _run_name(self, trial) -> str:
        number = self._trial_number(trial)
        parts = [f"t{number:03d}" if number is not None else f"t-{trial.trial_id}"]
        for key, value in flatten_config(dict(trial.config or {})).items():
            if value is not None:
                parts.append(f"{key.rsplit('.', 1)[-1]}={_fmt_value(value)}")
        return " ".join(parts)[:200]

    def _find_child(self, trial_id: str):
        runs = _search_all(self._client(), self.experiment_id,
                           f"tags.`{TAG['trial_id']}` = {_quote(trial_id)} and "
                           f"tags.`{TAG['parent']}` = {_quote(self._require_parent())}")
        return sorted(runs, key=lambda r: r.info.start_time or 0)[0] if runs else None

    def _open_run(self, trial) -> str:
        """The child run of ``trial``: found by tag (and reopened) or created. A second start of a trial that
        had logged epochs counts as a restart."""
        tid = trial.trial_id
        client = self._client()
        run_id = self._runs.get(tid)
        run = client.get_run(run_id) if run_id else self._find_child(tid)
        tags: dict[str, Any] = {TAG["status"]: "running"}
        if run is None:
            number = self._trial_number(trial)
            create_tags = {TAG["parent"]: self._require_parent(), TAG["trial_id"]: tid, TAG["role"]: "trial",
                           TAG["sweep_id"]: self.sweep_id, TAG["status"]: "running", TAG["restarts"]: "0"}
            if number is not None:
                create_tags[TAG["trial_number"]] = str(number)
            run = client.create_run(self.experiment_id, tags=create_tags, run_name=self._run_name(trial))
            run_id = run.info.run_id
            self._runs[tid] = run_id
            self._last_epoch[tid] = 0
            self._restarts[tid] = 0
            _log_batch(client, run_id, params=_params(flatten_config(dict(trial.config or {}))))
            return run_id
        run_id = run.info.run_id
        if tid not in self._runs:  # known from the store only (a resumed sweep)
            self._runs[tid] = run_id
            epoch = run.data.metrics.get("epoch")
            self._last_epoch[tid] = int(epoch) if epoch is not None and math.isfinite(epoch) else 0
            try:
                self._restarts[tid] = int(run.data.tags.get(TAG["restarts"], "0"))
            except ValueError:
                self._restarts[tid] = 0
        if self._last_epoch.get(tid, 0) > 0 and not self._restart_noted.get(tid):
            self._restarts[tid] = self._restarts.get(tid, 0) + 1
            self._restart_noted[tid] = True
            tags[TAG["restarts"]] = str(self._restarts[tid])
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        _log_batch(client, run_id, tags=_tags(tags))
        return run_id

    def _run_of(self, trial) -> str:
        return self._runs.get(trial.trial_id) or self._open_run(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard(f"starting the run of trial {trial.trial_id}", self._open_run, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(f"logging a result of trial {trial.trial_id}", self._log_result, trial, result)

    def _log_result(self, trial, result: dict) -> None:
        tid = trial.trial_id
        if "epoch" not in result:
            return
        run_id = self._run_of(trial)
        client = self._client()
        epoch = int(result["epoch"])
        tags: dict[str, Any] = {}
        node = {k: str(result[k]) for k in _NODE_TAGS if result.get(k) not in (None, "")}
        if node and self._node.get(tid) != node:
            tags.update({f"ternsearch.{k}": v for k, v in node.items()})
            self._node[tid] = node
        if epoch <= self._last_epoch.get(tid, 0):
            # A restarted trial repeats epochs after its checkpoint: keep the first value of each epoch.
            if not self._restart_noted.get(tid):
                self._restarts[tid] = self._restarts.get(tid, 0) + 1
                self._restart_noted[tid] = True
                tags[TAG["restarts"]] = str(self._restarts[tid])
            if tags:
                _log_batch(client, run_id, tags=_tags(tags))
            return
        values = {k: v for k, v in result.items()
                  if k not in _TUNE_KEYS and _is_number(v) and v is not None}
        _log_batch(client, run_id, metrics=_metrics(values, epoch), tags=_tags(tags))
        self._last_epoch[tid] = epoch
        self._restart_noted[tid] = False
        self._last[tid] = {k: result.get(k) for k in ("epoch", "early_stopped", "run_complete", "done")}

    def _planned_epochs(self, trial) -> Optional[int]:
        config = dict(trial.config or {})
        for value in (config.get("epochs"), config.get("train.epochs"), self.fixed_params.get("train.epochs")):
            if value is not None:
                return int(value)
        return None

    def _completion_status(self, trial) -> str:
        last = self._last.get(trial.trial_id) or dict(trial.last_result or {})
        epoch = last.get("epoch")
        if epoch is None:
            return "completed" if last.get("done") else "stopped before its first epoch"
        if last.get("run_complete") is not None:  # the loop's own flag, when it reports one
            complete = bool(last["run_complete"])
        elif last.get("early_stopped"):
            complete = True
        else:
            planned = self._planned_epochs(trial)
            # Tune sets done=True on the result a scheduler stops, so the epoch count decides when known.
            complete = int(epoch) >= planned if planned is not None else bool(last.get("done"))
        return "completed" if complete else f"stopped by ASHA at epoch {int(epoch)}"

    def _end_trial(self, trial, run_status: str, status_tag: str) -> None:
        run_id = self._run_of(trial)
        client = self._client()
        _log_batch(client, run_id, tags=_tags({TAG["status"]: status_tag}))
        client.set_terminated(run_id, run_status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id not in self._runs and not trial.has_reported_at_least_once:
            return  # a trial removed before it ever ran
        self._guard(f"ending the run of trial {trial.trial_id}",
                    lambda: self._end_trial(trial, "FINISHED", self._completion_status(trial)))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(f"ending the run of trial {trial.trial_id}",
                    lambda: self._end_trial(trial, "FAILED", f"failed: {error_reason(trial)}"))

    # -------------------------------------------------------------------------------------------- best model
    def log_best(self, trial_id: str, checkpoint_dir: str, best_config_yaml: str) -> str:
        """Log the best trial's model (from its checkpoint) and config on the parent run, register the model
        under the sweep's name, and return its URI (``models:/<sweep>/<version>``)."""
        try:
            return self._log_best(trial_id, checkpoint_dir, best_config_yaml)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"MLflow tracking store {_redact(self.uri)}: logging the best model failed "
                                f"({type(exc).__name__}: {_one_line(exc)})") from None

    def _log_best(self, trial_id: str, checkpoint_dir: str, best_config_yaml: str) -> str:
        import mlflow.pytorch
        import numpy as np

        from trainables.checkpoint import read_manifest
        from trainables.loop import model_from_checkpoint

        parent = self._require_parent()
        client = self._client()
        model, cfg = model_from_checkpoint(checkpoint_dir)
        manifest = read_manifest(checkpoint_dir)
        example = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        # MLflow 3 puts a model logged without an active run into the *default* experiment (id 0, artifacts in
        # ./mlruns of the current directory): create the LoggedModel in the sweep's experiment first.
        logged = client.create_logged_model(self.experiment_id, name="model", source_run_id=parent,
                                            tags={"ternsearch.trial_id": trial_id})
        with _using_tracking_uri(self.uri):
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example, serialization_format="pickle",
                pip_requirements=_pip_requirements(), registered_model_name=self.sweep_name, run_id=parent,
                model_id=logged.model_id,
                metadata={"ternsearch_trial_id": trial_id, "arch": cfg.model.arch, "quantizer": cfg.model.quantizer,
                          "input": "float32 NCHW 3x32x32, normalized like trainables.augment.normalize"},
            )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "best.yaml"
            path.write_text(best_config_yaml)
            client.log_artifact(parent, str(path), "best")
        value = (manifest.get("metrics") or {}).get(self.metric)
        child_id = self._runs.get(trial_id)
        if child_id is None:
            child = self._find_child(trial_id)
            child_id = child.info.run_id if child else None
        if value is None and child_id:
            value = client.get_run(child_id).data.metrics.get(self.metric)
        version = getattr(info, "registered_model_version", None)
        uri = f"models:/{self.sweep_name}/{version}" if version else info.model_uri
        tags = {TAG["best_trial_id"]: trial_id, "ternsearch.model_uri": uri, "ternsearch.best_run_id": child_id}
        metrics = {f"best_{self.metric}": value} if _is_number(value) else {}
        _log_batch(client, parent, metrics=_metrics(metrics, int(manifest.get("epoch") or 0)), tags=_tags(tags))
        if child_id:
            client.set_tag(child_id, "ternsearch.best", "true")
        return uri


# ------------------------------------------------------------------------------------------------ trial errors
def error_reason(trial) -> str:
    """One line saying why a trial failed, e.g. ``DivergedError: diverged at epoch 2 (train_loss=nan)``.

    Ray 2.60 keeps the error on the trial as files in the trial directory: ``trial.error_file`` (text, one
    ``Failure # N`` section per failure) and ``trial.pickled_error_file`` (the ``RayTaskError``; its ``cause``
    is the trainable's exception).
    """
    text = ""
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            text = Path(path).read_text(errors="replace").split("Failure # ")[-1]
    except Exception:  # noqa: BLE001
        text = ""
    reason = _exception_line(text)
    if reason:
        return reason
    try:
        exc = trial.get_pickled_error()
    except Exception:  # noqa: BLE001
        exc = None
    for _ in range(5):  # RayTaskError.cause -> WorkerGroupError.worker_failures[rank] / ControllerError...
        failures = getattr(exc, "worker_failures", None)
        cause = (failures[min(failures)] if isinstance(failures, dict) and failures else
                 getattr(exc, "cause", None) or getattr(exc, "controller_failure", None))
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    if exc is not None:
        return _exception_line(str(exc)) or f"{type(exc).__name__}: {_one_line(exc)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return _redact(lines[-1])[:300] if lines else "unknown error"


# Exceptions that only wrap the trainable's own error (Tune's task error, Train V2's worker-group error...).
_WRAPPERS = ("RayTaskError", "TuneError", "RayTrainError", "TrainingFailedError", "WorkerGroupError",
             "ControllerError")


def _exception_line(text: str) -> str:
    """The last ``SomeError: message`` line of a traceback text, preferring the trainable's own exception
    over Ray's wrappers of it."""
    found = [m for m in map(_EXC_LINE.match, text.splitlines()) if m]
    own = [m for m in found if m.group(1) not in _WRAPPERS]
    if not (own or found):
        return ""
    m = (own or found)[-1]
    return _redact(f"{m.group(1)}: {m.group(2).strip()}".rstrip(": "))[:300]


# ------------------------------------------------------------------------------------------------ single runs
def log_single_run(tf, source: Path, final: dict) -> str:
    """Record a finished ``ternsearch train`` run: one run linked to its sweep by
    ``ternsearch.sweep_parent_run_id``; params = the flattened resolved config; per-epoch metrics from
    ``<output>/history.jsonl``; final metrics (test_acc, test_loss, ...); the config file as an artifact.
    Returns the run id.

    Raises:
        TrackingError: the store cannot be reached or used.
    """
    output = Path(final.get("output") or ".")
    uri = default_tracking_uri(Path(tf.origin.results) if tf.origin.results else output, tf.tracking.uri)
    experiment = tf.tracking.experiment or tf.name
    _configure_http_env()
    if uri.startswith(("http://", "https://")):
        _probe_http(uri)
    try:
        return _log_single_run(tf, Path(source), final, output, uri, experiment)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow tracking store {_redact(uri)}: logging the run failed "
                            f"({type(exc).__name__}: {_one_line(exc)})") from None


def _read_history(path: Path) -> dict[int, dict]:
    """Epoch -> metrics, the last line kept per epoch (a resumed run repeats the epochs after its checkpoint)."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "epoch" in row:
                    rows[int(row["epoch"])] = row
    return rows


def _log_single_run(tf, source: Path, final: dict, output: Path, uri: str, experiment: str) -> str:
    from mlflow.tracking import MlflowClient

    _ensure_sqlite_dir(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _get_or_create_experiment(client, uri, experiment)
    origin = tf.origin
    tags = {TAG["role"]: "train", "ternsearch.output": str(output.resolve()), "ternsearch.config_file":
            str(source.resolve()), TAG["sweep_parent"]: origin.parent_run_id, "ternsearch.origin.sweep": origin.sweep,
            "ternsearch.origin.results": origin.results, "ternsearch.origin.trial_id": origin.trial_id,
            "ternsearch.origin.metric_value": origin.metric_value, **_common_tags()}
    run = client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items() if v is not None},
                            run_name=f"{tf.name} retrain" if origin.parent_run_id else tf.name)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        _log_batch(client, run_id, params=_params(flatten_config(tf.base_config().model_dump(mode="json"))))
        history = _read_history(output / "history.jsonl")
        for epoch, row in sorted(history.items()):
            values = {k: v for k, v in row.items() if k not in _TUNE_KEYS and _is_number(v)}
            _log_batch(client, run_id, metrics=_metrics(values, epoch))
        last_epoch = max(history) if history else int(final.get("epoch") or 0)
        logged = set(history.get(last_epoch, {}))
        finals = {k: v for k, v in final.items()
                  if _is_number(v) and k not in _TUNE_KEYS and (k not in logged or k.startswith("test_"))}
        _log_batch(client, run_id, metrics=_metrics(finals, last_epoch))
        if source.is_file():
            client.log_artifact(run_id, str(source), "config")
        if (output / "final_metrics.json").is_file():
            client.log_artifact(run_id, str(output / "final_metrics.json"), "final")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id
