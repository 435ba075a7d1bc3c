"""Per-image policies in CPU DataLoader workers (issue 22, item 9; trainables.augment_workers): selected by the
device (auto: CUDA only), forced here on CPU with data.augment_workers. Every batch has its own seeds, so 1 and 2
workers train the same model and a resumed run ends where the uninterrupted one does. Real CIFAR-10 images."""

from __future__ import annotations

import shutil

import pytest
import torch

from trainables.augment_workers import resolve_workers
from trainables.config import TrainConfig
from trainables.loop import run


def _cfg(workers, epochs: int = 2, augment: str = "autoaugment") -> TrainConfig:
    return TrainConfig.model_validate(
        {"data": {"subset": 200, "val_fraction": 0.2, "augment_workers": workers}, "model": {"arch": "tinynet"},
         "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "seed": 1, "threads": 1, "augment": augment}})


def test_auto_uses_workers_on_cuda_only_and_for_per_image_policies():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_workers("auto", "autoaugment", cpu) == 0
    assert resolve_workers("auto", "standard", cuda) == 0
    assert resolve_workers("auto", "randaugment", cuda) >= 1
    assert resolve_workers(2, "randaugment", cpu) == 2
    assert resolve_workers(2, "cutmix", cpu) == 0  # a batched policy stays in the loop


def test_bad_worker_counts_are_refused():
    from pydantic import ValidationError

    for bad in (-1, 33, "many"):
        with pytest.raises(ValidationError):
            _cfg(bad)


@pytest.mark.slow  # ~40 s on 2 busy cores: four short runs, each starting worker processes per epoch
def test_workers_train_the_same_model_with_1_or_2_and_resume_exactly(tmp_path, data_root):
    kept = []

    def keep(metrics, ckpt_dir):
        kept.append(shutil.copytree(ckpt_dir, tmp_path / f"e{metrics['epoch']}"))

    one = run(_cfg(1), None)
    two = run(_cfg(2), keep)
    inline = run(_cfg(0), None)
    assert one["train_loss"] == two["train_loss"] and one["val_loss"] == two["val_loss"], (one, two)
    assert inline["train_loss"] != one["train_loss"]  # other draws than the inline path (documented)
    resumed = run(_cfg(2), None, resume_from=kept[0])  # epoch 2 again, from epoch 1's checkpoint
    assert resumed["train_loss"] == two["train_loss"] and resumed["val_loss"] == two["val_loss"], (resumed, two)
