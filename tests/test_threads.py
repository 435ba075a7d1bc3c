"""Concurrent trials share the cores instead of oversubscribing them: each trial's torch uses as many threads as
its resources reserve (``trainables.entry._set_threads``), whatever Ray's OMP_NUM_THREADS says.

The evidence comes from the trials themselves: a real ``ternsearch sweep`` of two concurrent 1-CPU trials,
whose training loop reports ``torch_threads`` in every epoch's metrics; and a real local Ray with 2 CPUs,
real Tune placement, and trial functions that set their threads the way ``entry`` does, then report
``torch.get_num_threads()`` and the window of time they ran in. The trials' environment says
OMP_NUM_THREADS=3, so a count that merely followed Ray's or the environment's default would fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WORKER_OMP = "3"  # what the trial processes' environment says, before the trial sets its threads


SPEC = """\
name: threads
metric: {{name: val_acc, mode: max}}
data: {{subset: 200, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 1, batch_size: 32}}
search:
  lr: {{loguniform: [0.01, 0.1]}}
searcher: {{algorithm: random, seed: 0, num_samples: 2, max_concurrent_trials: 2}}
scheduler: {{algorithm: fifo}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
storage: {{path: {storage}}}
tracking: {{enabled: false}}
"""


def test_sweep_trials_report_one_thread_each(tmp_path, data_root):
    # First in the file: the sweep starts its own Ray, before the module's Ray below exists.
    spec = tmp_path / "threads.yaml"
    spec.write_text(SPEC.format(storage=tmp_path / "results"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["OMP_NUM_THREADS"] = WORKER_OMP  # the sweep's Ray passes it on to the trials (see ray_2cpu)
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), "-q"], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results" / "threads"
    trials = list(json.loads((results / "trials.json").read_text()).values())
    rows = [json.loads(x) for x in (results / "history.jsonl").read_text().splitlines() if x.strip()]
    assert len(trials) == 2 and len(rows) == 2
    assert [r["torch_threads"] for r in rows] == [1, 1], rows
    a, b = trials
    assert max(a["started"], b["started"]) < min(a["ended"], b["ended"]), "the two trials did not overlap"


def _trial(config: dict) -> None:
    """A Tune function trial: set threads as entry does, wait for its sibling, do torch work, report."""
    import torch
    from ray import tune

    from trainables.entry import _set_threads

    omp = os.environ.get("OMP_NUM_THREADS")
    if config.get("preset_threads"):
        torch.set_num_threads(config["preset_threads"])  # a wrong count inherited from elsewhere
    _set_threads(config["cpus"])  # as entry._run_function_trial does with setup.cpus_per_worker
    start = time.time()
    barrier = Path(config["barrier"])
    (barrier / tune.get_context().get_trial_id()).touch()
    # Both trials must be running at once for the test to mean anything: wait (bounded) for the other one.
    deadline = start + 30
    while len(list(barrier.iterdir())) < config["expect"] and time.time() < deadline:
        time.sleep(0.05)
    overlapped = len(list(barrier.iterdir())) >= config["expect"]
    x = torch.randn(256, 256)
    for _ in range(20):  # parallel regions run with the threads set above
        x = torch.tanh(x @ x.T / 256)
    tune.report({"torch_threads": torch.get_num_threads(), "omp_num_threads": omp or "", "pid": os.getpid(),
                 "start": start, "end": time.time(), "saw_sibling": overlapped})


def _tune(tmp: Path, name: str, cpus: float, samples: int, preset_threads: int = 0) -> list[dict]:
    from ray import tune

    barrier = tmp / f"{name}-barrier"
    barrier.mkdir()
    tuner = tune.Tuner(
        tune.with_resources(_trial, {"cpu": cpus}),
        param_space={"cpus": cpus, "barrier": str(barrier), "expect": samples, "preset_threads": preset_threads},
        tune_config=tune.TuneConfig(num_samples=samples, max_concurrent_trials=samples),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    return [r.metrics for r in results]


@pytest.fixture(scope="module")
def ray_2cpu(tmp_path_factory):
    import ray
    import ray.cloudpickle

    # Ray workers cannot import this test module: ship the trial function by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.pop("RAY_ADDRESS", None)
    # Left alone, Ray sets OMP_NUM_THREADS to a worker's reserved CPUs, and torch would agree with the
    # reservation even if _set_threads did nothing. A worker environment that says otherwise (as a user's
    # shell may; Ray keeps it) makes the trial's own setting the only way to get the right count.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": WORKER_OMP}})
    yield tmp_path_factory.mktemp("threads")
    ray.shutdown()


def test_two_concurrent_trials_get_one_thread_each(ray_2cpu):
    a, b = _tune(ray_2cpu, "one-cpu", cpus=1, samples=2)
    assert a["pid"] != b["pid"]
    assert a["saw_sibling"] and b["saw_sibling"], (a, b)
    assert max(a["start"], b["start"]) < min(a["end"], b["end"]), "the two trials did not overlap in time"
    assert a["omp_num_threads"] == b["omp_num_threads"] == WORKER_OMP, (a, b)  # the test is not vacuous
    assert a["torch_threads"] == b["torch_threads"] == 1, (a, b)


def test_a_trial_reserving_two_cpus_gets_two_threads(ray_2cpu):
    # Train workers start with OMP_NUM_THREADS=1 (FIELD-NOTES): start from 1 thread, _set_threads must raise it.
    (m,) = _tune(ray_2cpu, "two-cpu", cpus=2, samples=1, preset_threads=1)
    assert m["omp_num_threads"] == WORKER_OMP, m
    assert m["torch_threads"] == 2, m
