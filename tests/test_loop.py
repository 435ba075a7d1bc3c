"""The training loop on real CIFAR-10, without Ray: resume exactness, learning, checkpoints, precision paths."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from trainables.checkpoint import load_checkpoint
from trainables.config import TrainConfig
from trainables.device import resolve_precision
from trainables.failures import DivergedError
from trainables.loop import run
from trainables.restore import model_from_checkpoint


def _cfg(model: dict | None = None, subset: int = 640, **train) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 3, "threads": 2}
    base.update(train)
    return TrainConfig.model_validate(
        {"data": {"subset": subset, "val_fraction": 0.2}, "model": {"arch": "tinynet", **(model or {})},
         "train": base}
    )


class _Keep:
    """A report callback that keeps metrics and copies every checkpoint."""

    def __init__(self, root):
        self.root, self.metrics, self.ckpts = root, [], []

    def __call__(self, metrics, ckpt_dir):
        self.metrics.append(metrics)
        if ckpt_dir:
            dest = self.root / f"epoch_{metrics['epoch']}"
            shutil.copytree(ckpt_dir, dest)
            self.ckpts.append(dest)


def _flat(m):
    return {k: v for k, v in m.items() if k not in ("images_per_sec", "epoch_seconds") and not k.endswith("_unix")}


@pytest.mark.parametrize("augment,quantizer,schedule,ramp", [
    ("standard", "twn", "onecycle", 0), ("mixup", "twn", "onecycle", 0), ("standard", "ttq", "onecycle", 0),
    ("standard", "twn", "plateau", 0), ("standard", "twn", "cosine", 2), ("fp16", "twn", "cosine", 0)])
def test_resume_is_exact(tmp_path, data_root, augment, quantizer, schedule, ramp):
    """Interrupted after epoch 2 and resumed: the same metrics and weights as straight through. With ramp 2,
    quantization switches on at epoch 2 at half strength and is full in epoch 3, across the resume."""
    fp16 = augment == "fp16"  # fp16 autocast with its GradScaler, whose state must resume too (CPU fp16 is slow)
    cfg = _cfg({"quantizer": quantizer}, subset=160 if fp16 else 640, augment="standard" if fp16 else augment,
               schedule=schedule, warmup_epochs=1,
               label_smoothing=0.1, early_stop_patience=5, plateau_patience=0, quantize_from_epoch=2 if ramp else 1,
               ramp_epochs=ramp, precision="fp16" if fp16 else "auto", batch_size=32 if fp16 else 64)
    _assert_resumes_exactly(tmp_path, cfg)


# bf16 autocast (no GradScaler), the step schedule, Adam and AdamW, cosine to min_lr after a warm-up, and
# CutMix-or-MixUp: each a full run, and interrupted after epoch 2 and resumed, end alike.
MORE = {"bf16": dict(precision="bf16"),
        "step-adamw": dict(schedule="step", step_every=1, optimizer="adamw", lr=0.005),
        "step-adam": dict(schedule="step", step_every=2, step_gamma=0.5, optimizer="adam", lr=0.005),
        "cosine-min_lr": dict(schedule="cosine", warmup_epochs=1, min_lr=0.01, ternary_lr_ratio=0.5),
        "cutmix_mixup": dict(augment="cutmix_mixup")}


@pytest.mark.parametrize("name", sorted(MORE))
def test_resume_is_exact_for(tmp_path, data_root, name):
    straight = _assert_resumes_exactly(tmp_path, _cfg(subset=320, **MORE[name]))
    last = straight.metrics[-1]
    assert math.isfinite(last["train_loss"])
    _, manifest = load_checkpoint(straight.ckpts[-1])
    assert manifest["precision"] == ("bf16" if name == "bf16" else "fp32")
    if name == "cosine-min_lr":  # the last epoch ends on the floor: min_lr, and min_lr x ternary_lr_ratio
        assert last["lr"] == pytest.approx(0.01) and last["ternary_lr"] == pytest.approx(0.005)
    if name.startswith("step"):  # StepLR drops by step_gamma every step_every epochs
        drops = 3 // MORE[name]["step_every"]
        assert last["lr"] == pytest.approx(0.005 * MORE[name].get("step_gamma", 0.1) ** drops)


def _assert_resumes_exactly(tmp_path, cfg: TrainConfig) -> "_Keep":
    """Run ``cfg`` straight, and interrupted after epoch 2 then resumed: the same last metrics and weights."""
    straight = _Keep(tmp_path / "a")
    run(cfg, straight)
    first = _Keep(tmp_path / "b")
    with pytest.raises(_Interrupt):  # the first run dies after its second epoch
        run(cfg, _StopAfter(first, 2))
    resumed = _Keep(tmp_path / "c")
    run(cfg, resumed, resume_from=first.ckpts[1])
    assert [m["epoch"] for m in resumed.metrics] == [3]
    assert _flat(resumed.metrics[-1]) == _flat(straight.metrics[-1])
    a, _ = load_checkpoint(straight.ckpts[-1])
    b, _ = load_checkpoint(resumed.ckpts[-1])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["early_stop"] == b["early_stop"]
    return straight


class _StopAfter:
    """Report callback that interrupts the run after ``n`` epochs (like a killed process)."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def __call__(self, metrics, ckpt_dir):
        self.inner(metrics, ckpt_dir)
        if metrics["epoch"] >= self.n:
            raise _Interrupt()


