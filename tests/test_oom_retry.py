"""Issue 22 item 7: a trial on a shared GPU (a fraction of one) retries an out-of-memory failure once, in its own
process, from the last checkpoint it saved; a second one, or one on a whole GPU, is the trial's result. Real
training on CIFAR-10 images through ``trainables.entry._train``; the GPU is the CPU here and the out-of-memory
error is raised where a GPU would raise it (``torch.OutOfMemoryError`` out of an epoch's training pass)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import trainables.loop
from trainables import entry
from trainables.config import TrainConfig
from trainables.failures import OutOfMemoryError
from trainables.setup import TrialSetup

pytestmark = pytest.mark.filterwarnings("ignore:.*retrying once:UserWarning")


def _cfg() -> TrainConfig:
    return TrainConfig.model_validate(
        {"data": {"subset": 600, "val_fraction": 0.2}, "model": {"arch": "tinynet"},
         "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 1, "threads": 1, "augment": "none"}})


def _setup(tmp: Path, gpus_per_worker: float) -> TrialSetup:
    return TrialSetup(base=_cfg().model_dump(mode="json"), mode="function", workers=1, use_gpu=True,
                      cpus_per_worker=1, gpus_per_worker=gpus_per_worker, storage_path=str(tmp),
                      trial_dir_root=str(tmp), max_failures=0, keep_checkpoints=2, placement_strategy="PACK",
                      objectives=(("val_acc", "max"),))


class Trial:
    """What Ray does with a function trial's results: it keeps each checkpoint in the trial's directory."""

    def __init__(self, tmp: Path):
        self.dir, self.results = tmp / "trial", []
        self.dir.mkdir()

    def send(self, metrics: dict, ckpt_dir) -> None:
        self.results.append(dict(metrics))
        if ckpt_dir is not None:
            shutil.copytree(ckpt_dir, self.dir / f"checkpoint_{len(self.results):06d}")

    def stored(self) -> list[str]:
        return sorted((str(p) for p in self.dir.glob("checkpoint_*")), reverse=True)


@pytest.fixture
def oom_at_epoch_2(monkeypatch):
    """``times`` out-of-memory errors out of epoch 2's training pass, then none; the device is the CPU."""
    real = trainables.loop.train_epoch
    left = {"times": 0}

    def train_epoch(t, epoch, on_batch):
        if epoch == 2 and left["times"] > 0:
            left["times"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(t, epoch, on_batch)

    monkeypatch.setattr(trainables.loop, "train_epoch", train_epoch)
    monkeypatch.setattr(entry, "trial_device", lambda setup, train_worker=False: torch.device("cpu"))
    return left


def _straight(tmp: Path) -> list[dict]:
    trial = Trial(tmp / "straight")
    entry._train(_cfg(), _setup(tmp, 1.0), trial.send, [], 0, refind=trial.stored)
    return trial.results


def test_one_out_of_memory_on_a_shared_gpu_is_retried_from_the_last_checkpoint(tmp_path, data_root,
                                                                                 oom_at_epoch_2):
    (tmp_path / "straight").mkdir()
    straight = _straight(tmp_path)
    oom_at_epoch_2["times"] = 1
    trial = Trial(tmp_path)
    with pytest.warns(UserWarning, match="out of memory in epoch 2 .* retrying once from the last checkpoint"):
        entry._train(_cfg(), _setup(tmp_path, 0.5), trial.send, [], 0, refind=trial.stored)
    assert oom_at_epoch_2["times"] == 0
    assert [r["epoch"] for r in trial.results] == [1, 2, 3]  # epoch 1 was not trained again
    assert not any("failed" in r for r in trial.results)
    # Resumed from epoch 1's checkpoint, the run is the one that never failed (CPU training is deterministic).
    assert trial.results[-1]["val_acc"] == straight[-1]["val_acc"]
    assert trial.results[-1]["train_loss"] == straight[-1]["train_loss"]


def test_a_second_out_of_memory_is_the_trials_result(tmp_path, data_root, oom_at_epoch_2):
    oom_at_epoch_2["times"] = 2
    trial = Trial(tmp_path)
    with pytest.warns(UserWarning, match="retrying once"), pytest.raises(OutOfMemoryError, match="epoch 2"):
        entry._train(_cfg(), _setup(tmp_path, 0.5), trial.send, [], 0, refind=trial.stored)
    assert oom_at_epoch_2["times"] == 0
    last = trial.results[-1]
    assert last["failed"].startswith("out of memory in epoch 2") and last["val_acc"] == 0.0
    assert (Path(trial.stored()[0]) / "manifest.json").read_text().count("OutOfMemoryError") == 1


def test_an_out_of_memory_on_a_whole_gpu_is_not_retried(tmp_path, data_root, oom_at_epoch_2):
    oom_at_epoch_2["times"] = 1
    trial = Trial(tmp_path)
    with pytest.raises(OutOfMemoryError, match="epoch 2"):
        entry._train(_cfg(), _setup(tmp_path, 1.0), trial.send, [], 0, refind=trial.stored)
    assert [r["epoch"] for r in trial.results] == [1, 2]
    assert "failed" in trial.results[-1]
