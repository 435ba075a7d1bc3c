"""TensorBoard event files of runs and trials, read back with TensorBoard's own reader (``EventAccumulator``); the
server itself is driven in tests/test_tensorboard_server.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers_report import real_sweep
from trainables.config import TrainConfig
from trainables.events import HISTOGRAM_EVERY, LAYER_STATS, SCALARS, histogram_epoch, scalar_tags

def read_events(run_dir: Path):
    """TensorBoard's reader on ``run_dir``, every event kept (its default samples scalars and histograms)."""
    from tensorboard.backend.event_processing import event_accumulator as ea  # tensorboard: tests that read only

    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    return acc


def _layers(metrics: dict) -> set[str]:
    return {key.split("/")[1] for key in metrics if key.startswith("ternary/")}


def _expected_scalars(layers: set[str]) -> set[str]:
    return set(SCALARS.values()) | {f"ternary_{stat}/{layer}" for stat in LAYER_STATS for layer in layers}


def test_scalar_tags_and_histogram_epochs():
    metrics = {"train_loss": 1.5, "val_acc": 0.25, "epoch": 3, "shard_digest": "ab", "ternary/l1.conv/zero_frac": 0.4,
               "ternary/l1.conv/scale": 0.02, "ternary/l1.conv/numel": 9.0}
    assert scalar_tags(metrics) == {"loss/train": 1.5, "accuracy/val": 0.25, "ternary_zero_frac/l1.conv": 0.4,
                                    "ternary_scale/l1.conv": 0.02}
    assert [e for e in range(1, 13) if histogram_epoch(e, 1, e == 12)] == [1, HISTOGRAM_EVERY, 10, 12]
    assert [e for e in range(3, 8) if histogram_epoch(e, 3, False)] == [3, HISTOGRAM_EVERY]


def _cfg(epochs: int) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"subset": 320, "val_fraction": 0.2}, "model": {"arch": "tinynet"},
                                       "train": {"epochs": epochs, "batch_size": 64, "seed": 1, "threads": 2}})


def test_loop_writes_every_epoch_once_across_a_resume(tmp_path, data_root):
    """A run writes epochs 1-3, then dies before its epoch-3 checkpoint is kept; resumed from epoch 2's, it writes
    epoch 3 again into a second file, and TensorBoard's reader shows each epoch once: the resumed run's value."""
    import shutil

    from trainables.loop import run

    kept, metrics, events = [], [], tmp_path / "events"

    def keep(m, ckpt_dir):
        metrics.append(m)
        if ckpt_dir:
            kept.append(shutil.copytree(ckpt_dir, tmp_path / f"ckpt_{len(kept)}"))

    run(_cfg(3), keep, events_dir=events)
    resumed_at = time.time()
    run(_cfg(3), keep, resume_from=kept[1], events_dir=events)
    assert len(list(events.glob("events.out.tfevents.*"))) == 2
    acc, layers = read_events(events), _layers(metrics[-1])
    assert len(layers) >= 2 and set(acc.Tags()["scalars"]) == _expected_scalars(layers)
    for tag in acc.Tags()["scalars"]:
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    resumed = metrics[:2] + metrics[3:]  # epoch 3 of the first run is the purged one
    assert [e.value for e in acc.Scalars("accuracy/val")] == pytest.approx([m["val_acc"] for m in resumed])
    assert [e.value for e in acc.Scalars("lr/lr")] == pytest.approx([m["lr"] for m in resumed])
    assert acc.Scalars("loss/train")[2].wall_time >= resumed_at > acc.Scalars("loss/train")[1].wall_time
    # histograms: the first epoch and the last; the resumed run's first epoch is its last, written once
    assert set(acc.Tags()["histograms"]) == {f"latent_weights/{layer}" for layer in layers}
    for tag in acc.Tags()["histograms"]:
        assert [h.step for h in acc.Histograms(tag)] == [1, 3], tag
        assert acc.Histograms(tag)[0].histogram_value.num > 0


def check_run_events(out: Path) -> None:
    """``ternsearch train``'s run directory ``out`` holds one value an epoch of every scalar, as its history.jsonl
    has them, and histograms at each run's first and last epoch (tests/test_train_cli.py: 1 epoch, resumed to 2)."""
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    acc = read_events(out)
    layers = {key.split("/")[1] for key in acc.Tags()["scalars"] if key.startswith("ternary_zero_frac/")}
    assert len(layers) >= 2 and set(acc.Tags()["scalars"]) == _expected_scalars(layers)
    assert [e.step for e in acc.Scalars("loss/train")] == [h["epoch"] for h in history]
    assert [e.value for e in acc.Scalars("loss/train")] == pytest.approx([h["train_loss"] for h in history])
    assert [e.value for e in acc.Scalars("accuracy/val")] == pytest.approx([h["val_acc"] for h in history])
    assert {h.step for tag in acc.Tags()["histograms"] for h in acc.Histograms(tag)} == {h["epoch"] for h in history}


@pytest.mark.slow
@pytest.mark.ray
def test_every_trial_of_a_sweep_writes_its_events(tmp_path_factory, data_root):
    """The shared real sweep (tests/helpers_report.py): each trial's directory holds its epochs, ASHA-stopped
    trials up to their rung, the diverged one none (it failed inside its first epoch); Tune's own logger none."""
    _, _, results = real_sweep(tmp_path_factory)
    trials = json.loads((results / "trials.json").read_text())
    history = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    for tid, trial in trials.items():
        trial_dir = results / "tune" / f"trial_{tid}"
        acc = read_events(trial_dir)
        # Tune's own TensorBoard logger is off (its CSV and JSON loggers are kept): one writer a run
        assert (trial_dir / "result.json").is_file() and (trial_dir / "progress.csv").is_file()
        if trial["status"] == "failed":
            assert not list(trial_dir.glob("events.out.tfevents.*")), trial  # so TensorBoard lists no empty run
            continue
        epochs = list(range(1, trial["epochs"] + 1))
        assert [e.step for e in acc.Scalars("accuracy/val")] == epochs, trial
        rows = sorted((r["epoch"], r["val_acc"]) for r in history if r["trial_id"] == tid and not r.get("replayed"))
        assert [e.value for e in acc.Scalars("accuracy/val")] == pytest.approx([value for _, value in rows])
        assert len(acc.Tags()["scalars"]) > len(SCALARS)  # the per-layer fractions and scales
        hist_steps = {h.step for tag in acc.Tags()["histograms"] for h in acc.Histograms(tag)}
        assert hist_steps == ({1, 3} if trial["status"] == "completed" else {1}), trial
