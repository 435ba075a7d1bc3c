"""Search efficiency on replayed learning curves (``benchmarks/search_efficiency.py --replay TABLE``).

Every run is a real sweep of the shipped CPU space (search_spaces/cifar10-cpu.yaml, its train.epochs lowered to the
table's) through ``ternsearch.run.sweep.run_sweep`` with ``replay=TABLE``: our spec, space compiler, OptunaSearch
subclass, Tune and ASHA decide; each trial replays the nearest recorded trial (trainables/replay.py). All sweeps run
in one Ray instance, in this process, two trials at once (as the shipped spec runs on a 2-core laptop), MLflow off.

Budget: random search's, ``trials x epochs`` (12 x 8 = 96 epochs by default). FIFO methods get ``trials`` trials;
ASHA methods 3x as many, so that they can spend that budget on more configurations (the shipped 12-trial
TPE + ASHA is run as well). For every run the best-so-far val_acc is kept as a function of the epochs consumed,
in the order results arrived (history.jsonl; a re-reported epoch is not counted again).

Printed per method: the median and quartiles over seeds of the best val_acc at 1/4, 1/3, 1/2 and 1 x random's
epochs; the share of seeds where it reached random search's final best (same seed) within 1/3 of random's epochs;
the table's Spearman rank correlation between epoch-k and final accuracy (which bounds what early stopping can do);
the issue's targets, met or missed.

    python benchmarks/search_efficiency.py --replay benchmarks/data/curves-cpu.csv --seeds 20 --plot eff.png
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "search_spaces" / "cifar10-cpu.yaml"
FRACTIONS = ((1 / 4, "1/4"), (1 / 3, "1/3"), (1 / 2, "1/2"), (1.0, "1"))

# label -> (searcher settings, scheduler settings or None for FIFO, trials as a multiple of random's). Settings
# not named keep the shipped spec's (scheduler) or the spec's defaults (searcher).
CURRENT = "tpe+asha (current defaults)"
METHODS = {
    "random": ({"algorithm": "random"}, None, 1),
    "random+asha": ({"algorithm": "random"}, {}, 3),
    "tpe": ({}, None, 1),
    CURRENT: ({}, {}, 3),
    "tpe+asha (12 trials, as shipped)": ({}, {}, 1),
    "gp": ({"algorithm": "gp"}, None, 1),
    "gp+asha": ({"algorithm": "gp"}, {}, 3),
    "tpe+asha grace 1": ({}, {"grace_period": 1}, 3),
    "tpe+asha grace 1 rf 2": ({}, {"grace_period": 1, "reduction_factor": 2}, 3),
    "tpe+asha rf 2": ({}, {"reduction_factor": 2}, 3),
    "tpe+asha grace 3": ({}, {"grace_period": 3}, 3),
    "tpe+asha brackets 2": ({}, {"brackets": 2}, 3),
    "tpe+asha startup 5": ({"n_startup_trials": 5}, {}, 3),
    "tpe+asha startup 18": ({"n_startup_trials": 18}, {}, 3),
    "tpe+asha univariate": ({"multivariate": False}, {}, 3),
    "tpe+asha no liar": ({"constant_liar": False}, {}, 3),
    "tpe+asha grace 1 startup 5": ({"n_startup_trials": 5}, {"grace_period": 1}, 3),
    "tpe+asha grace 1 startup 18": ({"n_startup_trials": 18}, {"grace_period": 1}, 3),
    "tpe+asha grace 1 univariate": ({"multivariate": False}, {"grace_period": 1}, 3),
    "tpe+asha grace 1 no liar": ({"constant_liar": False}, {"grace_period": 1}, 3),
    "tpe+asha grace 1 x5 trials": ({}, {"grace_period": 1}, 5),
    "tpe+asha grace 1 (12 trials)": ({}, {"grace_period": 1}, 1),
    "gp+asha grace 1": ({"algorithm": "gp"}, {"grace_period": 1}, 3),
}


def shipped_settings() -> tuple[dict, dict]:
    """The shipped spec as a mapping, and the searcher and scheduler settings a sweep of it runs with."""
    import yaml  # the shipped file is plain YAML; ternsearch's own loader checks what we write from it

    from ternsearch.spec import load_spec

    spec = load_spec(str(SHIPPED))
    return yaml.safe_load(SHIPPED.read_text()), {"searcher": spec.searcher.model_dump(),
                                                 "scheduler": spec.scheduler.model_dump()}


def write_spec(tmp: Path, name: str, base: dict, method: str, seed: int, trials: int, epochs: int) -> Path:
    import yaml  # as above

    searcher, scheduler, times = METHODS[method]
    doc = dict(base, name=name)
    doc["train"] = dict(base["train"], epochs=epochs)
    doc["searcher"] = {"algorithm": "tpe", **searcher, "seed": seed, "num_samples": trials * times,
                       "max_concurrent_trials": 2}
    doc["scheduler"] = {"algorithm": "fifo"} if scheduler is None else {**base["scheduler"], **scheduler}
    doc["resources"] = dict(base["resources"], use_gpu=False)
    doc["storage"], doc["tracking"] = {"path": str(tmp / "results")}, {"enabled": False}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def best_so_far(results: Path) -> list[float]:
    """Best val_acc after each epoch consumed, in the order the results arrived."""
    import json

    curve, best = [], float("-inf")
    for line in (results / "history.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("replayed"):
            continue
        best = max(best, float(row["val_acc"]))
        curve.append(best)
    return curve


def run_one(tmp: Path, name: str, base: dict, method: str, seed: int, a) -> tuple[list[float], float]:
    from ternsearch.run.sweep import run_sweep  # Ray Tune: imported once Ray is up
    from ternsearch.spec import load_spec

    path = write_spec(tmp, name, base, method, seed, a.trials, a.epochs)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            run_sweep(load_spec(str(path)), replay=a.replay, quiet=True)
        except Exception:
            sys.stderr.write(err.getvalue()[-3000:])
            raise
    return best_so_far(tmp / "results" / name), time.perf_counter() - t0


def at(curve: list[float], epochs: int) -> float:
    """The best after ``epochs`` epochs (the final best of a run that consumed fewer)."""
    return curve[min(epochs, len(curve)) - 1]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q[0], statistics.median(values), q[2]


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / ((sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5 or 1.0)


def table_lines(table, epochs: int) -> list[str]:
    final = [c[epochs - 1]["val_acc"] for c in table.curves.values()]
    lines = [f"table: {table.path}: {len(final)} recorded trials x {table.epochs} epochs; final val_acc median "
             f"{statistics.median(final):.4f}, best {max(final):.4f}, worst {min(final):.4f}"]
    for k in (1, 2, 4):
        if k < epochs:
            rho = spearman([c[k - 1]["val_acc"] for c in table.curves.values()], final)
            lines.append(f"  Spearman rank correlation, epoch-{k} val_acc vs epoch-{epochs}: {rho:+.3f}")
    return lines


def summary_lines(curves: dict[str, list[list[float]]], budget: int) -> list[str]:
    random_final = [c[-1] for c in curves["random"]]
    head = "  ".join(f"{'@' + label + ' budget':>22}" for _, label in FRACTIONS)
    lines = [f"best val_acc, median [q1, q3] over seeds, at fractions of random's {budget} epochs; reached: seeds "
             "reaching random's final best (same seed) within 1/3 of its epochs", f"{'method':<34}{head}  reached"]
    for method, runs in curves.items():
        cells = []
        for f, _ in FRACTIONS:
            q1, med, q3 = quartiles([at(c, int(budget * f)) for c in runs])
            cells.append(f"{med:.4f} [{q1:.4f},{q3:.4f}]")
        reached = sum(max(c[: budget // 3]) >= r - 1e-12 for c, r in zip(runs, random_final))
        lines.append(f"{method:<34}" + "  ".join(f"{c:>22}" for c in cells) + f"  {reached}/{len(runs)}")
    return lines


def target_lines(curves: dict[str, list[list[float]]], budget: int, walls: dict[str, list[float]]) -> list[str]:
    random_median = statistics.median([c[-1] for c in curves["random"]])
    lines = ["targets (issue: with the chosen defaults, TPE + ASHA on the replay table):"]
    for method, runs in curves.items():
        if not method.startswith("tpe+asha"):
            continue
        share = statistics.fmean(max(c[: budget // 3]) >= r[-1] - 1e-12 for c, r in zip(runs, curves["random"]))
        third = statistics.median([at(c, budget // 3) for c in runs])
        lines.append(f"  {method}: reaches random's final best within 1/3 of its epochs in {share:.0%} of "
                     f"{len(runs)} seeds (target >= 70%: {'met' if share >= 0.7 and len(runs) >= 20 else 'MISSED'})"
                     f"; median best at 1/3 of the budget {third:.4f} vs random's median final {random_median:.4f} "
                     f"(target >=: {'met' if third >= random_median else 'MISSED'})")
    shipped = walls.get("tpe+asha (12 trials, as shipped)", [])
    if shipped:
        med = statistics.median(shipped)
        lines.append(f"  a replayed 12-trial sweep (TPE + ASHA as shipped, in-process, Ray already up) took median "
                     f"{med:.1f} s, max {max(shipped):.1f} s "
                     f"(target < 30 s: {'met' if max(shipped) < 30 else 'MISSED'})")
    return lines


def plot(path: str, curves: dict[str, list[list[float]]], budget: int) -> str:
    """Median best-so-far over seeds against epochs consumed; PNG through kaleido when it works, else HTML."""
    import plotly.graph_objects as go  # plotly: only for the plot

    fig = go.Figure()
    for method, runs in curves.items():
        xs = list(range(1, budget + 1))
        fig.add_trace(go.Scatter(x=xs, y=[statistics.median(at(c, x) for c in runs) for x in xs], name=method,
                                 mode="lines", line={"shape": "hv"}))
    for f, label in FRACTIONS[:-1]:
        fig.add_vline(x=budget * f, line={"dash": "dot", "color": "grey"}, annotation_text=label)
    fig.update_layout(title=f"Replayed sweeps: median best val_acc so far over {len(curves['random'])} seeds",
                      xaxis_title="epochs consumed (all trials)", yaxis_title="best val_acc so far",
                      template="plotly_white")
    if path.endswith(".png"):
        try:
            fig.write_image(path, width=1100, height=600)  # kaleido drives a local Chrome/Chromium
            return path
        except Exception as exc:  # noqa: BLE001 - no kaleido or no browser: an HTML plot instead
            print(f"PNG not written ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); writing HTML")
            path = path[:-4] + ".html"
    fig.write_html(path, include_plotlyjs=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replay", required=True, metavar="TABLE", help="the learning-curve table (CSV)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds per method (searcher seeds 1..N)")
    ap.add_argument("--trials", type=int, default=12, help="random search's trials (its budget: trials x epochs)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the table's)")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), metavar="METHOD",
                    help=f"which methods (default all: {', '.join(METHODS)})")
    ap.add_argument("--plot", metavar="PATH", help="a PNG (kaleido) or HTML plot of the median curves")
    a = ap.parse_args(argv)
    from trainables.replay import read_table

    base, settings = shipped_settings()
    table = read_table(a.replay, tuple(base["search"]))  # each sweep checks the table against its spec again
    a.epochs = a.epochs or table.epochs
    budget = a.trials * a.epochs
    print(f"current defaults: searcher {settings['searcher']}; scheduler {settings['scheduler']} (from {SHIPPED.name}"
          " and the spec's defaults)")
    print("\n".join(table_lines(table, a.epochs)))
    methods = ["random"] + [m for m in a.methods if m != "random"]
    curves, walls = run_all(methods, base, a, budget)
    print("\n".join(summary_lines(curves, budget)))
    print("\n".join(target_lines(curves, budget, walls)))
    if a.plot:
        print(f"plot: {plot(a.plot, curves, budget)}")
    return 0


def run_all(methods: list[str], base: dict, a, budget: int) -> tuple[dict, dict]:
    import ray  # one Ray for every sweep

    import ternsearch.report.render as render  # the sweep's HTML report is not what is compared: not written

    render.write_report = lambda results_dir, warn=None: Path(results_dir) / "report.html"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    curves: dict[str, list[list[float]]] = {m: [] for m in methods}
    walls: dict[str, list[float]] = {m: [] for m in methods}
    t0 = time.perf_counter()
    try:
        # in memory where there is a tmpfs: the study's SQLite commits and the records are then not disk-bound
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        with tempfile.TemporaryDirectory(prefix="ternsearch-replay-eff-", dir=shm) as d:
            for i, method in enumerate(methods):
                for seed in range(1, a.seeds + 1):
                    curve, wall = run_one(Path(d), f"m{i}-s{seed}", base, method, seed, a)
                    curves[method].append(curve)
                    walls[method].append(wall)
                print(f"  ran {method}: {a.seeds} sweeps, median {statistics.median(walls[method]):.1f} s each, "
                      f"{statistics.median(len(c) for c in curves[method]):.0f} epochs each "
                      f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
                if i and method != methods[-1]:  # the table so far, in case the run is cut short
                    done = {m: c for m, c in curves.items() if c}
                    print("\n".join("    " + line for line in summary_lines(done, budget)), flush=True)
    finally:
        ray.shutdown()
    return curves, walls


if __name__ == "__main__":
    sys.exit(main())
