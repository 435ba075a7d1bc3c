"""Command-line argument mistakes (issue 16): each row of tests/bad_commands.py through the real CLI must exit 1
with exactly the row's one line on stderr, no traceback, within 15 s, and leave every file of the working directory
(the results directory included) as it was.

Importing torch and pandas costs each CLI process seconds, so the table runs in one batch process (``cli.main`` per
row, through tests/helpers_batch.py as tests/test_spec.py's corpus is; ``os.execve`` disabled, so
a ui row that got past its checks fails instead of becoming an MLflow server), plus a few rows as separate
``python -m ternsearch.cli`` processes for the real exit code and time. Nothing here starts Ray or a server: the
port-in-use row is a socket this module holds."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from bad_commands import ROWS, Row, make_workdir
from helpers_batch import finish_batch, quiet_env, start_batch
from ternsearch.errors import UsageError
from ternsearch.spec.uris import check_ray_address, check_storage_path, check_tracking_uri

LIMIT_S = 15.0

@pytest.fixture(scope="module")
def busy_port():
    """A port with a listening socket on 127.0.0.1, held while this module runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, data_root, busy_port) -> dict:
    """The working directory (see ``make_workdir``), and an environment whose HOME, TMPDIR and RAY_TMPDIR are
    empty folders (no Ray cluster recorded), without Ray or MLflow settings."""
    base = tmp_path_factory.mktemp("bad_commands")
    work, home, tmp = base / "work", base / "home", base / "tmp"
    make_workdir(work)
    home.mkdir()
    tmp.mkdir()
    env = quiet_env(data_root, home, tmp)
    fill = {"results": "results/rec", "work": str(work), "tmp": str(tmp), "busy": str(busy_port)}
    return {"work": work, "tmp": tmp, "env": env, "fill": fill}


def _argv(row: Row, fill: dict) -> list[str]:
    return [arg.format(**fill) for arg in row.argv]


def _check_line(row: Row, stderr: str, fill: dict) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"{row.name}: not one line:\n{stderr}"
    expect = row.expect.format(**fill) if not row.expect.startswith("re:") else row.expect[3:]
    if row.expect.startswith("re:"):
        assert re.fullmatch(expect, lines[0]), (row.name, lines[0])
    else:
        assert lines[0] == expect, row.name


@pytest.fixture(scope="module")
def batch(sandbox) -> dict:
    argvs = [_argv(row, sandbox["fill"]) for row in ROWS]
    out = finish_batch(start_batch(argvs, cwd=sandbox["work"], env=sandbox["env"], watch=(sandbox["work"],)))
    out["by_name"] = {row.name: r for row, r in zip(ROWS, out["results"])}
    return out


def test_table_covers_the_issue():
    assert len(ROWS) >= 50
    assert len({r.name for r in ROWS}) == len(ROWS)
    assert all("\n" not in r.expect and not r.expect.endswith(" ") for r in ROWS)
    firsts = {r.argv[0] for r in ROWS if r.argv}
    assert {"train", "sweep", "export", "report", "ui"} <= firsts


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_bad_command(batch, sandbox, row: Row):
    r = batch["by_name"][row.name]
    _check_line(row, r["stderr"], sandbox["fill"])
    assert (r["code"], r["stdout"], r["changed"]) == (1, "", []), row.name
    assert r["seconds"] <= LIMIT_S, (row.name, r["seconds"])


def test_bad_commands_start_no_ray(batch, sandbox):
    assert not batch["ray_initialized"]
    assert not [p for p in sandbox["tmp"].rglob("*") if p.name.startswith("session_")]


# The real program: exit code, the one line, and the time from start to exit (interpreter and imports included).
_SEPARATE = ("address nothing listening", "ui port in use", "export epochs 0", "unknown flag")


def test_as_separate_processes(sandbox):
    rows = [r for r in ROWS if r.name in _SEPARATE]
    assert len(rows) == len(_SEPARATE)

    def run(row: Row):
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", *_argv(row, sandbox["fill"])],
                              cwd=sandbox["work"], env=sandbox["env"], capture_output=True, text=True, timeout=60)
        return proc, time.monotonic() - start

    with ThreadPoolExecutor(2) as pool:
        for row, (proc, seconds) in zip(rows, pool.map(run, rows)):
            _check_line(row, proc.stderr, sandbox["fill"])
            assert (proc.returncode, proc.stdout) == (1, ""), row.name
            assert seconds <= LIMIT_S, (row.name, seconds)


