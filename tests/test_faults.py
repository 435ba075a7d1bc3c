"""Faults caused for real: a SIGKILLed trial process, a killed or signalled sweep driver,
a diverging trial, corrupted checkpoints and a crafted pickle (out of memory: tests/test_oom.py). Real local Ray,
real SQLite MLflow store, real CIFAR-10."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainables.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: {subset}, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: {epochs}, batch_size: 64, optimizer: adam, precision: {precision}, weight_decay: 0.0, seed: 7}}
search:
  lr: {{choice: {lrs}}}
searcher: {{algorithm: grid, num_samples: {n}, max_concurrent_trials: {conc}}}
scheduler: {{algorithm: fifo}}
storage: {{path: {storage}}}
failure: {{max_failures: 2}}
"""


def _env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _spec(tmp: Path, name: str, *, lrs="[0.001]", n=1, conc=1, epochs=4, subset=1000, precision="auto") -> Path:
    """A grid sweep of tinynet. fp32 on CPU (``auto``) unless ``precision`` says otherwise: CPU fp16 is
    emulated and several times slower (the GradScaler's resume is tested in tests/test_loop.py)."""
    path = tmp / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, lrs=lrs, n=n, conc=conc, epochs=epochs, subset=subset,
                                precision=precision, storage=tmp / "results"))
    return path


def _start(spec: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), *extra], cwd=spec.parent,
                            env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _run(spec: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), *extra], cwd=spec.parent,
                          env=_env(), text=True, capture_output=True, timeout=timeout)


def _history(results: Path) -> list[dict]:
    path = results / "history.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _mlflow_runs(results: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _final(results: Path) -> dict:
    (trial,) = json.loads((results / "trials.json").read_text()).values()
    return trial


@pytest.mark.slow
@pytest.mark.ray
def test_killed_trial_process_resumes_to_the_same_result(tmp_path, data_root):
    """SIGKILL the trial's training process mid-epoch: the trial restarts from its latest checkpoint and ends
    with exactly the metrics and weights of an uninterrupted run (the same config by `ternsearch train`, in its
    own process with the trial's one thread); MLflow keeps one value per epoch."""
    import yaml

    doc = yaml.safe_load(_spec(tmp_path, "clean", subset=2000).read_text())
    clean_cfg = tmp_path / "clean-train.yaml"
    clean_cfg.write_text(yaml.safe_dump({"name": "clean", "data": doc["data"], "model": doc["model"],
                                         "train": {**doc["train"], "lr": 0.001, "threads": 1}}))
    clean = subprocess.run([sys.executable, "-m", "ternsearch.cli", "train", str(clean_cfg), "-q", "-o",
                            str(tmp_path / "clean-run")], cwd=tmp_path, env=_env(), text=True, capture_output=True,
                           timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]

    spec = _spec(tmp_path, "killed", subset=2000)
    results = tmp_path / "results" / "killed"
    proc = _start(spec)
    try:
        first = _wait(lambda: next((h for h in _history(results) if h["epoch"] == 1), None), 300, "epoch 1")
        time.sleep(0.3)  # into epoch 2 (an epoch takes ~2 s)
        os.kill(int(first["pid"]), signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]

    a, b = json.loads(clean.stdout), _final(results)
    assert b["status"] == "completed" and b["restarts"] >= 1
    for key in ("val_acc", "val_loss", "train_loss", "train_acc", "ternary_zero_frac", "epoch"):
        assert a[key] == b["last"][key], key
    wa, _ = load_checkpoint(tmp_path / "clean-run" / "checkpoints" / "epoch_0004")
    wb, _ = load_checkpoint(b["checkpoint"])
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    pids = {h["pid"] for h in _history(results)}
    assert len(pids) == 2, "the trial ran in a second process after the kill"

    client, runs = _mlflow_runs(results, "killed")
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
    assert steps == [1, 2, 3, 4]
    assert child.info.status == "FINISHED"
    assert int(child.data.tags.get("ternsearch.restarts", "0")) >= 1


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_sweep_resumes_without_duplicates(tmp_path, data_root, sig):
    """Kill (or SIGTERM) the sweep driver mid-sweep, then `--resume`: exactly num_samples trials, finished
    ones not rerun, one parent and num_samples child runs in MLflow, none RUNNING."""
    spec = _spec(tmp_path, "resume", lrs="[0.001, 0.002, 0.003]", n=3, conc=1, epochs=3, subset=600)
    results = tmp_path / "results" / "resume"
    proc = _start(spec)
    try:
        def one_done_one_running():
            trials = json.loads((results / "trials.json").read_text()) if (results / "trials.json").exists() else {}
            done = [t for t in trials.values() if t["status"] == "completed"]
            running = [t for t in trials.values() if t["status"] == "running" and t["epochs"] >= 1]
            return (done, running) if done and running else None

        done, _ = _wait(one_done_one_running, 300, "one finished and one running trial")
        killed_at = time.time()
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if sig == signal.SIGTERM:
        assert proc.returncode == 130
        assert "--resume" in err.splitlines()[-1]
        client, runs = _mlflow_runs(results, "resume")
        assert not [r for r in runs if r.info.status == "RUNNING"], "a stopped sweep leaves no run RUNNING"
    else:
        time.sleep(3)  # let the orphaned Ray processes notice their driver is gone

    resumed = _run(spec, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = json.loads((results / "trials.json").read_text())
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values())
    for t in done:  # finished before the kill: not rerun, one row an epoch
        rows = [h for h in _history(results) if h["trial_id"] == t["trial_id"]]
        assert [h["epoch"] for h in rows] == [1, 2, 3] and all(h["time"] < killed_at for h in rows)
    # A trial the driver started in the last seconds before a SIGKILL may be missing from Tune's last saved
    # state: then it is recorded as lost (not silently dropped) and its run is marked so.
    lost_path = results / "trials_lost.json"
    lost = json.loads(lost_path.read_text()) if lost_path.exists() else {}
    assert not lost or sig == signal.SIGKILL, lost
    assert all(e["status"] == "lost" and e["reason"].startswith("lost: ") for e in lost.values())
    client, runs = _mlflow_runs(results, "resume")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("ternsearch.role") == "trial"]
    lost_runs = [r for r in runs if r.data.tags.get("ternsearch.role") == "lost-trial"]
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4 + len(lost)
    assert {r.data.tags["ternsearch.trial_id"] for r in lost_runs} == set(lost)
    assert all(r.info.status == "FINISHED" for r in parents + children)
    assert all(r.info.status == "KILLED" for r in lost_runs)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.ray
