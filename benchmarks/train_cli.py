"""One ``ternsearch train`` run of a config, as the benchmarks that compare training runs make it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml


def train_cli(cfg: dict, work: Path) -> tuple[dict, Path, float]:
    """Write ``cfg`` to WORK/NAME.yaml and run ``ternsearch train`` on it into WORK/NAME (MLflow off unless the
    config says otherwise: MLFLOW_TRACKING_URI is not passed on). Returns the final metrics it printed, its run
    directory and the seconds it took; a failed run ends the benchmark with its stderr's tail."""
    path = work / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "train", str(path), "-q", "-o",
                           str(work / cfg["name"])], cwd=work, env=env, text=True, capture_output=True)
    if proc.returncode:
        raise SystemExit(f"{cfg['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), work / cfg["name"], time.perf_counter() - t0
