"""One real small sweep shared by tests/test_report.py and tests/test_browser.py (run once per session).

Trials run one at a time with a seeded random searcher, so the sequence of configs is fixed: with seed 10 the
fifth trial draws lr=100, whose conditional ``precision: fp16`` makes Adam diverge to NaN in its first epoch
(a failed trial), and ASHA (grace 1, reduction 2) stops the trials worse than the median of those before them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64, optimizer: adam}}
search:
  lr: {{choice: [0.002, 0.01, 100.0]}}
  weight_decay: {{loguniform: [1.0e-5, 1.0e-3]}}
  augment: {{choice: [standard, mixup]}}
  mixup_alpha: {{uniform: [0.1, 0.5], when: {{augment: [mixup]}}}}
  precision: {{choice: [fp16], when: {{lr: [100.0]}}}}
searcher: {{algorithm: random, num_samples: 6, seed: 10, max_concurrent_trials: 1}}
scheduler: {{algorithm: asha, grace_period: 1, reduction_factor: 2}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
failure: {{max_failures: 0}}
storage: {{path: {storage}}}
"""

NAME = "rep"
_CACHE: dict = {}


def cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def real_sweep(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(working dir, the sweep's JSON summary, results dir), the sweep run on first use."""
    if "sweep" not in _CACHE:
        tmp = tmp_path_factory.mktemp("report-sweep")
        spec = tmp / f"{NAME}.yaml"
        spec.write_text(SPEC.format(name=NAME, storage=tmp / "results"))
        proc = cli("sweep", str(spec), cwd=tmp)
        assert proc.returncode == 0, proc.stderr[-4000:]
        _CACHE["sweep"] = (tmp, json.loads(proc.stdout), tmp / "results" / NAME)
    return _CACHE["sweep"]
