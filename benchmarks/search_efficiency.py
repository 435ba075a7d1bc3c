"""Search efficiency: ASHA + TPE against random search without early stopping, in epochs to the same result.

On the real CIFAR-10 subset with tinynet, two sweeps per seed run through ``ternsearch sweep`` (CLI
subprocesses, specs written to a temp dir), with the same number of trials and the same searcher seed:

  (a) TPE + ASHA (grace period 1, reduction factor 3: rungs at 1, 3, 9, ... epochs below --epochs);
  (b) random search + FIFO: every trial runs the full --epochs.

Searched: lr loguniform [0.005, 0.5], weight_decay loguniform [1e-5, 1e-3], ternary_lr_ratio loguniform
[0.1, 2], label_smoothing uniform [0, 0.2]. Printed per seed: the best val_acc each found (the highest
val_acc of any epoch of any trial), the epochs each consumed (rows of history.jsonl; a restarted trial's
replayed epoch is not counted), and the epochs ASHA+TPE needed to reach random search's best, walking its
history in the order the results arrived. Target: <= 1/3 of random search's epochs.

Then Tune's own bookkeeping rate: results per second handled for a trivial function trainable (200 trials x
20 ``tune.report`` each, 1 CPU each, actors reused), next to Ray's published figure.

Defaults finish in about 10 minutes on 2 idle cores; tracking (MLflow) is off unless --tracking.

    TERNSEARCH_DATA=/path/to/data python benchmarks/search_efficiency.py
    python benchmarks/search_efficiency.py --trials 24 --epochs 9 --subset 10000 --seeds 0 1 2 --plot eff.html
    python benchmarks/search_efficiency.py --skip-sweeps            # Tune's bookkeeping rate only

With ``--shipped`` the sweeps are the replay table's instead (benchmarks/data/curves-cpu.yaml: the shipped CPU
space, 8 epochs, a 7,000-image subset with 2,100 validation images) on another subset (``--split-seed``, 1 by
default; the table's is 0): random search + FIFO with --trials trials against TPE + ASHA (--grace, --reduction;
the searcher's settings are the spec's defaults) with 3x the trials, as the replayed comparison runs them. This is
the real-training check of the defaults chosen on the replay (issue 19).

    python benchmarks/search_efficiency.py --shipped --seeds 1 2 --skip-bookkeeping

With ``--replay TABLE`` it compares searchers and schedulers on replayed learning curves instead (>= 20 seeds per
method in minutes, no training): see benchmarks/replay_efficiency.py, which takes the rest of the arguments.

    python benchmarks/search_efficiency.py --replay benchmarks/data/curves-cpu.csv --seeds 20 --plot eff.png
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
TABLE_SPEC = REPO / "benchmarks" / "data" / "curves-cpu.yaml"
SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: {subset}, val_fraction: 0.1}}
model: {{arch: tinynet, quantizer: twn}}
train: {{epochs: {epochs}, batch_size: 128, optimizer: sgd, momentum: 0.9, augment: standard}}
search:
  lr: {{loguniform: [0.005, 0.5]}}
  weight_decay: {{loguniform: [1.0e-5, 1.0e-3]}}
  ternary_lr_ratio: {{loguniform: [0.1, 2.0]}}
  label_smoothing: {{uniform: [0.0, 0.2]}}
searcher: {{algorithm: {searcher}, seed: {seed}, num_samples: {trials}}}
scheduler: {scheduler}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
storage: {{path: {storage}}}
tracking: {{enabled: {tracking}}}
"""

# Ray Tune's scalability page (docs.ray.io/en/latest/tune/tutorials/tune-scalability.html), "bookkeeping":
RAY_PUBLISHED = ("Ray's published figure: 10,000 one-second trials (1 result each) on 1 node with 16 CPUs in "
                 "715.27 s (625 s minimum) = 14.0 trials/s, 14% over the minimum")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def shipped_spec(name: str, a: argparse.Namespace, seed: int, asha: bool, storage: Path) -> str:
    """The replay table's sweep on subset ``a.split_seed`` (``--shipped``)."""
    import yaml  # a plain YAML file; the sweep's own loader checks what is written from it

    doc = yaml.safe_load(TABLE_SPEC.read_text())
    doc.update(name=name, data=dict(doc["data"], split_seed=a.split_seed), storage={"path": str(storage)},
               tracking={"enabled": a.tracking}, resources=dict(doc["resources"], use_gpu=False))
    if a.epochs_given:
        doc["train"] = dict(doc["train"], epochs=a.epochs)
    if asha:  # the searcher's other settings are the spec's defaults
        doc["searcher"] = {"algorithm": "tpe", "seed": seed, "num_samples": 3 * a.trials, "max_concurrent_trials": 2}
        doc["scheduler"] = {"algorithm": "asha", "grace_period": a.grace, "reduction_factor": a.reduction}
    else:
        doc["searcher"] = {"algorithm": "random", "seed": seed, "num_samples": a.trials, "max_concurrent_trials": 2}
        doc["scheduler"] = {"algorithm": "fifo"}
    return yaml.safe_dump(doc, sort_keys=False)


