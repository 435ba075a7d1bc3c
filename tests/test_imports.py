"""``ternsearch validate`` and ``ternsearch train`` run without Ray Tune and Ray Train: neither command imports them,
a train run recorded in MLflow included (``ternsearch.tracking.train_runs`` reads the run's records and a trial's
bookkeeping keys from the Ray-free ``ternsearch.results.files`` and ``ternsearch.results.trials``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = """\
import json, sys
from ternsearch.cli import main
codes = []
for argv in (["validate", sys.argv[1]], ["validate", sys.argv[2]], ["train", sys.argv[2], "-q", "-o", sys.argv[3]]):
    try:
        codes.append(main(argv))
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "loaded": [m for m in ("ray.tune", "ray.train") if m in sys.modules]}))
"""


@pytest.mark.slow  # one tinynet epoch on 200 images plus the test set: 20-40 s on the shared 2 cores
def test_validate_and_train_import_neither_ray_tune_nor_ray_train(tmp_path, data_root):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: s
        metric: {{name: val_acc, mode: max}}
        data: {{subset: 200}}
        model: {{arch: tinynet}}
        search:
          lr: {{loguniform: [0.01, 0.1]}}
        storage: {{path: {tmp_path / 'results'}}}
        """))
    run = tmp_path / "run.yaml"
    run.write_text(textwrap.dedent(f"""\
        name: imports
        data: {{subset: 200, val_fraction: 0.2}}
        model: {{arch: tinynet}}
        train: {{epochs: 1, batch_size: 64, threads: 2}}
        tracking: {{uri: "sqlite:///{tmp_path / 'mlflow.db'}"}}
        """))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(spec), str(run), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**env, "TERNSEARCH_DATA": str(data_root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["codes"] == [0, 0, 0], proc.stderr[-3000:]
    assert '"mlflow_run_id"' in proc.stdout  # the run was recorded in MLflow
    assert found["loaded"] == []
