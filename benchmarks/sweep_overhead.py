"""Where a short sweep's wall time goes: how much of it is NOT training epochs.

Runs N short trials (default 6 trials x 2 epochs, tinynet, subset 2000, FIFO, random search) through
``ternsearch sweep`` as a CLI subprocess with tracking on (the default SQLite MLflow store), and splits its
wall time with the stamps the sweep leaves behind:

- the CLI's own stderr, each line time-stamped as it arrives (the plan is printed right after ``ray.init``;
  Optuna logs when the searcher is built, Tune prints a banner when ``fit()`` starts);
- ``sweep.json`` ``started`` (the Tuner is about to be built) and the files' modification times
  (``best.yaml`` is written when Tune has returned, before the best model is logged to MLflow;
  ``trials.csv`` and ``report.html`` bracket the HTML report);
- ``trials.json`` ``started``/``ended`` per trial (the driver's Tune callback) and ``history.jsonl``
  (``run_entered_unix``, ``first_step_unix``, ``epoch_seconds`` and the driver's receipt ``time`` per epoch).

Training = sum of ``epoch_seconds`` (train pass + validation of every epoch) / trials at once. Everything else
is the platform's overhead. A bare ``ray.init()`` is timed first in its own process for reference.

    TERNSEARCH_DATA=/path/to/data python benchmarks/sweep_overhead.py
    python benchmarks/sweep_overhead.py --trials 4 --epochs 3 --subset 4000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: {subset}, val_fraction: 0.1}}
model: {{arch: {arch}}}
train: {{epochs: {epochs}, batch_size: 128}}
search:
  lr: {{loguniform: [0.01, 0.3]}}
searcher: {{algorithm: random, seed: 0, num_samples: {trials}}}
scheduler: {{algorithm: fifo}}
resources: {{workers_per_trial: 1, cpus_per_worker: {cpus}}}
storage: {{path: {storage}}}
"""

