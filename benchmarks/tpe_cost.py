"""What the searcher costs per suggestion as the study grows (issue 21): Optuna's TPE as a sweep builds it
(``ternsearch.spec.space.make_sampler``: multivariate, group decomposition, constant liar) over a spec's search
space, asked for N trials with C of them running at once, the study in memory and in SQLite as a sweep keeps it
(``RESULTS/optuna.db``). Each finished trial is told a made-up value; only the cost of ``ask`` is measured.

    python benchmarks/tpe_cost.py                                   # the shipped CPU space, 1,000 trials, 64 at once
    python benchmarks/tpe_cost.py --spec search_spaces/cifar10.yaml --trials 2000 --storages memory

Prints the median milliseconds of an ``ask`` around 100, 250, 500, 1,000 ... trials in the study, per storage.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ternsearch.spec import load_spec  # noqa: E402
from ternsearch.spec.space import DefineByRun, make_sampler  # noqa: E402


def ask_times(spec, trials: int, concurrent: int, storage) -> list[float]:
    """Seconds each ``ask`` took, in order, with ``concurrent`` trials kept running."""
    import optuna

    params = spec.params
    sampler = make_sampler("tpe", params, seed=0, num_samples=trials)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=storage)
    space, rng, running, times = DefineByRun(params), random.Random(0), [], []
    while len(times) < trials:
        while len(running) < concurrent and len(times) < trials:
            t0 = time.perf_counter()
            trial = study.ask()
            space(trial)
            times.append(time.perf_counter() - t0)
            running.append(trial)
        study.tell(running.pop(rng.randrange(len(running))), rng.random())
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(REPO / "search_spaces" / "cifar10-cpu.yaml"))
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--storages", nargs="+", choices=["memory", "sqlite"], default=["memory", "sqlite"])
    a = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(a.spec)
    marks = [m for m in (100, 250, 500, 1000, 2000, 5000) if m <= a.trials]
    print(f"TPE ask() cost, {a.spec}: {a.trials} trials, {a.concurrent} running at once; median ms of the 21 asks "
          f"around each study size")
    print(f"{'storage':8s} " + " ".join(f"{f'@{m}':>8s}" for m in marks) + f" {'total s':>8s}")
    for storage in a.storages:
        with tempfile.TemporaryDirectory(prefix="tpe-cost-") as tmp:
            url = None if storage == "memory" else f"sqlite:///{tmp}/optuna.db"
            times = ask_times(spec, a.trials, a.concurrent, url)
        cells = [statistics.median(times[max(0, m - 11):m + 10]) * 1e3 for m in marks]
        print(f"{storage:8s} " + " ".join(f"{c:8.1f}" for c in cells) + f" {sum(times):8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