def test_help_still_prints_help_and_exits_0(capsys):
    from ternsearch.cli import main

    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ternsearch export ")


def test_ui_port_0_prints_the_port_it_will_listen_on(sandbox, monkeypatch, capsys):
    """--port 0: a free port, chosen before the server starts, in the URL and in the server's command line."""
    import ternsearch.tracking.ui as ui
    from ternsearch.cli import main

    execs = []

    def fake_exec(path, argv, env):
        execs.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(ui.os, "execve", fake_exec)
    with pytest.raises(SystemExit):
        main(["ui", str(sandbox["work"] / "results" / "rec"), "--port", "0"])
    port = int(execs[0][execs[0].index("--port") + 1])
    assert port > 0
    assert f"http://127.0.0.1:{port}  (Ctrl-C stops it)" in capsys.readouterr().out
    with socket.socket() as sock:  # free then, and nothing took it since
        sock.bind(("127.0.0.1", port))


def test_address_auto_follows_ray(tmp_path, monkeypatch):
    """auto: $RAY_ADDRESS, else what the latest `ray start` recorded in Ray's temp dir (a stale record fails)."""
    from ternsearch.run.cluster import auto_address, check_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = tmp_path / "ray" / "ray_current_cluster"
    assert auto_address() == (None, str(record))
    record.parent.mkdir()
    record.write_text("127.0.0.1:1\n")
    assert auto_address() == ("127.0.0.1:1", str(record))
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        check_cluster("auto")
    assert time.monotonic() - start < LIMIT_S
    assert str(info.value) == (f"--address auto (127.0.0.1:1, from {record}): no Ray cluster is listening there "
                               "(start one with ray start --head, or leave --address out for a local Ray)")
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert auto_address() == ("10.1.2.3:6379", "$RAY_ADDRESS")



def test_ray_address_in_the_environment_is_checked_like_address(sandbox):
    """ray.init joins $RAY_ADDRESS when no --address is given: a stale one is one line in seconds (the real CLI,
    dry run), not minutes of ray.init retrying; RAY_ADDRESS=local is Ray's word for a local instance."""
    env = dict(sandbox["env"], RAY_ADDRESS="127.0.0.1:1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", "specs/dry.yaml", "--dry-run"],
                          cwd=sandbox["work"], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < LIMIT_S + 20  # the interpreter's start and imports
    assert (proc.returncode, proc.stderr) == (1, "$RAY_ADDRESS=127.0.0.1:1: no Ray cluster is listening there (start "
                                              "one with ray start --head, or unset RAY_ADDRESS for a local Ray)\n")
    assert not (sandbox["work"] / "fresh").exists()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", "specs/dry.yaml", "--dry-run"],
                          cwd=sandbox["work"], env=dict(env, RAY_ADDRESS="local"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr

def test_the_pure_checks_accept_what_works():
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.com/prefix", "http://[::1]:5000", "sqlite:///m.db",
                "sqlite:////abs/mlflow.db", "file:./mlruns", "file:///abs/mlruns", "mlruns", "databricks",
                "postgresql://user@db.example.com:5432/mlflow", "mysql+pymysql://u@h/db"):
        assert check_tracking_uri(uri) is None, uri
    for path in ("~/ternsearch-results", "results", "/abs/results", "s3://bucket/sweeps", "gs://b"):
        assert check_storage_path(path) is None, path
    for address in ("auto", "10.0.0.5:6379", "localhost:6379", "[::1]:6379", "head-node.example.com:1"):
        assert check_ray_address(address) is None, address


def test_what_fuzzing_found_stays_fixed(tmp_path):
    """A host name IDNA cannot encode is an unknown host (it was a thread's traceback); `ui`'s runs link reads the
    store read-only without MLflow (opening it through MLflow created tables in a file that was no store yet)."""
    from ternsearch.tracking.net import resolve
    from ternsearch.tracking.ui import _experiment_id

    with pytest.raises(socket.gaierror, match="is not a host name"):
        resolve("\udcff", 5000, 5.0)
    stand_in = tmp_path / "mlflow.db"
    stand_in.write_bytes(b"SQLite format 3\x00 stand-in")
    assert _experiment_id(stand_in, "x") is None and stand_in.read_bytes() == b"SQLite format 3\x00 stand-in"
    assert _experiment_id(tmp_path / "missing.db", "x") is None and not (tmp_path / "missing.db").exists()