RAY_INIT = """\
import time; t0 = time.perf_counter()
import ray; t1 = time.perf_counter()
ray.init(num_cpus={cpus}, include_dashboard={dashboard}, dashboard_host="127.0.0.1", logging_level="WARNING")
t2 = time.perf_counter(); ray.shutdown(); t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}


def bare_ray_init(cpus: int, dashboard: bool = True) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", RAY_INIT.format(cpus=cpus, dashboard=dashboard)], env=_env(),
                         text=True, capture_output=True, check=True).stdout.split()
    return tuple(float(x) for x in out[-3:])  # type: ignore[return-value]


def run_cli(args: list[str], cwd: Path) -> tuple[float, float, float, list[tuple[float, str]],
                                                 list[tuple[float, str]]]:
    """Run the CLI; return (start, process exit, pipes closed, time-stamped stderr lines, stdout lines).

    Ray's daemons inherit the CLI's stdout/stderr, so the pipes may close well after the process exits.
    """
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
    err: list[tuple[float, str]] = []
    out: list[tuple[float, str]] = []

    def read(stream, into: list) -> None:
        for line in stream:
            into.append((time.time(), line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(proc.stderr, err), daemon=True),
               threading.Thread(target=read, args=(proc.stdout, out), daemon=True)]
    for r in readers:
        r.start()
    proc.wait()
    end = time.time()
    for r in readers:
        r.join(timeout=120)
    closed = time.time()
    if proc.returncode != 0:
        sys.exit(f"ternsearch {' '.join(args)} failed:\n" + "\n".join(x for _, x in err[-60:]))
    return start, end, closed, err, out


def _first(lines: list[tuple[float, str]], prefix: str) -> float:
    return next(t for t, x in lines if x.startswith(prefix))


def _maybe(lines: list[tuple[float, str]], text: str) -> float | None:
    return next((t for t, x in lines if text in x), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--arch", default="tinynet")
    ap.add_argument("--cpus-per-trial", type=int, default=1)
    ap.add_argument("--skip-ray-init", action="store_true", help="skip the bare ray.init() timing")
    a = ap.parse_args()
    if not os.environ.get("TERNSEARCH_DATA"):
        sys.exit("set TERNSEARCH_DATA to the folder holding cifar-10-batches-bin/")
    cpus = os.cpu_count() or 1
    print(f"machine: {cpus} CPUs; {load()}")
    if not a.skip_ray_init:
        # Alternated, 3 of each: the sweep starts a local Ray without its dashboard when no trial uses Ray Train.
        runs: dict[bool, list] = {True: [], False: []}
        for _ in range(3):
            for dashboard in (True, False):
                runs[dashboard].append(bare_ray_init(cpus, dashboard))
        for dashboard in (True, False):
            imp, init, down = (statistics.median(r[i] for r in runs[dashboard]) for i in range(3))
            print(f"bare ray.init() in a fresh process, dashboard {'on ' if dashboard else 'off'} (median of 3): "
                  f"import ray {imp:.2f} s, init {init:.2f} s, shutdown {down:.2f} s  ({load()})")
    with tempfile.TemporaryDirectory(prefix="ternsearch-bench-") as d:
        tmp = Path(d)
        name = "overhead"
        spec = tmp / f"{name}.yaml"
        spec.write_text(SPEC.format(name=name, subset=a.subset, arch=a.arch, epochs=a.epochs, trials=a.trials,
                                    cpus=a.cpus_per_trial, storage=tmp / "results"))
        load_before = load()
        t_start, t_end, t_closed, lines, stdout = run_cli(["sweep", str(spec), "-q"], tmp)
        load_after = load()
        res = tmp / "results" / name
        summary = json.loads("\n".join(x for _, x in stdout))
        t_summary = stdout[0][0]  # the summary JSON is the CLI's only stdout, printed as its last act
        meta = json.loads((res / "sweep.json").read_text())
        trials = list(json.loads((res / "trials.json").read_text()).values())
        history = [json.loads(x) for x in (res / "history.jsonl").read_text().splitlines() if x.strip()]
        plan_line = next(x for _, x in lines if "at once" in x)
        conc = int(plan_line.split("up to ")[1].split()[0])

        t_plan = _first(lines, f"sweep '{name}'")
        t_meta = meta["started"]
        t_first_trial = min(t["started"] for t in trials)
        t_last_end = max(t["ended"] for t in trials)
        t_best_yaml = (res / "best.yaml").stat().st_mtime
        t_report0 = (res / "trials.csv").stat().st_mtime if (res / "trials.csv").exists() else t_best_yaml
        t_report1 = (res / "report.html").stat().st_mtime if (res / "report.html").exists() else t_report0
        t_best_line = _first(lines, "best trial ")
        wall = t_end - t_start

        per_trial = {t["trial_id"]: t for t in trials}
        start_to_loop = start_to_first = between = epochs_s = 0.0
        for tid, t in per_trial.items():
            rows = sorted((r for r in history if r["trial_id"] == tid), key=lambda r: r["epoch"])
            ep = sum(r["epoch_seconds"] for r in rows)
            to_loop = rows[0]["run_entered_unix"] - t["started"]
            to_first = rows[0]["first_step_unix"] - t["started"]
            start_to_loop += to_loop
            start_to_first += to_first
            epochs_s += ep
            between += (t["ended"] - t["started"]) - to_first - ep
        slot_seconds = conc * (t_last_end - t_first_trial)
        busy = sum(t["ended"] - t["started"] for t in trials)
        train = epochs_s / conc

        def row(label: str, seconds: float) -> None:
            print(f"  {label:<70} {seconds:7.1f} s {seconds / wall:6.1%}")

        n_epochs = len(history)
        print(f"ternsearch sweep: {len(trials)} trials x {a.epochs} epochs ({n_epochs} epoch results), {a.arch}, "
              f"subset {a.subset}, {conc} trials at once x {a.cpus_per_trial} CPU, tracking on "
              f"({meta['tracking_uri'].split(':')[0]}), statuses {summary['statuses']}")
        print(f"wall {wall:.1f} s  (load before {load_before.split()[1]}, after {load_after.split()[1]})")
        row("CLI start -> plan printed (imports, checks, ray.init)", t_plan - t_start)
        row("plan -> sweep.json (plan checks)", t_meta - t_plan)
        row("sweep.json -> first trial started (MLflow parent run, Tuner, Tune)", t_first_trial - t_meta)
        t_study = _maybe(lines, "A new study created")  # Optuna's log line: the searcher is being built
        t_banner = _maybe(lines, "Configuration for experiment")  # Tune's banner: fit() has started
        if t_study and t_banner and t_meta <= t_study <= t_banner <= t_first_trial:
            row("  sweep.json -> searcher built (MLflow parent run, imports)", t_study - t_meta)
            row("  searcher built -> Tune's banner (Tuner, fit() starts)", t_banner - t_study)
            row("  Tune's banner -> first trial started (placement, trial actor)", t_first_trial - t_banner)
        row(f"trials phase (first trial start -> last trial end), {conc} slots:", t_last_end - t_first_trial)
        row(f"  training epochs (sum epoch_seconds {epochs_s:.1f} s / {conc})", train)
        row("  trial start -> loop entered (worker, imports, config)", start_to_loop / conc)
        row("  loop entered -> first step (CIFAR-10 read + split, model, optimizer)",
            (start_to_first - start_to_loop) / conc)
        row("  after the first step, outside epochs (checkpoints, reports, exit)", between / conc)
        row("  idle slots (waiting for a trial to be scheduled, tail)", (slot_seconds - busy) / conc)
        row("last trial end -> best.yaml (Tune wrap-up, fit() returns)", t_best_yaml - t_last_end)
        row("best.yaml -> report started (best model logged to MLflow)", t_report0 - t_best_yaml)
        row("report (trials.csv -> report.html)", t_report1 - t_report0)
        row("report -> summary printed", t_summary - t_report1)
        row("summary printed -> process exit (interpreter shutdown: Ray, MLflow)", t_end - t_summary)
        print(f"  (the 'best trial' line came {t_best_line - t_report1:.1f} s after report.html; the CLI's "
              f"stdout/stderr pipes, inherited by Ray's daemons, closed {t_closed - t_end:.1f} s after it exited)")
        print(f"per trial: start -> first step {start_to_first / len(trials):.2f} s on average, "
              f"{n_epochs and epochs_s / n_epochs:.2f} s per epoch")
        print(f"NOT in training epochs: {1 - train / wall:.1%} of the sweep's wall time "
              f"(training {train:.1f} s of {wall:.1f} s)  ({load_after})")


if __name__ == "__main__":
    main()
