"""The full retraining: `ternsearch export` writes a config for the whole training set (`--keep-split` keeps the
sweep's split), and a train file with `data.val_fraction: 0` trains with its val_* metrics on the training images.
Real CIFAR-10, the real CLI (`ternsearch.cli.main`); the export-train-MLflow round trip on a real sweep is in
tests/test_sweep.py (`test_export_then_retrain_registers_the_model`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ternsearch.cli import main
from trainables.config import TrainConfig

BASE = {"name": "tiny", "data": {"subset": 600, "val_fraction": 0.2}, "model": {"arch": "tinynet"},
        "train": {"epochs": 3, "batch_size": 64}}


def _results(tmp_path: Path) -> Path:
    """A sweep's results directory as the sweep writes it (sweep.json, trials.json), one completed trial."""
    results = tmp_path / "results" / "tiny"
    results.mkdir(parents=True)
    (results / "sweep.json").write_text(json.dumps({
        "name": "tiny", "metric": "val_acc", "mode": "max", "base": TrainConfig.model_validate(BASE).model_dump(
            mode="json"), "tracking_uri": None, "experiment": "tiny"}))
    (results / "trials.json").write_text(json.dumps({"t1": {
        "trial_id": "t1", "status": "completed", "config": {"lr": 0.05}, "last": {"epoch": 3, "val_acc": 0.41}}}))
    return results


def _export(tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "best.yaml"
    assert main(["export", str(_results(tmp_path)), "-o", str(out), *extra]) == 0
    text = out.read_text()
    return text, yaml.safe_load(text)


def test_export_trains_on_all_50000_training_images_by_default(tmp_path, data_root):
    from ternsearch.spec import load_train_file
    from trainables.data import load_cifar10, split_indices

    text, doc = _export(tmp_path)
    assert doc["data"]["val_fraction"] == 0 and "subset" not in doc["data"]
    assert doc["train"]["lr"] == 0.05 and doc["train"]["epochs"] == 3
    assert text.splitlines()[1].startswith("# Trains on the whole training set (50,000 images, no validation "
                                           "split): the per-epoch val_* metrics are measured on the training images")
    data = load_train_file(tmp_path / "best.yaml").base_config().data  # the file `ternsearch train` reads
    train_idx, val_idx = split_indices(load_cifar10(str(data_root), train=True)[1], data.val_fraction, data.subset,
                                       data.split_seed)
    assert len(train_idx) == 50_000 and len(val_idx) == 0


def test_export_keep_split_keeps_the_sweeps_subset_and_split(tmp_path):
    text, doc = _export(tmp_path, "--keep-split")
    assert doc["data"]["val_fraction"] == 0.2 and doc["data"]["subset"] == 600
    assert text.splitlines()[1] == ("# Trains on the sweep's split: 480 of 600 images (data.subset 600), 120 held "
                                    "out for validation (val_fraction 0.2).")


def test_val_fraction_0_is_for_train_files_only(tmp_path, capsys):
    """The same document is a valid train file and a refused sweep (one line; tests/bad_specs/51, 52 too)."""
    train = tmp_path / "train.yaml"
    train.write_text("name: full\ndata: {val_fraction: 0}\nmodel: {arch: tinynet}\n")
    assert main(["validate", str(train)]) == 0
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(train.read_text() + "search:\n  lr: {loguniform: [0.01, 0.5]}\n")
    capsys.readouterr()
    assert main(["validate", str(sweep)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{sweep}:2: data.val_fraction: 0 holds out no validation images (a sweep compares "
                                "trials on a validation split: use a value > 0 and < 1; val_fraction 0 is for train "
                                "files, such as the full retraining `ternsearch export` writes)"]


def test_split_without_validation_evaluates_on_the_training_images(data_root):
    from trainables.config import DataConfig
    from trainables.data import make_split

    split = make_split(DataConfig(root=str(data_root), val_fraction=0.0, subset=600))
    assert split.eval_on == "train" and split.train_x.shape[0] == 600
    assert split.val_x is split.train_x and split.val_y is split.train_y
    assert make_split(DataConfig(root=str(data_root), val_fraction=0.2, subset=600)).eval_on == "val"


@pytest.mark.slow  # one tinynet epoch on 600 images plus the test set: 30-80 s on the shared 2 cores
def test_train_file_with_val_fraction_0_trains_and_says_its_val_metrics_are_on_train(tmp_path, data_root, capsys):
    import torch

    from trainables.data import make_split
    from trainables.evaluate import evaluate
    from trainables.restore import model_from_checkpoint

    cfg = tmp_path / "full.yaml"
    cfg.write_text("name: full\ndata: {subset: 600, val_fraction: 0}\nmodel: {arch: tinynet}\n"
                   "train: {epochs: 1, batch_size: 64, threads: 2}\n")
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(cfg), "-o", str(out), "-q"]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final["epoch"] == 1 and final["eval_on"] == "train" and 0.0 <= final["test_acc"] <= 1.0
    [row] = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert row["eval_on"] == "train"
    # val_acc is the final model's accuracy on the 600 training images, without augmentation.
    model, run_cfg = model_from_checkpoint(out / "checkpoints" / "epoch_0001")
    split = make_split(run_cfg.data)
    with torch.no_grad():
        _, acc = evaluate(model, split.train_x, split.train_y)
    assert acc == pytest.approx(row["val_acc"], abs=2 / 600)
