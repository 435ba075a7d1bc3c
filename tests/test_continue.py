"""Continuing a run to more epochs on real CIFAR-10 (tinynet, small subset): through the loop for every schedule,
and through `ternsearch train --resume DIR --epochs N`, which also keeps and evaluates the best epoch."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ternsearch.cli import main
from ternsearch.run.train import evaluate_test
from trainables.checkpoint import latest_checkpoint, load_checkpoint
from trainables.config import TrainConfig
from trainables.loop import run

EXTRA = {"step": dict(step_every=1, step_gamma=0.5), "cosine_restarts": dict(restart_epochs=1),
         "cyclic": dict(cycle_epochs=2), "plateau": dict(plateau_patience=0), "none": {}}


def _cfg(schedule: str, epochs: int, **train) -> TrainConfig:
    base = {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 1, "threads": 2, "schedule": schedule,
            "warmup_epochs": 1, **EXTRA.get(schedule, {}), **train}
    return TrainConfig.model_validate({"data": {"subset": 320, "val_fraction": 0.2},
                                       "model": {"arch": "tinynet"}, "train": base})


class _Keep:
    """A report callback that keeps metrics and copies every checkpoint; ``stop_after`` interrupts the run."""

    def __init__(self, root, stop_after: int = 0):
        self.root, self.stop_after, self.metrics, self.ckpts = root, stop_after, [], []

    def __call__(self, metrics, ckpt_dir):
        self.metrics.append(metrics)
        dest = self.root / f"epoch_{metrics['epoch']:04d}"
        shutil.copytree(ckpt_dir, dest)
        self.ckpts.append(dest)
        if metrics["epoch"] == self.stop_after:
            raise _Interrupt()


class _Interrupt(Exception):
    pass


def _flat(m):
    return {k: v for k, v in m.items() if k not in ("images_per_sec", "epoch_seconds") and not k.endswith("_unix")}


def _same_weights(a_dir, b_dir) -> None:
    a, b = load_checkpoint(a_dir)[0]["model"], load_checkpoint(b_dir)[0]["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("schedule", sorted(EXTRA))
def test_continued_run_equals_the_longer_run(tmp_path, data_root, schedule):
    """A finished 2-epoch run continued to 4 equals a 4-epoch run: same metrics, weights bit for bit."""
    straight = _Keep(tmp_path / "a")
    run(_cfg(schedule, 4), straight)
    first = _Keep(tmp_path / "b")
    run(_cfg(schedule, 2), first)
    continued = _Keep(tmp_path / "c")
    run(_cfg(schedule, 4), continued, resume_from=first.ckpts[-1])
    assert [m["epoch"] for m in continued.metrics] == [3, 4]
    assert [_flat(m) for m in continued.metrics] == [_flat(m) for m in straight.metrics[2:]]
    _same_weights(straight.ckpts[-1], continued.ckpts[-1])


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_lengthened_run_anneals_on_and_resumes_exactly(tmp_path, data_root, schedule):
    """A 3-epoch run interrupted after epoch 2 and lengthened to 4 continues from its LR without a jump, anneals
    towards zero, and the continued run, interrupted after epoch 3 and resumed, ends where it would have."""
    first = _Keep(tmp_path / "a", stop_after=2)
    with pytest.raises(_Interrupt):
        run(_cfg(schedule, 3), first)
    continued = _Keep(tmp_path / "b")
    run(_cfg(schedule, 4), continued, resume_from=first.ckpts[-1])
    lrs = [m["lr"] for m in first.metrics + continued.metrics]  # the LR the next step uses, after each epoch
    assert lrs[1] > lrs[2] > lrs[3] >= 0.0 and lrs[2] > 0.01 * lrs[1]  # continuous: it goes on down from there
    assert lrs[3] < 1e-3 * 0.05
    interrupted = _Keep(tmp_path / "c", stop_after=3)
    with pytest.raises(_Interrupt):
        run(_cfg(schedule, 4), interrupted, resume_from=first.ckpts[-1])
    resumed = _Keep(tmp_path / "d")
    run(_cfg(schedule, 4), resumed, resume_from=interrupted.ckpts[-1])  # its checkpoint says 4 epochs now
    assert _flat(resumed.metrics[-1]) == _flat(continued.metrics[-1])
    _same_weights(continued.ckpts[-1], resumed.ckpts[-1])


CONFIG = """\
name: cont
metric: {name: train_loss, mode: max}
data: {subset: 400, val_fraction: 0.2}
model: {arch: tinynet}
train: {epochs: 2, batch_size: 64, threads: 2, schedule: onecycle}
"""


@pytest.mark.slow
def test_cli_continues_a_finished_onecycle_run_and_evaluates_the_best_epoch(tmp_path, data_root, capsys):
    """The reported failure (a finished onecycle run resumed with --epochs 4) now continues; the best epoch's
    checkpoint (the metric is train_loss, max: epoch 1) is kept from pruning and is what the test set sees."""
    cfg, out = tmp_path / "run.yaml", tmp_path / "out"
    cfg.write_text(CONFIG)
    assert main(["train", str(cfg), "-o", str(out), "-q"]) == 0
    assert main(["train", str(cfg), "--resume", str(out), "--epochs", "4", "-q"]) == 0
    captured = capsys.readouterr()
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    lrs = [h["lr"] for h in history]
    assert lrs[1] >= lrs[2] >= lrs[3]  # onecycle annealed on from where epoch 2 left it
    assert max(h["train_loss"] for h in history) == history[0]["train_loss"]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_0001", "epoch_0003", "epoch_0004"]
    assert latest_checkpoint(out) == ckpts / "epoch_0004"  # resume still finds the newest
    final = json.loads((out / "final_metrics.json").read_text())
    assert (final["evaluated_checkpoint"], final["evaluated_epoch"], final["evaluated_as"]) == (
        str(ckpts / "epoch_0001"), 1, "best")
    assert final["epoch"] == 4 and final["best_epoch"] == 1
    assert final["test_acc"] == evaluate_test(ckpts / "epoch_0001")["test_acc"]
    assert "test evaluation on the best epoch (1, by train_loss " in captured.err
    assert load_checkpoint(ckpts / "epoch_0004")[1]["config"]["train"]["epochs"] == 4

    assert main(["train", str(cfg), "--resume", str(out), "--epochs", "4", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{out}: already trained 4 epochs, nothing to do for train.epochs 4; to continue it, pass "
                   "--epochs N with N > 4"]
