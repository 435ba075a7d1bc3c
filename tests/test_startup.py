"""What keeps a sweep's start short: spec loading and the checks before Ray starts import neither torch nor
Ray Tune, MLflow or Optuna (the sweep imports them on a thread while ``ray.init`` waits; see ternsearch.sweep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHECKS = """\
import json, sys
from pathlib import Path
from ternsearch.mlflow_io import check_reachable, default_tracking_uri
from ternsearch.preflight import check_environment, resolve_storage
from ternsearch.spec import load_spec
from ternsearch.sweep import _check_results
spec = load_spec(sys.argv[1])
storage = resolve_storage(spec, None)
check_environment(spec, storage, None)
_check_results(Path(storage) / spec.name, spec.file, False)
check_reachable(default_tracking_uri(Path(storage) / spec.name, None))
print(json.dumps([m for m in ("torch", "ray.tune", "mlflow", "optuna") if m in sys.modules]))
"""


def test_spec_and_preflight_checks_import_neither_torch_nor_tune(tmp_path, data_root):
    spec = tmp_path / "s.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: s
        metric: {{name: val_acc, mode: max}}
        data: {{subset: 600}}
        model: {{arch: resnet20}}
        search:
          lr: {{loguniform: [0.01, 0.1]}}
        storage: {{path: {tmp_path / 'results'}}}
        """))
    proc = subprocess.run([sys.executable, "-c", CHECKS, str(spec)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "TERNSEARCH_DATA": str(data_root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "results").exists()  # the checks write nothing
