"""The sweep's Optuna study on disk (RESULTS/optuna.db), and sweeps that grow: real Ray, real Optuna storage, real
CIFAR-10 subset, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_report import cli

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: 300, val_fraction: 0.3}}
model: {{arch: tinynet}}
train: {{epochs: 2, batch_size: 32}}
search:
  lr: {{loguniform: [0.0005, 0.05]}}
searcher: {{num_samples: {n}, seed: {seed}, max_concurrent_trials: 1{extra}}}
scheduler: {{algorithm: asha, grace_period: 1, reduction_factor: 2}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
storage: {{path: {storage}}}
"""


def write_spec(tmp: Path, name: str, n: int, seed: int = 1, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, n=n, seed=seed, extra=extra, storage=tmp / "results"))
    return path


def study_trials(results: Path):
    import optuna

    meta = json.loads((results / "sweep.json").read_text())
    study = optuna.load_study(study_name=meta["sweep_id"], storage=f"sqlite:///{results / 'optuna.db'}")
    return study, study.get_trials(deepcopy=False)


def check_study_agrees(results: Path) -> list:
    """One study record per trial of trials.json (records of lost, rerun and warm-start trials aside), none
    RUNNING, states agreeing."""
    trials = json.loads((results / "trials.json").read_text())
    study, records = study_trials(results)
    assert study.user_attrs["sweep_id"] == json.loads((results / "sweep.json").read_text())["sweep_id"]
    own = [r for r in records if not r.user_attrs.get("lost") and "rerun_of" not in r.user_attrs
           and "warm_start_from" not in r.user_attrs]
    assert sorted(r.user_attrs["tune_trial_id"] for r in own) == sorted(trials)
    assert not [r for r in records if r.state.name in ("RUNNING", "WAITING")]
    expected = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}
    for r in own:
        t = trials[r.user_attrs["tune_trial_id"]]
        assert r.state.name == expected[t["status"]] or (t["status"] == "failed" and r.state.name == "COMPLETE")
        if r.state.name == "COMPLETE":
            assert r.value == pytest.approx(t["last"]["val_acc"])
        if r.state.name == "PRUNED":
            assert r.intermediate_values and r.value == pytest.approx(t["last"]["val_acc"])
    return own


def mlflow_children(results: Path, experiment: str, db: Path | None = None):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db or results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("ternsearch.role") == "trial"]
    return parents, children


