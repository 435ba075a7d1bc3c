"""The shipped CPU sweep, timed: `ternsearch sweep search_spaces/cifar10-cpu.yaml` as a user runs it (its results
in a temporary folder), then its wall time against the 15-minute budget and its best val_acc against the median
trial's (each trial's last reported val_acc: ASHA-stopped trials count with the value they were stopped at).

    TERNSEARCH_DATA=/path/to/data python benchmarks/cpu_sweep.py [--spec search_spaces/cifar10-cpu.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "search_spaces" / "cifar10-cpu.yaml"))
    ap.add_argument("--budget-min", type=float, default=15.0)
    a = ap.parse_args()
    start_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ternsearch-cpu-sweep-") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        if env.get("TERNSEARCH_DATA"):  # relative to where this was started, not to the sweep's folder
            env["TERNSEARCH_DATA"] = os.path.abspath(env["TERNSEARCH_DATA"])
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", a.spec, "--storage", tmp, "-q"],
                              cwd=tmp, env=env, text=True, capture_output=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        summary = json.loads(proc.stdout)
        trials = json.loads((Path(summary["results"]) / "trials.json").read_text())
    finals = sorted(t["last"]["val_acc"] for t in trials.values() if "val_acc" in t.get("last", {}))
    median = statistics.median(finals)
    statuses = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items() if n)
    print(f"{Path(a.spec).name}: {summary['trials']} trials ({statuses}) in {wall / 60:.1f} min "
          f"(budget {a.budget_min:g} min: {'met' if wall <= a.budget_min * 60 else 'MISSED'}); "
          f"load average {start_load:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"best val_acc {summary['best_value']:.4f} (trial {summary['best_trial']}), median trial {median:.4f}, "
          f"worst {finals[0]:.4f}: best {'beats' if summary['best_value'] > median else 'DOES NOT beat'} the median")
    print("best config: " + json.dumps(summary["best_config"], sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
