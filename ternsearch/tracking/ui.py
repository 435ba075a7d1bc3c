"""``ternsearch ui``: the MLflow UI on a sweep's own tracking store, bound to 127.0.0.1 unless told otherwise.

A sweep with a SQLite store (the default) gets ``mlflow server`` on that file; a sweep that tracked to a server
is pointed at that server instead. The command replaces itself with the server, so Ctrl-C stops it."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

from ternsearch.errors import ResultsError
from ternsearch.results.export import load_results_meta
from ternsearch.tracking.store import _redact, _sqlite_path

__all__ = ["ui_command", "server_argv"]

LOOPBACK = "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_argv(uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command for a SQLite store: one worker (the UI's needs are small), no job runner."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def ui_command(a) -> int:
    results = Path(a.results)
    meta = load_results_meta(results)
    uri = meta.get("tracking_uri") or ""
    experiment = meta.get("experiment", meta.get("name"))
    db = _sqlite_path(uri)
    if db is None:
        print(f"{results}: sweep '{meta.get('name')}' tracked to {_redact(uri) or 'no store'}: open that server's UI "
              f"(experiment '{experiment}')")
        return 0
    if not db.is_absolute():  # relative to where the sweep ran, which sweep.json does not say: try beside it
        db = results / db.name
    if not db.is_file():
        raise ResultsError(f"{results}: its tracking store {db} does not exist (tracking_uri in sweep.json: {uri})")
    if not _is_loopback(a.host):
        print(f"warning: the MLflow UI will listen on {a.host}: anyone who can reach this machine can read and "
              "change the sweep's runs (MLflow has no login here)", file=sys.stderr)
    shown = "127.0.0.1" if a.host in ("0.0.0.0", "::") else a.host
    print(f"MLflow UI for sweep '{meta.get('name')}' (experiment '{experiment}'): http://{shown}:{a.port}  "
          "(Ctrl-C stops it)", flush=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job runner and its consumers
    argv = server_argv(f"sqlite:///{db.resolve()}", a.host, a.port)
    os.execve(argv[0], argv, env)
    return 0  # not reached