def run_sweep(tmp: Path, name: str, a: argparse.Namespace, seed: int, asha: bool) -> dict:
    scheduler = (f"{{algorithm: asha, grace_period: {a.grace}, reduction_factor: {a.reduction}}}" if asha
                 else "{algorithm: fifo}")
    spec = tmp / f"{name}.yaml"
    spec.write_text(shipped_spec(name, a, seed, asha, tmp / "results") if a.shipped else
                    SPEC.format(name=name, subset=a.subset, epochs=a.epochs, searcher="tpe" if asha else "random",
                                seed=seed, trials=a.trials, scheduler=scheduler, storage=tmp / "results",
                                tracking=str(a.tracking).lower()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), "-q"], cwd=tmp, env=env,
                          text=True, capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep {name} failed:\n{proc.stderr[-3000:]}")
    res = tmp / "results" / name
    rows = [json.loads(x) for x in (res / "history.jsonl").read_text().splitlines() if x.strip()]
    rows = sorted((r for r in rows if not r.get("replayed")), key=lambda r: r["time"])
    trials = json.loads((res / "trials.json").read_text())
    return {"rows": rows, "trials": trials, "wall": wall, "load": load(), "summary": json.loads(proc.stdout)}


def best_so_far(rows: list[dict]) -> list[float]:
    out, best = [], float("-inf")
    for r in rows:
        best = max(best, float(r.get("val_acc", float("-inf"))))
        out.append(best)
    return out


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= target - 1e-12), None)


def describe(label: str, run: dict) -> str:
    rows = run["rows"]
    best = max(rows, key=lambda r: r["val_acc"])
    statuses = {}
    for t in run["trials"].values():
        statuses[t["status"]] = statuses.get(t["status"], 0) + 1
    return (f"  {label:<12} best val_acc {best['val_acc']:.4f} (trial {best['trial_id']}, epoch {best['epoch']}), "
            f"{len(rows)} epochs, {len(run['trials'])} trials {statuses}, wall {run['wall']:.0f} s  ({run['load']})")


def bookkeeping(a: argparse.Namespace) -> None:
    """Results per second that Tune handles for a trivial function trainable."""
    import contextlib

    import ray
    from ray import tune

    def trivial(config):
        for i in range(config["reports"]):
            tune.report({"i": i, "score": config["x"] * i})

    class Arrivals(tune.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.times.append(time.perf_counter())

    arrivals = Arrivals()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="ternsearch-bench-tune-") as d:
            tuner = tune.Tuner(
                # A whole CPU per trial, as a sweep's trials take: with a fraction (0.01 was tried) Tune could start
                # a new actor for a trial before the finished one was free to be reused, and in about one run of
                # three every one of the 200 trials got a new worker process (the raylet's log shows ~200 of
                # them), which ran 15x slower on this 2-core machine.
                tune.with_resources(trivial, {"cpu": 1}),
                param_space={"x": tune.uniform(0, 1), "reports": a.bk_reports},
                tune_config=tune.TuneConfig(num_samples=a.bk_trials, max_concurrent_trials=a.bk_concurrent,
                                            reuse_actors=True),
                run_config=tune.RunConfig(name="bookkeeping", storage_path=d, verbose=0, callbacks=[arrivals]),
            )
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # Tune's banner
                results = tuner.fit()
            wall = time.perf_counter() - t0
        n = sum(int(r.metrics.get("training_iteration", 0)) for r in results)
        times = arrivals.times
        steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        print(f"Tune bookkeeping: {a.bk_trials} trivial trials x {a.bk_reports} reports, 1 CPU each, "
              f"{a.bk_concurrent} at once, actors reused, default loggers: {n} results in {wall:.1f} s of fit() = "
              f"{n / wall:.0f} results/s, {a.bk_trials / wall:.1f} trials/s; first to last result "
              f"{times[-1] - times[0]:.1f} s = {steady:.0f} results/s  ({load()})")
        print(f"  {RAY_PUBLISHED}.")
        print("  A sweep here reports once per epoch per trial (seconds apart), far below either rate.")
    finally:
        ray.shutdown()


def plot(path: str, curves: list[tuple[str, list[float]]]) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, curve in curves:
        fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines", name=label,
                                 line={"shape": "hv"}))
    fig.update_layout(title="Best val_acc so far vs epochs consumed", xaxis_title="epochs consumed (all trials)",
                      yaxis_title="best val_acc so far", template="plotly_white")
    if path.endswith(".png"):  # kaleido (pip install kaleido) drives a local Chrome/Chromium to render it
        fig.write_image(path, width=900, height=500)
    else:
        fig.write_html(path, include_plotlyjs=True)  # self-contained: opens offline
    print(f"plot: {path}")