def test_diverging_trial_fails_alone(tmp_path, data_root):
    """A trial whose loss becomes NaN is stopped at once, marked failed in records and MLflow, reports the
    worst metric value to the searcher, and the other trial completes."""
    spec = _spec(tmp_path, "diverge", lrs="[0.001, 100.0]", n=2, conc=1, epochs=2, subset=300, precision="fp16")
    proc = _run(spec)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "results" / "diverge"
    trials = {t["config"]["lr"]: t for t in json.loads((results / "trials.json").read_text()).values()}
    assert trials[100.0]["status"] == "failed" and "diverged at epoch 1" in trials[100.0]["reason"]
    assert trials[100.0]["epochs"] == 1
    assert trials[0.001]["status"] == "completed"
    last = [h for h in _history(results) if h["trial_id"] == trials[100.0]["trial_id"]][-1]
    assert last["diverged"] is True and last["val_acc"] == 0.0  # what the searcher was told
    client, runs = _mlflow_runs(results, "diverge")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and "diverged at epoch 1" in failed[0].data.tags["ternsearch.status"]


# ------------------------------------------------------------------------------------------ checkpoints
def _tiny_ckpt(path: Path, epoch: int) -> Path:
    return save_checkpoint(path, {"model": {"w": torch.full((3,), float(epoch))}, "epoch": epoch},
                           {"epoch": epoch})


def test_corrupted_latest_checkpoint_falls_back_with_warning(tmp_path):
    from trainables.attempt import siblings, usable

    old = _tiny_ckpt(tmp_path / "checkpoint_000001", 1)
    new = _tiny_ckpt(tmp_path / "checkpoint_000002", 2)
    state = new / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="checksum mismatch"):
        path, manifest = usable(siblings(str(new)))
    assert path == str(old) and manifest["epoch"] == 1


def test_train_resume_skips_a_corrupted_checkpoint(tmp_path):
    from ternsearch.run.train import latest_checkpoint

    _tiny_ckpt(tmp_path / "checkpoints" / "epoch_0001", 1)
    bad = _tiny_ckpt(tmp_path / "checkpoints" / "epoch_0002", 2)
    (bad / "state.pt").write_bytes(b"\x00" * 64)
    warnings = []
    assert latest_checkpoint(tmp_path, warn=warnings.append).name == "epoch_0001"
    assert "epoch_0002" in warnings[0] and "checksum" in warnings[0]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_crafted_pickle_is_refused(tmp_path, monkeypatch):
    """A checkpoint whose state file is a malicious pickle (with a matching checksum) never executes."""
    monkeypatch.chdir(tmp_path)
    ckpt = _tiny_ckpt(tmp_path / "ckpt", 1)
    (ckpt / "state.pt").write_bytes(pickle.dumps({"model": _Evil()}))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    import hashlib

    manifest["state_sha256"] = hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(ckpt)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_resources_return_after_asha_stops_ddp_trials(tmp_path, data_root):
    """More DDP trials than slots, ASHA stopping some: every trial runs, and afterwards Ray has all its CPUs
    back (Ray Train V2 once leaked the placement groups of stopped trials)."""
    import ray

    from ternsearch.spec import load_spec
    from ternsearch.run.sweep import run_sweep

    path = tmp_path / "pg.yaml"
    path.write_text(f"""\
name: pg
metric: {{name: val_acc, mode: max}}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64, seed: 1}}
search:
  lr: {{choice: [0.2, 0.00001, 0.00002]}}
searcher: {{algorithm: grid, seed: 0, num_samples: 3}}
scheduler: {{algorithm: asha, grace_period: 1, reduction_factor: 2}}
resources: {{workers_per_trial: 2, cpus_per_worker: 1}}
storage: {{path: {tmp_path / 'results'}}}
tracking: {{enabled: false}}
""")
    from ternsearch.run.cluster import start_cluster

    start_cluster(None)  # Ray started here, as the sweep would start it, outlives the sweep (which stops only its own)
    try:
        summary = run_sweep(load_spec(path), quiet=True)
        assert ray.is_initialized()
        trials = json.loads((tmp_path / "results" / "pg" / "trials.json").read_text())
        assert summary["trials"] == len(trials) == 3
        assert all(t["status"] in ("completed", "stopped") for t in trials.values())
        assert any(t["status"] == "stopped" for t in trials.values()), trials
        total = ray.cluster_resources()["CPU"]
        _wait(lambda: ray.available_resources().get("CPU", 0) == total, 60, "all CPUs released")
    finally:
        ray.shutdown()
