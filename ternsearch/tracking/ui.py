"""``ternsearch ui``: the MLflow UI on a sweep's own tracking store, bound to 127.0.0.1 unless told otherwise.

A sweep with a SQLite store (the default) gets ``mlflow server`` on that file; a sweep that tracked to a server
is pointed at that server instead. The command replaces itself with the server, so Ctrl-C stops it. It prints the
address of the sweep experiment's runs table too, on the UI's model-training face (``experiments.ui_path``)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Optional

from ternsearch.errors import ResultsError, UsageError
from ternsearch.results.export import load_results_meta
from ternsearch.tracking.experiments import ui_path
from ternsearch.tracking.net import listen_problem
from ternsearch.tracking.store import redact, sqlite_path

__all__ = ["ui_command", "server_argv", "listen_port"]

LOOPBACK = "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    """Where a browser on this machine finds a server listening on ``host``: a wildcard address is shown as
    loopback; an IPv6 address in brackets."""
    shown = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def listen_port(host: str, port: int) -> int:
    """The port the server will listen on: ``port``, or for 0 a free one. Tries to bind ``host:port`` first, so a
    port in use or a host that is not this machine's is one line before the server starts (and prints its logs).
    A race remains: another program may take the port between this check and the server's own bind.

    Raises:
        UsageError: naming ``--host`` or ``--port`` and what is allowed.
    """
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: not a port (1 to 65535, or 0 for a free one)")
    found, exc = listen_problem(host, port)
    if exc is None:
        return found
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        raise UsageError(f"--host {host}: unknown host (an address of this machine to listen on: 127.0.0.1, "
                         "localhost, or 0.0.0.0 for every interface)")
    if exc.errno == errno.EADDRINUSE:
        raise UsageError(f"--port {port}: {where} is already in use (stop what listens there, or give another "
                         "--port, or --port 0 for a free one)")
    if exc.errno == errno.EADDRNOTAVAIL:
        raise UsageError(f"--host {host}: not an address of this machine, so nothing can listen there (127.0.0.1, "
                         "localhost, an address of one of its interfaces, or 0.0.0.0 for all)")
    reason = exc.strerror or str(exc) or type(exc).__name__
    raise UsageError(f"--host {host} --port {port}: cannot listen on {where}: {reason} (a port from 1024 to 65535 "
                     "needs no privileges; --port 0 picks a free one)")


def server_argv(uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command for a SQLite store: one worker (the UI's needs are small), no job runner."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
            "--port", str(port), "--workers", "1"]


def _experiment_id(db: Path, name: str) -> Optional[str]:
    """The id of the live experiment ``name`` in the SQLite store ``db``; None when it cannot be read there (the
    UI still opens, on its home page). Read-only and without MLflow: opening the store through MLflow's client
    would create or migrate its tables (an INFO line on stderr, and a changed file, before the UI even starts)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)) as con:
            row = con.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                              (name,)).fetchone()
    except (sqlite3.Error, OSError, ValueError):  # not a store (yet), locked, unreadable: the link is a convenience
        return None
    return str(row[0]) if row else None


def ui_command(a) -> int:
    results = Path(a.results)
    meta = load_results_meta(results)
    uri = meta.get("tracking_uri") or ""
    experiment = meta.get("experiment", meta.get("name"))
    db = sqlite_path(uri)
    if db is None:
        print(f"{results}: sweep '{meta.get('name')}' tracked to {redact(uri) or 'no store'}: open that server's UI "
              f"(experiment '{experiment}')")
        return 0
    if not db.is_absolute():  # relative to where the sweep ran, which sweep.json does not say: try beside it
        db = results / db.name
    if not db.is_file():
        raise ResultsError(f"{results}: its tracking store {db} does not exist (tracking_uri in sweep.json: {uri})")
    port = listen_port(a.host, a.port)
    if not _is_loopback(a.host):
        print(f"warning: the MLflow UI will listen on {a.host}: anyone who can reach this machine can read and "
              "change the sweep's runs (MLflow has no login here)", file=sys.stderr)
    print(f"MLflow UI for sweep '{meta.get('name')}' (experiment '{experiment}'): {_url(a.host, port)}  "
          "(Ctrl-C stops it)", flush=True)
    experiment_id = _experiment_id(db, experiment)
    if experiment_id is not None:
        print(f"its runs: {_url(a.host, port)}/{ui_path(experiment_id)}", flush=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job runner and its consumers
    argv = server_argv(f"sqlite:///{db.resolve()}", a.host, port)
    os.execve(argv[0], argv, env)
    return 0  # not reached