def main() -> None:
    if any(arg == "--replay" or arg.startswith("--replay=") for arg in sys.argv[1:]):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from replay_efficiency import main as replay_main  # the replayed comparison has its own arguments

        sys.exit(replay_main(sys.argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=None,
                    help="max epochs per trial (every random trial runs them); default 6, the table's with --shipped")
    ap.add_argument("--subset", type=int, default=4000, help="images before the 10%% validation split")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="searcher seeds (one pair of sweeps each)")
    ap.add_argument("--grace", type=int, default=1, help="ASHA grace period (epochs)")
    ap.add_argument("--reduction", type=float, default=3.0, help="ASHA reduction factor")
    ap.add_argument("--tracking", action="store_true", help="keep MLflow tracking on (slower)")
    ap.add_argument("--shipped", action="store_true", help="the replay table's sweep (its space, on another subset)")
    ap.add_argument("--split-seed", type=int, default=1, help="with --shipped: the subset's seed (the table's is 0)")
    ap.add_argument("--plot", metavar="PATH", help="write best-so-far val_acc vs epochs: a plotly HTML, or a PNG "
                    "when PATH ends in .png (needs kaleido and Chrome/Chromium)")
    ap.add_argument("--bk-trials", type=int, default=200)
    ap.add_argument("--bk-reports", type=int, default=20)
    ap.add_argument("--bk-concurrent", type=int, default=2, help="trivial trials at once (each is a process)")
    ap.add_argument("--skip-sweeps", action="store_true")
    ap.add_argument("--skip-bookkeeping", action="store_true")
    a = ap.parse_args()
    a.epochs_given = a.epochs is not None
    a.epochs = a.epochs or 6
    print(f"machine: {os.cpu_count()} CPUs; {load()}")
    curves: list[tuple[str, list[float]]] = []
    ratios: list[float] = []
    if not a.skip_sweeps:
        if not os.environ.get("TERNSEARCH_DATA"):
            sys.exit("set TERNSEARCH_DATA to the folder holding cifar-10-batches-bin/")
        if a.shipped:
            print(f"{TABLE_SPEC.name} on split_seed {a.split_seed}: random + FIFO {a.trials} trials, TPE + ASHA "
                  f"{3 * a.trials} trials (grace {a.grace}, reduction {a.reduction:g}, the spec's TPE defaults)")
        else:
            print(f"{a.trials} trials x up to {a.epochs} epochs, tinynet (twn), CIFAR-10 subset {a.subset} "
                  f"({a.subset - round(0.1 * a.subset)} train / {round(0.1 * a.subset)} val), 1 CPU per trial; "
                  f"ASHA grace {a.grace}, reduction {a.reduction:g}")
        for seed in a.seeds:
            with tempfile.TemporaryDirectory(prefix="ternsearch-bench-eff-") as d:
                tmp = Path(d)
                asha = run_sweep(tmp, f"asha-tpe-{seed}", a, seed, asha=True)
                rand = run_sweep(tmp, f"random-fifo-{seed}", a, seed, asha=False)
            ca, cr = best_so_far(asha["rows"]), best_so_far(rand["rows"])
            curves += [(f"ASHA+TPE seed {seed}", ca), (f"random+FIFO seed {seed}", cr)]
            print(f"seed {seed}:")
            print(describe("ASHA+TPE", asha))
            print(describe("random+FIFO", rand))
            target = cr[-1]
            need = epochs_to_reach(ca, target)
            if need is None:
                print(f"  ASHA+TPE did NOT reach random's best {target:.4f} in its {len(ca)} epochs "
                      f"(its best {ca[-1]:.4f}, {ca[-1] - target:+.4f}); it used {len(ca) / len(cr):.2f} of "
                      f"random's {len(cr)} epochs")
                ratios.append(float("inf"))
            else:
                ratios.append(need / len(cr))
                print(f"  ASHA+TPE reached random's best {target:.4f} after {need} epochs = {need / len(cr):.3f} "
                      f"of random's {len(cr)} (target <= 0.333)")
            third = ca[min(len(ca), len(cr) // 3) - 1]
            print(f"  ASHA+TPE's best after 1/3 of random's epochs ({len(cr) // 3}): {third:.4f} "
                  f"({third - target:+.4f} against random's final best)")
            for tol in (0.01, 0.02):
                near = epochs_to_reach(ca, target - tol)
                print(f"  within {tol:.2f} of it after {near if near else 'never'}"
                      + (f" epochs = {near / len(cr):.3f} of random's" if near else ""))
            same = cr[min(len(ca), len(cr)) - 1]
            back = epochs_to_reach(cr, ca[-1])
            print(f"  at ASHA+TPE's total budget ({len(ca)} epochs) random search's best so far was {same:.4f}; "
                  + (f"random reached ASHA+TPE's best {ca[-1]:.4f} after {back} epochs" if back else
                     f"random never reached ASHA+TPE's best {ca[-1]:.4f} in its {len(cr)} epochs"))
            sys.stdout.flush()
        if len(a.seeds) > 1:
            finite = [r for r in ratios if r != float("inf")]
            print(f"over {len(a.seeds)} seeds: epochs-to-random's-best ratio per seed "
                  f"{', '.join('never' if r == float('inf') else f'{r:.3f}' for r in ratios)}; median "
                  f"{statistics.median(ratios) if finite else float('inf'):.3f}")
        if a.plot:
            plot(a.plot, curves)
    if not a.skip_bookkeeping:
        bookkeeping(a)


if __name__ == "__main__":
    main()
