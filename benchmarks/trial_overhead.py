"""Platform overhead of a trial: trial start -> first training step, and sweep vs plain-train wall time.

1. Start-up: one 1-epoch trial per way of running it (function mode, a 1-worker TorchTrainer, a 2-worker
   DDP TorchTrainer). "Trial start" is when the driver's Tune callback saw the trial start (trials.json);
   "first step" is the loop's own stamp of its first batch (history.jsonl). Ray's start-up (ray.init) is
   reported separately.
2. Wall ratio: the same config as one `ternsearch sweep` trial (1 trial, function mode, 2 CPUs) and as
   `ternsearch train`, both as CLI subprocesses timed end to end (imports, Ray, MLflow, test evaluation
   for train). Target: <= 1.10 for a trial of about 60 s.

    TERNSEARCH_DATA=/path/to/data python benchmarks/trial_overhead.py
    python benchmarks/trial_overhead.py --skip-wall          # start-up figures only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: {subset}, val_fraction: 0.1}}
model: {{arch: tinynet}}
train: {{epochs: {epochs}, batch_size: 128, lr: 0.05}}
search:
  weight_decay: {{choice: [0.0005]}}
searcher: {{num_samples: 1, seed: 0}}
scheduler: {{algorithm: fifo}}
resources: {{workers_per_trial: {workers}, cpus_per_worker: {cpus}, trainer: {trainer}}}
storage: {{path: {storage}}}
"""

TRAIN = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: {subset}, val_fraction: 0.1}}
model: {{arch: tinynet}}
train: {{epochs: {epochs}, batch_size: 128, lr: 0.05, weight_decay: 0.0005}}
output: {out}
"""


def _cli(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc


def _startup(tmp: Path, name: str, workers: int, trainer: str, subset: int) -> dict:
    spec = tmp / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, subset=subset, epochs=1, workers=workers, cpus=1, trainer=trainer,
                                storage=tmp / "results"))
    wall, _ = _cli("sweep", str(spec), "-q", cwd=tmp)
    results = tmp / "results" / name
    (trial,) = json.loads((results / "trials.json").read_text()).values()
    first = json.loads((results / "history.jsonl").read_text().splitlines()[0])
    return {"start_to_first_step": first["first_step_unix"] - trial["started"],
            "start_to_loop": first["run_entered_unix"] - trial["started"], "sweep_wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=2000, help="images for the start-up trials")
    ap.add_argument("--wall-subset", type=int, default=10000, help="images for the wall-ratio run")
    ap.add_argument("--wall-epochs", type=int, default=5, help="epochs of the wall-ratio run (aim at ~60 s)")
    ap.add_argument("--skip-wall", action="store_true")
    ap.add_argument("--skip-startup", action="store_true")
    a = ap.parse_args()
    if not os.environ.get("TERNSEARCH_DATA"):
        sys.exit("set TERNSEARCH_DATA to the folder holding cifar-10-batches-bin/")
    print(f"machine: {os.cpu_count()} CPUs; torch threads per trial = cpus_per_worker; "
          f"load average {os.getloadavg()[0]:.2f} (other processes on the machine inflate every figure)")
    with tempfile.TemporaryDirectory(prefix="ternsearch-bench-") as d:
        tmp = Path(d)
        if not a.skip_startup:
            print("trial start -> first training step (1-epoch trial, tinynet):")
            for name, workers, trainer in (("function", 1, "function"), ("torchtrainer1", 1, "torchtrainer"),
                                           ("torchtrainer2", 2, "torchtrainer")):
                r = _startup(tmp, name, workers, trainer, a.subset)
                print(f"  {name:<14} {workers} worker(s): {r['start_to_first_step']:6.2f} s to first step "
                      f"({r['start_to_loop']:.2f} s to enter the loop); whole CLI run {r['sweep_wall']:.1f} s")
        if not a.skip_wall:
            name = "wall"
            (tmp / "sweep.yaml").write_text(SPEC.format(
                name=name, subset=a.wall_subset, epochs=a.wall_epochs, workers=1, cpus=os.cpu_count() or 1,
                trainer="function", storage=tmp / "results"))
            (tmp / "train.yaml").write_text(TRAIN.format(name=name, subset=a.wall_subset, epochs=a.wall_epochs,
                                                         out=tmp / "train-out"))
            sweep_wall, _ = _cli("sweep", str(tmp / "sweep.yaml"), "-q", cwd=tmp)
            train_wall, _ = _cli("train", str(tmp / "train.yaml"), "-q", cwd=tmp)
            hist = [json.loads(x) for x in (tmp / "results" / name / "history.jsonl").read_text().splitlines()]
            train_s = sum(h["epoch_seconds"] for h in hist)
            print(f"wall, {a.wall_epochs} epochs x {int(a.wall_subset * 0.9)} images, {os.cpu_count()} threads:")
            print(f"  ternsearch sweep (1 trial): {sweep_wall:6.1f} s (of which epochs {train_s:.1f} s)")
            print(f"  ternsearch train          : {train_wall:6.1f} s")
            print(f"  ratio sweep/train         : {sweep_wall / train_wall:6.3f}  (target <= 1.10)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
