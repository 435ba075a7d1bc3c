"""End-to-end sweeps through the real CLI: real local Ray, real SQLite MLflow store, real CIFAR-10 images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers_report import NAME, cli, real_sweep

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64}}
search:
  lr: {{loguniform: [0.0001, 0.3]}}
  augment: {{choice: [standard, mixup]}}
  mixup_alpha: {{uniform: [0.1, 0.5], when: {{augment: [mixup]}}}}
searcher: {{num_samples: {n}, seed: 3, max_concurrent_trials: {conc}}}
scheduler: {{algorithm: asha, grace_period: 1, reduction_factor: 2}}
resources: {{workers_per_trial: {workers}, cpus_per_worker: 1}}
storage: {{path: {storage}}}
"""


def _sweep(tmp: Path, name: str, n: int, conc: int, workers: int = 1) -> tuple[dict, Path]:
    spec = tmp / f"{name}.yaml"
    spec.write_text(SPEC.format(name=name, n=n, conc=conc, workers=workers, storage=tmp / "results"))
    proc = cli("sweep", str(spec), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    return summary, tmp / "results" / name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    """The session's shared real sweep (tests/helpers_report.py, also read by the report and browser tests):
    6 sequential trials, so ASHA's decisions are deterministic, one of them diverging."""
    return real_sweep(tmp_path_factory)


def _runs(results: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, runs


def test_every_trial_reported(sweep):
    _, summary, results = sweep
    trials = json.loads((results / "trials.json").read_text())
    assert summary["trials"] == len(trials) == 6
    assert [t["config"]["lr"] for t in trials.values() if t["status"] == "failed"] == [100.0]  # diverged
    assert all(t["status"] in ("completed", "stopped") for t in trials.values() if t["config"]["lr"] != 100.0)
    assert any(t["reason"].startswith("stopped by ASHA at epoch") for t in trials.values()), trials
    assert any(t["status"] == "completed" and t["epochs"] == 3 for t in trials.values())
    history = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    for t in trials.values():
        epochs = sorted(r["epoch"] for r in history if r["trial_id"] == t["trial_id"])
        assert epochs == list(range(1, t["epochs"] + 1))


def test_mlflow_parent_and_children(sweep):
    _, summary, results = sweep
    client, runs = _runs(results)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 6 and len(runs) == 7
    assert all(r.info.status != "RUNNING" for r in runs)
    trials = json.loads((results / "trials.json").read_text())
    for child in children:
        trial = trials[child.data.tags["ternsearch.trial_id"]]
        assert "lr" in child.data.params
        if trial["status"] == "failed":
            assert child.info.status == "FAILED"
            continue
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")]
        assert steps == list(range(1, trial["epochs"] + 1))
        assert "ternary_zero_frac" in child.data.metrics


def test_best_model_loads_and_predicts(sweep, data_root, monkeypatch):
    import mlflow.pytorch
    import torch

    from trainables.augment import normalize
    from trainables.data import load_cifar10

    _, summary, results = sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{results / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(summary["model_uri"])
    x, y = load_cifar10(str(data_root), train=False)
    with torch.no_grad():
        logits = model(normalize(x[:64]))
    assert logits.shape == (64, 10) and torch.isfinite(logits).all()


def test_export_then_retrain_registers_the_model(sweep, data_root, monkeypatch):
    """export -> a config for all 50,000 training images -> `ternsearch train` -> an MLflow run linked to the
    sweep, whose model is a new version of the sweep's registered model and gives the logged test accuracy."""
    import mlflow.pytorch
    import torch
    import yaml

    from ternsearch.spec import load_train_file
    from trainables.augment import normalize
    from trainables.data import load_cifar10, split_indices
    from trainables.packed import load_packed
    from trainables.restore import model_from_checkpoint

    tmp, summary, results = sweep
    best = tmp / "best.yaml"
    proc = cli("export", str(results), "-o", str(best), "--epochs", "1", "--packed", str(tmp / "best.tern"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    # The packed model: the best trial's checkpoint at 2 bits a weight, the checkpoint model's logits. Not
    # bit for bit: TWN's scale is an fp32 sum whose last bit depends on how many threads computed it, and this
    # process may have another thread count than the export's (a test before set it; tests/test_packed.py
    # checks bit-identical logits where both sides are quantized alike).
    assert f"{tmp / 'best.tern'}: " in proc.stdout and "smaller than the fp32 state_dict" in proc.stdout
    packed, _ = load_packed(tmp / "best.tern")
    best_trial = json.loads((results / "trials.json").read_text())[summary["best_trial"]]
    model, _ = model_from_checkpoint(best_trial["checkpoint"])
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=0, atol=1e-5)
    # The exported file itself trains on the whole training set.
    doc = yaml.safe_load(best.read_text())
    assert doc["train"]["epochs"] == 1 and doc["data"]["val_fraction"] == 0 and "subset" not in doc["data"]
    data = load_train_file(best).base_config().data
    train_idx, val_idx = split_indices(load_cifar10(str(data_root), train=True)[1], data.val_fraction, data.subset,
                                       data.split_seed)
    assert (len(train_idx), len(val_idx)) == (50_000, 0)
    # One epoch on 50,000 images takes minutes on 2 cores: retrain a copy on 600 of them, still holding none out.
    doc["data"]["subset"] = 600
    small = tmp / "best-600.yaml"
    small.write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = cli("train", str(small), "-o", str(tmp / "retrain"), "-q", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout)
    assert final["epoch"] == 1 and final["eval_on"] == "train" and 0.0 <= final["test_acc"] <= 1.0

    client, runs = _runs(results)
    [run] = [r for r in runs if r.data.tags.get("ternsearch.sweep_parent_run_id")]
    sweep_run = json.loads((results / "sweep.json").read_text())["parent_run_id"]
    assert run.info.run_id == final["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["ternsearch.sweep_parent_run_id"] == sweep_run
    assert run.data.tags["ternsearch.eval_on"] == "train"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1]
    uri = run.data.tags["ternsearch.model_uri"]
    assert uri == f"models:/{NAME}/2" and summary["model_uri"] == f"models:/{NAME}/1"  # after the sweep's best
    version = client.get_model_version(NAME, "2")
    assert version.run_id == run.info.run_id
    assert float(version.tags["test_acc"]) == run.data.metrics["test_acc"] == final["test_acc"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "packed")] == [f"packed/{doc['name']}.tern"]
    # The registered model, loaded as a user would, gives the logged test accuracy on the 10,000 test images.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{results / 'mlflow.db'}")
    loaded = mlflow.pytorch.load_model(uri)
    x, y = load_cifar10(str(data_root), train=False)
    with torch.no_grad():
        correct = sum(int((loaded(normalize(x[i:i + 1000])).argmax(1) == y[i:i + 1000]).sum())
                      for i in range(0, len(y), 1000))
    assert correct / len(y) == pytest.approx(run.data.metrics["test_acc"], abs=2 / len(y))


def test_ddp_trial_two_ranks_see_different_data(tmp_path, data_root):
    summary, results = _sweep(tmp_path, "ddp", n=1, conc=1, workers=2)
    (trial,) = json.loads((results / "trials.json").read_text()).values()
    assert trial["status"] == "completed" and trial["last"]["world_size"] == 2
    digests = trial["last"]["shard_digest"].split(",")
    assert len(digests) == 2 and digests[0] != digests[1]
    from test_tensorboard import read_events  # TensorBoard's reader: rank 0 of the DDP trial wrote every epoch

    events = read_events(results / "tune" / f"trial_{trial['trial_id']}")
    assert [e.step for e in events.Scalars("accuracy/val")] == list(range(1, trial["epochs"] + 1))
