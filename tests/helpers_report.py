"""Results directories for the tests: hand-made ones (no Ray: ``write_hand_results``) and one real small sweep
shared by tests/test_report.py, tests/test_browser.py and tests/test_sweep.py (run once per session).

Trials run one at a time with a seeded random searcher, so the sequence of configs is fixed: with seed 10 the
fifth trial draws lr=100, whose conditional ``precision: fp16`` makes Adam diverge to NaN in its first epoch
(a failed trial), and ASHA (grace 1, reduction 2) stops the trials worse than the median of those before them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from ternsearch.report.data import Results
from ternsearch.results.location import spec_digest
from ternsearch.spec import Param, load_spec

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


# ---------------------------------------------------------------------------------------------- hand-made sweeps
LR = Param("lr", "loguniform", low=1e-3, high=1e-1)
AUG = Param("augment", "choice", choices=("standard", "mixup"))
ALPHA = Param("mixup_alpha", "uniform", low=0.1, high=0.5, when={"augment": ("mixup",)})
PARAMS = (LR, AUG, ALPHA)


def hand_trial(n: int, status: str, config: dict, values: list, zero: float = 0.4, layers: dict | None = None):
    """A trials.json entry and its history rows; ``values`` holds the metric per epoch (None: diverged there)."""
    tid = f"tr{n:02d}"
    rows = []
    for epoch, v in enumerate(values, 1):
        row = {"trial_id": tid, "epoch": epoch, "time": 100.0 + 10 * n + epoch}
        if v is None:
            row.update(val_acc=0.0, diverged=True, run_complete=True, train_loss=math.nan)
        else:
            row.update(val_acc=v, ternary_zero_frac=zero + 0.01 * epoch)
            for layer, (neg, zf, pos) in (layers or {}).items():
                row.update({f"ternary/{layer}/neg_frac": neg, f"ternary/{layer}/zero_frac": zf,
                            f"ternary/{layer}/pos_frac": pos, f"ternary/{layer}/scale": 0.05})
        rows.append(row)
    reason = {"stopped": f"stopped by ASHA at epoch {len(values)}", "failed": f"diverged at epoch {len(values)}"}
    last = {k: v for k, v in rows[-1].items() if "/" not in k} if rows else {}
    entry = {"trial_id": tid, "number": n, "config": config, "status": status, "reason": reason.get(status, ""),
             "epochs": len(values), "started": 100.0 + 10 * n, "ended": 105.0 + 10 * n + len(values),
             "wall_seconds": 5.0 + len(values), "last": last, "node_id": "node-a", "hostname": "vm"}
    return entry, rows


def hand_results(specs: list, params=PARAMS, mode: str = "max", path: Path = Path(".")) -> Results:
    trials, history = {}, []
    for spec in specs:
        entry, rows = hand_trial(*spec)
        trials[entry["trial_id"]] = entry
        history += rows
    meta = {"name": "hand", "metric": "val_acc", "mode": mode, "params": [p.name for p in params], "started": 100.0}
    return Results(path=path, meta=meta, trials=trials, history=history, params=tuple(params))


MIXED = [
    (0, "completed", {"lr": 0.01, "augment": "standard"}, [0.30, 0.40, 0.50], 0.40),
    (1, "stopped", {"lr": 0.002, "augment": "mixup", "mixup_alpha": 0.3}, [0.45], 0.50),
    (2, "failed", {"lr": 0.09, "augment": "standard"}, [0.20, None], 0.30),
    (3, "completed", {"lr": 0.05, "augment": "mixup", "mixup_alpha": 0.2}, [0.35, 0.42, 0.44], 0.45),
    (4, "failed", {"lr": 0.1, "augment": "mixup", "mixup_alpha": 0.4}, [None], 0.30),
]


def write_hand_results(path: Path, specs: list, params=PARAMS) -> Path:
    """A results directory (sweep.json, trials.json, history.jsonl) of the hand-made trials ``specs``."""
    res = hand_results(specs, params=params)
    path.mkdir(parents=True, exist_ok=True)
    (path / "sweep.json").write_text(json.dumps(res.meta))
    (path / "trials.json").write_text(json.dumps(res.trials))
    (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res.history))
    return path


# The spec of the hand-made sweep ``write_hand_sweep`` writes (tests/test_outputs.py, tests/bad_commands.py).
HAND_SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64, optimizer: adam}}
search:
  lr: {{loguniform: [1.0e-3, 1.0e-1]}}
  augment: {{choice: [standard, mixup]}}
  mixup_alpha: {{uniform: [0.1, 0.5], when: {{augment: [mixup]}}}}
searcher: {{algorithm: random, num_samples: 5, seed: 0}}
storage: {{path: {storage}}}
"""


def write_hand_sweep(work: Path, name: str, **meta) -> tuple[Path, Path]:
    """``(spec file, results dir)`` of a finished sweep made by hand under ``work`` (no Ray): ``specs/NAME.yaml``
    and ``results/NAME`` with the hand-made trials MIXED, a sweep.json that names the spec (digest, base config)
    plus ``meta``, and the spec's copy."""
    spec = work / "specs" / f"{name}.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(HAND_SPEC.format(name=name, storage=work / "results"))
    results = write_hand_results(work / "results" / name, MIXED)
    record = json.loads((results / "sweep.json").read_text())
    record.update(name=name, spec_file=str(spec.resolve()), spec_sha256=spec_digest(spec),
                  base=load_spec(spec).base_config().model_dump(mode="json"), **meta)
    (results / "sweep.json").write_text(json.dumps(record, indent=1))
    (results / "spec.yaml").write_bytes(spec.read_bytes())
    return spec, results
