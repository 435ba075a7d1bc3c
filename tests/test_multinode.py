"""`ternsearch sweep --address` on a real 2-node Ray cluster (two `ray start` nodes on this machine) with a real
`mlflow server`: trials and DDP ranks land on both nodes, drivers stay where driver_resources put them, a local
storage path or SQLite tracking on several nodes is refused before launch, and a sweep survives losing a node.

The cluster and the MLflow server are started by the fixtures (tests/helpers_cluster.py) and stopped by PID
whatever happens: other Ray instances on this machine are never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers_cluster import LocalRayCluster, MLflowServer, kill_tree

from ternsearch.errors import PreflightError
from ternsearch.spec import load_spec


def slow_ray(fn):
    """A test on the real cluster: slow, and it starts Ray."""
    return pytest.mark.slow(pytest.mark.ray(fn))

TERNSEARCH = str(Path(sys.executable).parent / "ternsearch")
SWEEP_TIMEOUT = 600  # generous: the machine's 2 cores may be shared


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MLflowServer(tmp_path_factory.mktemp("mlflow-server")).start()  # healthy after ~13 s
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(mlflow_server, tmp_path_factory):
    """A head (`head_node` resource) and a worker (`worker_node`), 1 CPU each; the server starts meanwhile."""
    c = LocalRayCluster()
    try:
        c.start_head(resources={"head_node": 1})
        c.add_worker(resources={"worker_node": 1})
        mlflow_server.wait_healthy()
        yield c
    finally:
        c.shutdown(keep_logs_in=tmp_path_factory.getbasetemp() / "ray-cluster-logs")


@pytest.fixture
def two_nodes(cluster):
    """The module's cluster with a live worker node (a test before may have killed it)."""
    if all(n.killed for n in cluster.nodes if n.role == "worker"):
        cluster.add_worker(resources={"worker_node": 1})
    return cluster


def _worker(cluster: LocalRayCluster):
    return next(n for n in reversed(cluster.nodes) if n.role == "worker" and not n.killed)


def _head(cluster: LocalRayCluster):
    return cluster.nodes[0]