@pytest.mark.slow
@pytest.mark.ray
def test_study_on_disk_and_a_grown_sweep(tmp_path, data_root):
    """2 trials, then num_samples 3 and --resume: 3 trials in Tune's records, the study and MLflow (one parent);
    the new trial was proposed by a sampler that had seen the first 2. Another change is refused, naming it.
    The first run had --tracking-uri; --resume alone goes on in that store (not a new default mlflow.db)."""
    spec = write_spec(tmp_path, "grow", 2)
    results = tmp_path / "results" / "grow"
    store = tmp_path / "elsewhere" / "mlflow.db"
    first = cli("sweep", str(spec), "--tracking-uri", "sqlite:///elsewhere/mlflow.db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(check_study_agrees(results)) == 2

    write_spec(tmp_path, "grow", 2, seed=5)
    refused = cli("sweep", str(spec), "--resume", cwd=tmp_path)
    assert refused.returncode == 1 and "changes searcher.seed" in refused.stderr.strip().splitlines()[-1]

    write_spec(tmp_path, "grow", 3)
    grown = cli("sweep", str(spec), "--resume", cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert json.loads(grown.stdout)["trials"] == 3
    assert len(json.loads((results / "trials.json").read_text())) == 3
    own = check_study_agrees(results)
    assert len(own) == 3
    newest = max(own, key=lambda r: r.number)
    assert newest.user_attrs["trials_before"] == 2
    assert json.loads(grown.stdout)["tracking_uri"] == f"sqlite:///{store}" and not (results / "mlflow.db").exists()
    parents, children = mlflow_children(results, "grow", db=store)
    assert len(parents) == 1 and len(children) == 3
    assert all(r.info.status == "FINISHED" for r in parents + children)


@pytest.mark.slow
@pytest.mark.ray
def test_stop_at_ends_the_sweep_and_resume_goes_on(tmp_path, data_root):
    """stop_at val_acc >= 0 is reached by the first trial's first epoch: the sweep ends there (exit 0, the reason in
    the summary, a best trial exported); --resume without stop_at samples the rest."""
    spec = write_spec(tmp_path, "target", 3, extra=", stop_at: {val_acc: 0.0}")
    results = tmp_path / "results" / "target"
    first = cli("sweep", str(spec), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["ended"].startswith("stop_at reached: trial ") and summary["trials"] == 1, summary
    assert "sweep ended: stop_at reached" in first.stderr and (results / "best.yaml").exists()
    (trial,) = json.loads((results / "trials.json").read_text()).values()
    assert trial["status"] == "stopped" and trial["reason"] == "stopped at epoch 1: stop_at reached", trial
    check_study_agrees(results)

    write_spec(tmp_path, "target", 3)
    resumed = cli("sweep", str(spec), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["trials"] == 3
    assert len(check_study_agrees(results)) == 3


@pytest.mark.slow
@pytest.mark.ray
def test_time_budget_stops_the_sweep_and_resume_continues(tmp_path, data_root):
    """A 4 s budget ends a 5-trial sweep early (a trial takes ~2 s here; exit 0, the reason and how to continue
    said); --resume, the budget taken out of the spec (a change --resume accepts), continues and runs the rest."""
    spec = write_spec(tmp_path, "budget", 5, extra=", time_budget: 4s")
    results = tmp_path / "results" / "budget"
    first = cli("sweep", str(spec), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["ended"] == "time_budget 4s spent" and summary["trials"] < 5, summary
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("sweep stopped: time_budget 4s spent: ") and f"sweep {spec} --resume" in last, last
    assert not (results / "best.yaml").exists()

    write_spec(tmp_path, "budget", 5)
    resumed = cli("sweep", str(spec), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["ended"] == "all 5 trials ran"
    trials = json.loads((results / "trials.json").read_text())
    assert len(trials) == 5 and all(t["status"] != "running" for t in trials.values())
    assert len(check_study_agrees(results)) == 5


@pytest.mark.slow
@pytest.mark.ray
def test_killed_driver_leaves_a_study_that_resume_makes_whole(tmp_path, data_root):
    """SIGKILL the sweep driver with one trial finished and one running, then --resume: the study holds one record
    per trial of trials.json (a trial the kill lost is FAIL with user attribute lost), none RUNNING."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = write_spec(tmp_path, "killed", 3)
    spec.write_text(spec.read_text().replace("epochs: 2", "epochs: 3"))
    results = tmp_path / "results" / "killed"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec)], cwd=tmp_path, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        end = time.time() + 300
        while time.time() < end:
            trials = json.loads((results / "trials.json").read_text()) if (results / "trials.json").exists() else {}
            states = [(t["status"], t["epochs"]) for t in trials.values()]
            if any(s != "running" for s, _ in states) and any(s == "running" and e >= 1 for s, e in states):
                break
            time.sleep(0.3)
        else:
            raise AssertionError("no finished and running trial at once")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _, records = study_trials(results)
    assert any(r.state.name == "RUNNING" for r in records)  # what the kill left
    time.sleep(3)  # let the orphaned Ray processes notice their driver is gone

    resumed = cli("sweep", str(spec), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(check_study_agrees(results)) == 3
    _, records = study_trials(results)
    lost = json.loads((results / "trials_lost.json").read_text()) if (results / "trials_lost.json").exists() else {}
    assert sorted(r.user_attrs["tune_trial_id"] for r in records if r.user_attrs.get("lost")) == sorted(lost)
    assert all(r.state.name == "FAIL" for r in records if r.user_attrs.get("lost"))


@pytest.mark.slow
@pytest.mark.ray
def test_warm_start_and_points(tmp_path, data_root):
    """A second sweep seeded from the first starts with the first's finished trials in its study; its points run
    first and in order, and the sampler's next proposal has seen all of them. A warm_start folder with no study is
    one line before Ray starts."""
    first_spec = write_spec(tmp_path, "first", 2)
    first = cli("sweep", str(first_spec), "-q", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    _, earlier = study_trials(tmp_path / "results" / "first")

    nowhere = write_spec(tmp_path, "nowhere", 3, extra=f", warm_start: [{tmp_path / 'nothing'}]")
    refused = cli("sweep", str(nowhere), cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"{nowhere}:8: searcher.warm_start[0]: {tmp_path / 'nothing'} holds no sweep.json and no optuna.db (give "
        "the results directory of an earlier sweep, one that kept its Optuna study)")

    extra = f", warm_start: [{tmp_path / 'results' / 'first'}], points: [{{lr: 0.001}}, {{lr: 0.002}}]"
    spec = write_spec(tmp_path, "second", 3, seed=2, extra=extra)
    second = cli("sweep", str(spec), "-q", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"warm start: 2 trials from {tmp_path / 'results' / 'first'}" in second.stderr
    results = tmp_path / "results" / "second"
    study, records = study_trials(results)
    seeded = [r for r in records if "warm_start_from" in r.user_attrs]
    assert [(r.state, r.params, r.value) for r in seeded] == [(r.state, r.params, r.value) for r in earlier]
    own = sorted(check_study_agrees(results), key=lambda r: r.number)
    assert [r.params["lr"] for r in own[:2]] == [0.001, 0.002]
    assert own[2].user_attrs["trials_before"] == 4
    trials = sorted(json.loads((results / "trials.json").read_text()).values(), key=lambda t: t["started"])
    assert [t["config"]["lr"] for t in trials[:2]] == [0.001, 0.002]
