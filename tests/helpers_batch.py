"""Many ``ternsearch`` command lines in one process, for the tables of refusals (tests/test_spec.py's bad specs,
tests/test_bad_commands.py's bad arguments): a Python start and the CLI's imports once, not once a row.

Each row's stdout and stderr are captured at the descriptor level (libraries' warnings and logging count too),
with its exit code, the time it took and which paths under the watched folders changed (bytes compared); the
batch ends by telling whether Ray or an MLflow run is still up. ``os.execve`` raises: a row that would exec
(``ui``, ``dashboard``) got past its checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUNNER = r"""
import hashlib, json, os, sys, tempfile, time, traceback
from pathlib import Path

def _no_exec(*args):
    raise RuntimeError(f"the command would exec {args[0]}: a row got past its checks")
os.execve = os.execv = _no_exec

from ternsearch.cli import main

def tree(roots):
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out

roots, out = json.loads(sys.argv[2]), []
for argv in json.loads(sys.argv[1]):
    before = tree(roots)
    sys.stdout.flush(); sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as std:
        os.dup2(std.fileno(), 1); os.dup2(err.fileno(), 2)
        start = time.monotonic()
        try:
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                traceback.print_exc()
                code = "raised"
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            seconds = time.monotonic() - start
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        err.seek(0); std.seek(0)
        after = tree(roots)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        out.append({"argv": argv, "code": code, "stderr": err.read().decode(errors="replace"),
                    "stdout": std.read().decode(errors="replace"), "seconds": seconds, "changed": changed})
ray = sys.modules.get("ray")
mlflow = sys.modules.get("mlflow")
print(json.dumps({"results": out, "ray_initialized": bool(ray and ray.is_initialized()),
                  "mlflow_active_run": bool(mlflow and mlflow.active_run())}))
"""


def quiet_env(data_root: Path, home: Path, tmp: Path) -> dict[str, str]:
    """This environment without Ray or MLflow settings, HOME, TMPDIR and RAY_TMPDIR the (empty) folders given
    (so no Ray cluster is recorded), no GPU, and this checkout first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(TERNSEARCH_DATA=str(data_root), HOME=str(home), TMPDIR=str(tmp), RAY_TMPDIR=str(tmp),
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    return env


def start_batch(argvs: list[list[str]], *, cwd: Path, env: dict, watch: tuple = ()) -> subprocess.Popen:
    """The batch of command lines ``argvs`` started in ``cwd``; changes under the folders ``watch`` are noted."""
    return subprocess.Popen([sys.executable, "-c", _RUNNER, json.dumps(argvs), json.dumps([str(w) for w in watch])],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_batch(proc: subprocess.Popen, timeout: float = 600) -> dict:
    """``{"results": [one dict a row, in order], "ray_initialized": ..., "mlflow_active_run": ...}``."""
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"the batch crashed:\n{stderr[-4000:]}"
    return json.loads(stdout.splitlines()[-1])
