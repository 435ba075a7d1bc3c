"""What keeps a sweep's start short: spec loading and the checks before Ray starts import neither torch nor
Ray Tune, MLflow or Optuna (the sweep imports them on a thread while ``ray.init`` waits: ternsearch.run.startup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHECKS = """\
import json, sys
from pathlib import Path
from ternsearch.tracking.store import check_reachable, default_tracking_uri
from ternsearch.run.preflight import check_environment
from ternsearch.results.location import resolve_storage
from ternsearch.spec import load_spec
from ternsearch.run.sweep import check_results
spec = load_spec(sys.argv[1])
storage = resolve_storage(spec, None)
check_environment(spec, storage, None)
check_results(Path(storage) / spec.name, spec.file, False)
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


SHARED = """\
import json, sys
import ray
import ternsearch.run.sweep  # noqa: F401 - its own imports are loaded before the warm-up, as in a sweep
from ternsearch.run import startup
startup.import_all(startup.SHARED_WITH_RAY_INIT)
before = set(sys.modules)
ray.init(include_dashboard=False, logging_level="ERROR")
by_init = set(sys.modules) - before
ray.shutdown()
print(json.dumps(sorted(by_init)))
"""

WARM = """\
import json, sys
import ray
import ternsearch.run.sweep  # noqa: F401 - its own imports are loaded before the warm-up, as in a sweep
from ternsearch.run import startup
startup.import_all(startup.SHARED_WITH_RAY_INIT)
before = set(sys.modules)
startup.warm(startup.WARM_MODULES)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_warm_imports_share_no_module_with_ray_init(tmp_path):
    """The sweep imports its heavy modules on a thread while ray.init runs on the main thread; a module both
    import at once could deadlock the two (importlib's _DeadlockError). Each side is recorded in its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=300) for code in (SHARED, WARM)]
    for proc in runs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    by_init, by_warm = (set(json.loads(p.stdout.strip().splitlines()[-1])) for p in runs)
    assert by_init and by_warm
    assert by_init & by_warm == set()


LOGGING = """\
import logging
import ternsearch.run.sweep  # noqa: F401 - as in a sweep
from ternsearch.run import startup
startup.warm(startup.WARM_MODULES)
assert "mlflow.pytorch" in __import__("sys").modules  # imported through trainables.mlflow_compat
root = logging.getLogger()
print(logging.getLevelName(root.level), len(root.handlers), flush=True)
logging.getLogger("ternsearch.tracking").warning("MLflow tracking (x): store unreachable")
"""


def test_importing_mlflow_pytorch_leaves_our_warnings_audible(tmp_path):
    """MLflow's Lightning autolog module calls logging.basicConfig(level=ERROR) when mlflow.pytorch is imported,
    which silenced the sweep's tracking-outage warnings once the driver imported it early."""
    proc = subprocess.run([sys.executable, "-c", LOGGING], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["WARNING", "0"]
    assert "MLflow tracking (x): store unreachable" in proc.stderr


QUIET = """\
import warnings
from ternsearch.run.startup import quiet_libraries
quiet_libraries(verbose=False)
warnings.warn("Define-by-run function passed in the `space` argument took 1.54 seconds to run. Ensure that actual "
              "computation, training takes place inside Tune's train functions", UserWarning)
warnings.warn("a warning of our own", UserWarning)
"""


def test_a_quiet_sweep_hides_tunes_slow_space_warning(tmp_path):
    """Tune's OptunaSearch warns when the define-by-run space took over a second (Optuna's own sampling, or a busy
    machine): not the user's to fix, so a normal sweep hides it; other warnings still show."""
    proc = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Define-by-run" not in proc.stderr and "a warning of our own" in proc.stderr