def write_spec(path: Path, name: str, results: Path, tracking_uri: str | None, **over) -> Path:
    """A tiny sweep: tinynet, 600 images, 2 epochs, on storage both nodes see (`shared: true`)."""
    spec = {
        "name": name,
        "metric": {"name": "val_acc", "mode": "max"},
        "data": {"dataset": "cifar10", "subset": 600, "val_fraction": 0.2},
        "model": {"arch": "tinynet", "quantizer": "twn"},
        "train": {"epochs": 2, "batch_size": 64},
        "search": {"lr": {"loguniform": [0.01, 0.2]}},
        "searcher": {"algorithm": "random", "seed": 0, "num_samples": 4},
        "scheduler": {"algorithm": "fifo"},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "use_gpu": False},
        "storage": {"path": str(results), "shared": True},
        "failure": {"max_failures": 2, "keep_checkpoints": 1},
        "tracking": {"experiment": name},
    }
    if tracking_uri is not None:
        spec["tracking"]["uri"] = tracking_uri
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_sweep(cluster: LocalRayCluster, spec: Path, *args: str, timeout: float = SWEEP_TIMEOUT,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`ternsearch sweep SPEC --address 127.0.0.1:P` as a subprocess (its own session, killed on timeout)."""
    proc = subprocess.Popen([TERNSEARCH, "sweep", str(spec), "--address", cluster.address, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
                            cwd=cwd or spec.parent, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"sweep did not finish in {timeout:g} s:\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def mlflow_runs(server: MLflowServer, experiment: str) -> list[dict]:
    """The runs of ``experiment`` on the server, through MLflow's REST API."""
    q = urllib.parse.urlencode({"experiment_name": experiment})
    with urllib.request.urlopen(f"{server.uri}/api/2.0/mlflow/experiments/get-by-name?{q}", timeout=10) as r:
        exp_id = json.load(r)["experiment"]["experiment_id"]
    req = urllib.request.Request(f"{server.uri}/api/2.0/mlflow/runs/search", method="POST",
                                 data=json.dumps({"experiment_ids": [exp_id], "max_results": 1000}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r).get("runs", [])


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@slow_ray
def test_trials_run_on_both_nodes(two_nodes, mlflow_server, tmp_path):
    cluster = two_nodes
    head, worker = _head(cluster).node_id, _worker(cluster).node_id
    shared = tmp_path / "shared-results"

    # 1-worker trials (function mode): 4 trials, 2 at once (1 CPU per node), spread over both nodes.
    spec = write_spec(tmp_path / "spread.yaml", "mn-spread", shared, mlflow_server.uri)
    t0 = time.monotonic()
    r = run_sweep(cluster, spec)
    spread_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    assert "up to 2 at once" in r.stderr  # never more concurrent trials than the 2 CPUs of the cluster
    trials = json.loads((shared / "mn-spread" / "trials.json").read_text())
    assert len(trials) == 4 and all(t["status"] == "completed" for t in trials.values()), trials
    assert {t["node_id"] for t in trials.values()} == {head, worker}
    # Tracking happened on the driver, against the server: one parent run and one child run per trial.
    runs = mlflow_runs(mlflow_server, "mn-spread")
    roles = sorted(_tags(run).get("ternsearch.role", "") for run in runs)
    assert roles == ["sweep", "trial", "trial", "trial", "trial"], roles
    print(f"\nspread sweep {spread_s:.0f} s")


@slow_ray
def test_ddp_ranks_run_on_both_nodes(two_nodes, mlflow_server, tmp_path):
    cluster = two_nodes
    head, worker = _head(cluster).node_id, _worker(cluster).node_id
    shared = tmp_path / "shared-results"
    # One 2-worker DDP trial (TorchTrainer): one rank per node; its driver is pinned by driver_resources.
    spec = write_spec(tmp_path / "ddp.yaml", "mn-ddp", shared, mlflow_server.uri,
                      searcher={"num_samples": 1},
                      resources={"workers_per_trial": 2, "driver_resources": {"head_node": 0.01}})
    t0 = time.monotonic()
    r = run_sweep(cluster, spec)
    ddp_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-4000:]
    (trial,) = json.loads((shared / "mn-ddp" / "trials.json").read_text()).values()
    assert trial["status"] == "completed", trial
    assert sorted(trial["rank_node_ids"].split(",")) == sorted([head, worker]), trial
    print(f"\nddp sweep {ddp_s:.0f} s")


@slow_ray
def test_driver_resources_pin_trials_to_the_head(two_nodes, mlflow_server, tmp_path):
    """In function mode the trial's driver is the trainer: `driver_resources` puts every trial on the head."""
    cluster = two_nodes
    spec = write_spec(tmp_path / "pinned.yaml", "mn-pinned", tmp_path / "res", mlflow_server.uri,
                      searcher={"num_samples": 2}, resources={"driver_resources": {"head_node": 0.01}})
    r = run_sweep(cluster, spec)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "up to 1 at once" in r.stderr  # the head has 1 CPU: the plan never asks for more
    trials = json.loads((tmp_path / "res" / "mn-pinned" / "trials.json").read_text())
    assert {t["node_id"] for t in trials.values()} == {_head(cluster).node_id}


@slow_ray
def test_local_storage_or_sqlite_on_several_nodes_is_refused_before_launch(two_nodes, mlflow_server, tmp_path):
    cluster = two_nodes
    # A local (not shared) storage path: --dry-run says so and exits 1.
    spec = write_spec(tmp_path / "local.yaml", "mn-local", tmp_path / "res", mlflow_server.uri,
                      storage={"path": str(tmp_path / "res"), "shared": False})
    r = run_sweep(cluster, spec, "--dry-run", timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "storage.path" in r.stderr and "several nodes" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # A SQLite tracking URI (and, without tracking.uri, the default SQLite file): refused before any trial.
    for name, uri in (("mn-sqlite", f"sqlite:///{tmp_path}/mlflow.db"), ("mn-default", None)):
        spec = write_spec(tmp_path / f"{name}.yaml", name, tmp_path / "res", uri)
        r = run_sweep(cluster, spec, timeout=120)
        assert r.returncode == 1, r.stderr[-3000:]
        assert "tracking.uri" in r.stderr and "several nodes" in r.stderr, r.stderr[-3000:]
        assert not (tmp_path / "res" / name).exists()  # nothing launched, nothing written


@slow_ray
def test_sweep_survives_losing_the_worker_node(two_nodes, mlflow_server, tmp_path):
    cluster = two_nodes
    head, worker = _head(cluster), _worker(cluster)
    shared = tmp_path / "shared-results"
    spec = write_spec(tmp_path / "kill.yaml", "mn-kill", shared, mlflow_server.uri,
                      train={"epochs": 8}, searcher={"num_samples": 3}, failure={"max_failures": 2})
    history = shared / "mn-kill" / "history.jsonl"
    proc = subprocess.Popen([TERNSEARCH, "sweep", str(spec), "--address", cluster.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
                            cwd=tmp_path, start_new_session=True)
    try:
        # Kill the worker node as soon as a trial there has reported an early epoch (6+ epochs still to go).
        victim = None
        deadline = time.monotonic() + SWEEP_TIMEOUT
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            if history.exists():
                for line in history.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:  # a line being written
                        continue
                    if row.get("node_id") == worker.node_id and row.get("epoch", 0) <= 2:
                        victim = row["trial_id"]
                        break
            time.sleep(0.2)
        assert victim is not None, "no trial reported from the worker node"
        cluster.kill_node(worker)
        killed_at = time.time()
        out, err = proc.communicate(timeout=SWEEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()
    assert proc.returncode == 0, err[-4000:]
    trials = json.loads((shared / "mn-kill" / "trials.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    # The trial that lost its node was re-run on the head, from its checkpoint, and finished there.
    assert trials[victim]["restarts"] >= 1, trials[victim]
    assert trials[victim]["node_id"] == head.node_id, trials[victim]
    # Whatever ran after the loss ran on the remaining node.
    for t in trials.values():
        if t["ended"] > killed_at + 1:
            assert t["node_id"] == head.node_id, t


# ------------------------------------------------------------------------ the plan on several nodes (no Ray)

HEAD = {"CPU": 1.0, "head_node": 1.0, "memory": 1e9}
WORKER = {"CPU": 1.0, "worker_node": 1.0, "memory": 1e9}


def _plan(tmp_path, nodes, **over):
    from ternsearch.run.cluster import total_resources
    from ternsearch.run.tuner import make_plan

    spec = load_spec(write_spec(tmp_path / "plan.yaml", "plan", tmp_path, "http://127.0.0.1:5000", **over))
    return spec, make_plan(spec, total_resources(nodes), nodes)


def test_concurrency_counts_trials_node_by_node(tmp_path):
    nodes = [(HEAD, 1), (WORKER, 1)]
    _, plan = _plan(tmp_path, nodes, searcher={"max_concurrent_trials": 8})
    assert plan.mode == "function" and plan.fits == 2 and plan.max_concurrent == 2  # never more than fits
    _, plan = _plan(tmp_path, nodes, searcher={"max_concurrent_trials": 1})
    assert plan.max_concurrent == 1  # fewer, when asked
    # A function-mode trial pinned to the head by driver_resources: its CPU must be the head's too.
    _, plan = _plan(tmp_path, nodes, resources={"driver_resources": {"head_node": 0.01}})
    assert plan.fits == 1 and plan.max_concurrent == 1
    # A 2-worker DDP trial: its driver on the head takes no CPU, its workers take both nodes' CPUs.
    _, plan = _plan(tmp_path, nodes, resources={"workers_per_trial": 2, "driver_resources": {"head_node": 0.01}})
    assert plan.mode == "torchtrainer" and plan.fits == 1
    assert plan.trial_resources == {"CPU": 2.0, "head_node": 0.01}
    # 0.01 of a resource of 1 is exactly 100 drivers (floating point would say 99).
    _, plan = _plan(tmp_path, [({"CPU": 1000.0, "driver": 1.0}, 1)], searcher={"num_samples": 500},
                    resources={"workers_per_trial": 2, "driver_resources": {"driver": 0.01}})
    assert plan.fits == 100


def test_a_trial_that_fits_no_single_node_is_refused(tmp_path):
    from ternsearch.run.preflight import check_one_node

    gpu_worker = {"CPU": 8.0, "GPU": 1.0}
    spec, plan = _plan(tmp_path, [(HEAD, 1), (gpu_worker, 2)],
                       resources={"use_gpu": True, "driver_resources": {"head_node": 0.01}})
    assert plan.fits == 0
    with pytest.raises(PreflightError, match=r"resources: .*no node of the cluster at X.*drop driver_resources"):
        check_one_node(spec, plan, "the cluster at X")
    spec, plan = _plan(tmp_path, [(HEAD, 1), (gpu_worker, 2)],
                       resources={"use_gpu": True, "workers_per_trial": 2, "driver_resources": {"head_node": 0.01}})
    assert plan.fits == 1
    check_one_node(spec, plan, "the cluster at X")


def test_launcher_config_counts_the_nodes_the_autoscaler_may_add(tmp_path):
    from ternsearch.run.cluster import launcher_nodes

    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(yaml.safe_dump({
        "max_workers": 3, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 8, "driver": 1}, "max_workers": 0, "node_config": {}},
            "gpu": {"resources": {"CPU": 48, "GPU": 4}, "min_workers": 0, "max_workers": 5, "node_config": {}},
            "cpu": {"resources": {"CPU": 16}, "min_workers": 0, "max_workers": 0, "node_config": {}},
        }}, sort_keys=False))
    assert launcher_nodes(str(cfg)) == [({"CPU": 8.0, "driver": 1.0}, 1), ({"CPU": 48.0, "GPU": 4.0}, 3)]
    assert launcher_nodes(str(tmp_path / "missing.yaml")) is None
