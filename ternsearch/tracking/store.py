"""MLflow plumbing shared by the sweep tracker (``ternsearch.tracking.tracker``), ``ternsearch train`` runs
(``ternsearch.tracking.train_runs``), models (``model``), run links (``links``) and ``ternsearch ui``: tracking
URIs (``resolve_uri``, once per command), redaction of credentials, MLflow entities within the store's limits,
bounded HTTP waits, telling an outage from a rejected write. mlflow itself is imported only where an MLflow object
is made: the sweep's checks before Ray starts import this module."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import pathname2url

import requests

from ternsearch.errors import TrackingError
from ternsearch.results.atomic import write_atomic

__all__ = ["TAG", "as_metrics", "as_params", "as_tags", "brief_http", "check_reachable", "common_tags",
           "configure_http_env", "copy_redacted", "default_tracking_uri", "ensure_sqlite_dir", "flatten_config",
           "is_metric_value", "is_transient", "log_batch", "mlflow_console_off", "now_ms",
           "one_line", "outage_reason", "pip_requirements", "quoted", "redact", "resolve_uri", "search_all",
           "sqlite_path", "sqlite_uri", "using_tracking_uri", "without_credentials"]

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
# During a sweep one write costs at most a few seconds when the server is down or hung (one immediate retry, a
# short timeout): the tracker's own queue retries later. A user's lower settings win.
_BRIEF_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": 1, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 0,
                   "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 0, "MLFLOW_HTTP_REQUEST_TIMEOUT": 3}
# MLflow error codes of a store that is down, overloaded or timing out: worth retrying. Others reject the write.
_TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                              "DEADLINE_EXCEEDED", "ABORTED", "IO_ERROR", "SERVICE_UNDER_MAINTENANCE"})


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
        return sqlite_uri(Path(results_dir).expanduser().resolve() / "mlflow.db")
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return sqlite_uri(path.expanduser().resolve())
    if "://" not in uri and not uri.startswith(("databricks", "file:/")):  # a file store: ./mlruns or file:mlruns
        return Path(uri[len("file:"):] if uri.startswith("file:") else uri).expanduser().resolve().as_uri()
    return uri


def resolve_uri(results_dir: Path, *given: Optional[str], probe: bool = False) -> str:
    """The tracking URI of a sweep or a ``ternsearch train`` run, resolved once on its way from the YAML to MLflow:
    the first of ``given`` that is set (``--tracking-uri``, then ``tracking.uri``), else the default of
    ``default_tracking_uri``. With ``probe``, an http(s) store must answer within seconds.

    Raises:
        TrackingError: with ``probe``, nothing answers at the URI (one line naming it, see ``check_reachable``).
    """
    uri = default_tracking_uri(results_dir, next((g for g in given if g), None))
    if probe:
        check_reachable(uri)
    return uri


def resolve_sweep_uri(results_dir: Path, flag: Optional[str], configured: Optional[str],
                      former: Optional[dict] = None, probe: bool = False) -> str:
    """A sweep's tracking URI (``resolve_uri``: ``--tracking-uri``, then ``tracking.uri``, ...). On ``--resume``
    (``former``: its sweep.json) the store it ran in comes right after ``--tracking-uri``: a sweep started with
    ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` goes on there, its records whole. Records keep the URI without
    credentials, so ``tracking.uri`` or ``$MLFLOW_TRACKING_URI`` is taken instead where it is that URI with them."""
    recorded = (former or {}).get("tracking_uri")
    if recorded:
        same = [g for g in (configured, os.environ.get("MLFLOW_TRACKING_URI"))
                if g and without_credentials(default_tracking_uri(results_dir, g)) == recorded]
        recorded = (same or [recorded])[0]
    return resolve_uri(results_dir, flag, recorded, configured, probe=probe)


def sqlite_uri(path: Path) -> str:
    # Like mlflow.utils.file_utils.path_to_local_sqlite_uri: an absolute POSIX path gives sqlite:////abs/file.db
    return "sqlite:///" + pathname2url(str(path))


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))


def without_credentials(uri: str) -> str:
    """``uri`` without a user:password part (``http://u:p@host`` -> ``http://host``): what is written to
    records and messages. MLflow reads credentials from MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN as well."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@", r"\1", str(uri)) if uri else uri


def copy_redacted(src, dst) -> None:
    """Copy a spec or train file into a results or run directory with its credentials masked."""
    write_atomic(dst, redact(Path(src).read_text()))


def redact(text: str) -> str:
    """``text`` without credentials: user:password in URLs and the values of secret environment variables."""
    text = re.sub(r"(://)[^/@\s]+@", r"\1***@", str(text))
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type's name without one), redacted, at most ``limit`` long."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return redact(text)[:limit]


def _metric_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:_MAX_KEY]


def is_metric_value(v: Any) -> bool:
    """Whether ``v`` can be an MLflow metric value: any int or float, bools (logged as 0/1) and NaN or infinity
    (a diverged trial's loss) included, unlike ``ternsearch.numbers.is_number``."""
    return isinstance(v, (int, float)) and not isinstance(v, str)


def now_ms() -> int:
    """Now, in MLflow's unit (milliseconds since the epoch)."""
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


def common_tags() -> dict[str, str]:
    """Tags every run of ours gets: package versions and the git commit, what reproduces it."""
    tags = {f"ternsearch.version.{k}": v for k, v in _package_versions().items()}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def quoted(value: str) -> str:
    """``value`` quoted for an MLflow search filter."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def configure_http_env() -> None:
    """Bounded HTTP retries and timeout for MLflow's client (a user's own settings win); no URL on stdout."""
    for key, value in _HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # With a server, MLflow prints "View run ... at: URL" to stdout whenever a run ends (and fetches the run to
    # do so): stdout is for the summary JSON that scripts parse.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _probe_http(uri: str) -> None:
    """Fail fast (a few seconds) when nothing answers at an http(s) tracking URI."""
    parts = urlsplit(uri)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        requests.get(base, timeout=_PROBE_TIMEOUT_S, verify=False if os.environ.get(
            "MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true" else True)
    except requests.exceptions.SSLError:
        return  # something answers; MLflow's own client applies the TLS settings
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        reason = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "connection failed"
        raise TrackingError(f"MLflow tracking store {redact(uri)} is unreachable ({reason} within "
                            f"{_PROBE_TIMEOUT_S:.0f} s): start the server or fix tracking.uri") from None


def check_reachable(uri: str) -> None:
    """Raise ``TrackingError`` (one line naming the URI) when nothing answers at an http(s) tracking URI within
    a few seconds. Other URIs (SQLite, file) are not checked here."""
    configure_http_env()
    if uri.startswith(("http://", "https://")):
        _probe_http(uri)


@contextlib.contextmanager
def brief_http() -> Iterator[None]:
    """MLflow's HTTP retries and timeout bounded to a few seconds per request for a moment (see _BRIEF_HTTP_ENV),
    and urllib3's warning about each retry silenced (the tracker reports an outage once)."""
    saved = {key: os.environ.get(key) for key in _BRIEF_HTTP_ENV}
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        for key, limit in _BRIEF_HTTP_ENV.items():
            try:
                value = min(float(saved[key]), limit) if saved[key] is not None else limit
            except ValueError:
                value = limit
            os.environ[key] = str(value) if key.endswith("JITTER") else str(int(value))
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        pool_log.setLevel(level)


def outage_reason(exc: BaseException) -> str:
    """Why a request failed, short: the OS error under MLflow's and urllib3's wrappers when there is one
    (``Connection refused``), else the exception's first line."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] ([^\"'()\]]+)", text)
    if found:
        return found[-1].strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    return f"{type(exc).__name__}: {one_line(exc, 160)}"


def is_transient(exc: BaseException) -> bool:
    """Whether a failed MLflow call is worth retrying: the store is down, overloaded or timed out, as opposed to
    a write it rejects (bad value, missing run...), which would fail again."""
    # mlflow takes ~1 s to import: only when writing (the sweep's checks before Ray import this module)
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        try:
            status = int(exc.get_http_status_code())
        except (TypeError, ValueError):
            status = 0
        return status >= 500 or status == 429 or exc.error_code in _TRANSIENT_CODES
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, (OSError, TimeoutError)) or bool(names & {"OperationalError", "DisconnectionError"})


def ensure_sqlite_dir(uri: str) -> None:
    """Create the folder of a SQLite store's database file (MLflow does not)."""
    path = sqlite_path(uri)
    if path is not None:
        path.expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def search_all(client, experiment_id: str, filter_string: str) -> list:
    """Every run of ``experiment_id`` matching ``filter_string``, all pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_batch(client, run_id: str, metrics=(), params=(), tags=()) -> None:
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


def as_params(values: dict[str, Any]):
    """MLflow params, keys and values cut to the store's limits; None values left out."""
    # mlflow takes ~1 s to import: only when writing (the sweep's checks before Ray import this module)
    from mlflow.entities import Param

    return [Param(k[:_MAX_KEY], str(v)[:_MAX_PARAM_VAL]) for k, v in values.items() if v is not None]


def as_tags(values: dict[str, Any]):
    """MLflow tags, keys and values cut to the store's limits; None values left out."""
    # mlflow takes ~1 s to import: only when writing (the sweep's checks before Ray import this module)
    from mlflow.entities import RunTag

    return [RunTag(k[:_MAX_KEY], str(v)[:_MAX_TAG_VAL]) for k, v in values.items() if v is not None]


def as_metrics(values: dict[str, Any], step: int, ts: Optional[int] = None, model_id: Optional[str] = None):
    """MLflow metrics at ``step``; with ``model_id`` they are that logged model's metrics too."""
    # mlflow takes ~1 s to import: only when writing (the sweep's checks before Ray import this module)
    from mlflow.entities import Metric

    ts = ts or now_ms()
    return [Metric(_metric_key(k), float(v), ts, int(step), model_id=model_id) for k, v in values.items()]


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.pytorch.log_model``, registry) at ``uri`` for a moment."""
    # mlflow takes ~1 s to import: only when writing (the sweep's checks before Ray import this module)
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


@contextlib.contextmanager
def mlflow_console_off(off: bool = True) -> Iterator[None]:
    """MLflow's model logging prints to stderr by itself ("Successfully registered model", "Created version",
    a warning on pickled models) and re-enables its log stream as it goes; with ``off``, what it prints meanwhile
    is dropped. Our own messages do not go through here."""
    if not off:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def pip_requirements() -> list[str]:
    """What a logged model needs installed: torch and torchvision at this process's versions."""
    reqs = []
    for pkg in ("torch", "torchvision"):
        try:
            reqs.append(f"{pkg}=={importlib.metadata.version(pkg).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs
