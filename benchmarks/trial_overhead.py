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
import statistics
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
    tmp.mkdir(parents=True, exist_ok=True)
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
    ap.add_argument("--wall-epochs", type=int, default=7, help="epochs of the wall-ratio run (aim at ~60 s)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each kind, alternated; medians are printed (every run is listed)")
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
            kinds = (("function", 1, "function"), ("torchtrainer1", 1, "torchtrainer"),
                     ("torchtrainer2", 2, "torchtrainer"))
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in kinds}
            for i in range(a.repeat):
                for name, workers, trainer in kinds:
                    runs[name].append(_startup(tmp / f"{name}-{i}", name, workers, trainer, a.subset))
            for name, workers, _ in kinds:
                rs = runs[name]
                first = statistics.median(r["start_to_first_step"] for r in rs)
                loop = statistics.median(r["start_to_loop"] for r in rs)
                wall = statistics.median(r["sweep_wall"] for r in rs)
                each = ", ".join(f"{r['start_to_first_step']:.2f}" for r in rs)
                print(f"  {name:<14} {workers} worker(s): {first:6.2f} s to first step ({loop:.2f} s to enter the "
                      f"loop); whole CLI run {wall:.1f} s  [runs: {each}]")
        if not a.skip_wall:
            sweeps, trains, epochs, ratios = [], [], [], []
            for i in range(a.repeat):  # alternated, so drifts in the machine's speed hit both alike
                name, run = "wall", tmp / f"wall-{i}"
                run.mkdir()
                (run / "sweep.yaml").write_text(SPEC.format(
                    name=name, subset=a.wall_subset, epochs=a.wall_epochs, workers=1, cpus=os.cpu_count() or 1,
                    trainer="function", storage=run / "results"))
                (run / "train.yaml").write_text(TRAIN.format(name=name, subset=a.wall_subset, epochs=a.wall_epochs,
                                                             out=run / "train-out"))
                sweep_wall, _ = _cli("sweep", str(run / "sweep.yaml"), "-q", cwd=run)
                train_wall, _ = _cli("train", str(run / "train.yaml"), "-q", cwd=run)
                hist = [json.loads(x) for x in (run / "results" / name / "history.jsonl").read_text().splitlines()]
                sweeps.append(sweep_wall)
                trains.append(train_wall)
                epochs.append(sum(h["epoch_seconds"] for h in hist))
                ratios.append(sweep_wall / train_wall)
            med = statistics.median
            print(f"wall, {a.wall_epochs} epochs x {int(a.wall_subset * 0.9)} images, {os.cpu_count()} threads, "
                  f"median of {a.repeat} alternated runs:")
            print(f"  ternsearch sweep (1 trial): {med(sweeps):6.1f} s (of which epochs {med(epochs):.1f} s)  "
                  f"[runs: {', '.join(f'{x:.1f}' for x in sweeps)}]")
            print(f"  ternsearch train          : {med(trains):6.1f} s  "
                  f"[runs: {', '.join(f'{x:.1f}' for x in trains)}]")
            print(f"  ratio sweep/train         : {med(ratios):6.3f}  (target <= 1.10)  "
                  f"[runs: {', '.join(f'{x:.3f}' for x in ratios)}]")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