class _Interrupt(Exception):
    pass


def test_metrics_reported_each_epoch(tmp_path, data_root):
    keep = _Keep(tmp_path)
    run(_cfg(epochs=2, augment="cutmix"), keep)
    assert [m["epoch"] for m in keep.metrics] == [1, 2]
    m = keep.metrics[-1]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "epoch_seconds",
                "ternary_zero_frac"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    layers = [k for k in m if k.startswith("ternary/") and k.endswith("/zero_frac")]
    assert layers, "per-layer sparsity is reported"
    assert 0.0 < m["ternary_zero_frac"] < 1.0
    assert m["run_complete"] is True
    model, cfg = model_from_checkpoint(keep.ckpts[-1])
    assert cfg.model.arch == "tinynet"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_early_stopping_patience(tmp_path, data_root):
    keep = _Keep(tmp_path)
    # lr 1e-6 learns nothing measurable: val_acc stalls and patience 1 stops the run early.
    run(_cfg(epochs=6, lr=1e-6, schedule="none", early_stop_patience=1), keep)
    assert len(keep.metrics) < 6
    assert keep.metrics[-1]["early_stopped"] is True and keep.metrics[-1]["run_complete"] is True


def test_divergence_raises(data_root):
    # fp16 autocast with an absurd Adam step overflows the activations: the loss becomes NaN.
    with pytest.raises(DivergedError, match="diverged at epoch 1"):
        run(_cfg(subset=160, batch_size=32, epochs=2, lr=100.0, optimizer="adam", weight_decay=0.0, schedule="none",
                 precision="fp16"), None)


def test_fp16_grad_scaler_and_grad_accum_path_on_cpu(tmp_path, data_root):
    """The GPU's fp16 path (autocast + GradScaler) and gradient accumulation + clipping, run on CPU."""
    keep = _Keep(tmp_path)
    run(_cfg(subset=320, batch_size=32, epochs=1, precision="fp16", grad_accum=2, grad_clip=1.0), keep)
    assert math.isfinite(keep.metrics[-1]["train_loss"])
    state, _ = load_checkpoint(keep.ckpts[-1])
    assert state["scaler"], "the GradScaler state is checkpointed"


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    assert resolve_precision("fp16", cpu) is torch.float16


@pytest.mark.slow
def test_small_net_learns_on_real_subset(tmp_path, data_root):
    """A real short run: the small net on a 5,000-image subset reaches val_acc > 0.35 within 3 epochs (chance is
    0.1). tinynet: airbench, the larger net, takes ~5x as long and is covered by the model tests."""
    cfg = TrainConfig.model_validate({
        "data": {"subset": 5000, "val_fraction": 0.1},
        "model": {"arch": "tinynet"},
        "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "nesterov": True, "schedule": "onecycle",
                  "warmup_epochs": 1, "label_smoothing": 0.1, "threads": 2},
    })
    keep = _Keep(tmp_path)
    run(cfg, keep)
    assert max(m["val_acc"] for m in keep.metrics) > 0.35
