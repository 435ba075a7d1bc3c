"""Secure defaults: what listens where, who may connect, what the code never does. The MLflow UI's binds are
checked where it runs for real (tests/test_browser.py), credentials in tests/test_tracking_outage.py, crafted
pickles in tests/test_faults.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_cluster import listening_addresses
from ternsearch.cli import main

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "ternsearch").glob("*.py"), *(REPO / "trainables").glob("*.py"),
                  *(REPO / "benchmarks").glob("*.py")])

# Starts Ray the way `ternsearch sweep` does, prints what a test needs, and keeps Ray up until stdin closes.
_LOCAL_RAY = r"""
import json, os, sys
import ray
from ternsearch.run.cluster import start_cluster
start_cluster(None)
ctx = ray.get_runtime_context()
print(json.dumps({"gcs": ctx.gcs_address, "dashboard": ray.worker.get_dashboard_url(),
                  "auth": os.environ.get("RAY_AUTH_MODE")}), flush=True)
sys.stdin.read()
ray.shutdown()
"""


def test_sources_avoid_unsafe_calls():
    """No shell=True, no yaml.load (only safe_load), every torch.load with weights_only=True, no pickle.load."""
    assert SOURCES
    for path in SOURCES:
        text = path.read_text()
        assert "shell=True" not in text, path
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), path
        assert not re.search(r"pickle\.loads?\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


@pytest.mark.slow
@pytest.mark.ray
def test_local_ray_dashboard_on_loopback_and_unauthenticated_clients_refused(tmp_path):
    """The local Ray a sweep starts: its dashboard (HTTP, the job and state APIs) listens on 127.0.0.1 only.
    Ray 2.60's core gRPC servers (GCS, raylet, workers) listen on all interfaces and have no setting to change
    that; they are guarded by Ray's token authentication, which is on: a client without the token is refused."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.Popen([sys.executable, "-c", _LOCAL_RAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        info = json.loads(proc.stdout.readline() or "{}")
        assert info, proc.stderr.read()[-3000:] if proc.poll() is not None else "no output"
        port = int(info["dashboard"].rsplit(":", 1)[1])
        binds = listening_addresses(proc.pid)
        assert {ip for ip, p in binds if p == port} == {"127.0.0.1"}, binds
        assert info["auth"] == "token"
        wide = {(ip, p) for ip, p in binds if ip not in ("127.0.0.1", "::1")}
        assert wide, "expected Ray's core servers on all interfaces (if Ray now binds them narrower, say so here)"
        intruder = {**env, "RAY_AUTH_MODE": "disabled"}
        attempt = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={info['gcs']!r}); "
                                  "print('CONNECTED')"], env=intruder, capture_output=True, text=True, timeout=180)
        assert attempt.returncode != 0 and "CONNECTED" not in attempt.stdout
        assert "token" in attempt.stderr.lower(), attempt.stderr[-2000:]
    finally:
        try:
            proc.communicate(input="", timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ui_of_a_server_tracked_sweep_points_at_the_server(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    (tmp_path / "sweep.json").write_text(json.dumps({
        "name": "s", "metric": "val_acc", "mode": "max", "experiment": "exp-s",
        "tracking_uri": "https://bob:pw-secret@mlflow.example:8443"}))
    assert main(["ui", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"{tmp_path}: sweep 's' tracked to https://***@mlflow.example:8443: open that server's UI " \
                  "(experiment 'exp-s')"


def test_ui_without_its_store_is_one_line(tmp_path, capsys):
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "metric": "val_acc", "mode": "max",
                                                        "tracking_uri": f"sqlite:///{tmp_path}/gone.db"}))
    assert main(["ui", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"{tmp_path}: its tracking store {tmp_path}/gone.db does not exist (tracking_uri in sweep.json: " \
                  f"sqlite:///{tmp_path}/gone.db)"
