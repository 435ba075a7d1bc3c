"""Ternary training recipes: start from a full-precision model, switch quantization on progressively, distill
from a full-precision teacher.

Sources of full-precision weights (``model.init_from``, ``train.distill_from``) may be a checkpoint directory
(``state.pt`` + ``manifest.json``), a ``ternsearch train`` run directory (its newest usable checkpoint), or an
MLflow model URI (``models:/NAME/VERSION``, ``runs:/RUN_ID/model``). Checkpoints load with
``torch.load(weights_only=True)``; an MLflow model is a pickled module (load those only from a store you trust).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainables.checkpoint import RUN_CHECKPOINTS, CheckpointError, latest_checkpoint, load_checkpoint
from trainables.errors import TrainablesError
from trainables.mlflow_compat import import_mlflow_pytorch
from trainables.restore import model_from_checkpoint
from trainables.ternary import ternary_modules

__all__ = ["RecipeError", "distill_loss", "load_teacher", "quant_mix", "set_quant_mix", "warm_start"]


class RecipeError(TrainablesError, ValueError):
    """A weight source that cannot be read, or that does not fit the model. ``key`` names the config key that
    gave the source (``model.init_from``, ``train.distill_from``) when the check knows it."""

    def __init__(self, message: str, key: Optional[str] = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.detail = key, message


def _is_mlflow_uri(source: str) -> bool:
    return source.startswith(("models:/", "runs:/")) or "://" in source


def _checkpoint_dir(source: str) -> Path:
    path = Path(source).expanduser()
    if (path / RUN_CHECKPOINTS).is_dir():  # a `ternsearch train` run directory: its newest usable checkpoint
        newest = latest_checkpoint(path)
        if newest is None:
            raise RecipeError(f"{source}: no usable checkpoint under {path / RUN_CHECKPOINTS}")
        return newest
    if not (path / "manifest.json").is_file():
        raise RecipeError(f"{source}: not a checkpoint directory, a `ternsearch train` run directory or an MLflow "
                          "model URI (models:/NAME/VERSION, runs:/RUN_ID/model)")
    return path


def _load_module(source: str) -> nn.Module:
    if _is_mlflow_uri(source):
        return import_mlflow_pytorch().load_model(source, map_location="cpu")
    try:
        model, _ = model_from_checkpoint(_checkpoint_dir(source))
    except CheckpointError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    return model


def _state_dict(source: str) -> dict[str, torch.Tensor]:
    if _is_mlflow_uri(source):
        return _load_module(source).state_dict()
    try:
        state, _ = load_checkpoint(_checkpoint_dir(source))
    except CheckpointError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    return state["model"]


@torch.no_grad()
def warm_start(model: nn.Module, source: str) -> None:
    """Copy a full-precision model's weights into ``model`` (same architecture): the latent weights of the ternary
    layers start as the full-precision weights, and learned scales (TTQ) are initialised from them."""
    state = _state_dict(source)
    own = model.state_dict()
    needed = [k for k in own if ".quantizer." not in k]
    missing = [k for k in needed if k not in state]
    wrong = [k for k in needed if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise RecipeError(f"{source}: does not fit this model ({len(missing)} tensors missing, e.g. "
                          f"{missing[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]}): is it the same arch?")
    model.load_state_dict({k: state[k] for k in needed}, strict=False)
    for _, module in ternary_modules(model):
        if hasattr(module.quantizer, "init_from"):
            module.quantizer.init_from(module.weight)


def load_teacher(source: str, device: torch.device, channels_last: bool) -> nn.Module:
    """The full-precision teacher: eval mode, no gradients, on ``device``."""
    teacher = _load_module(source).to(device).eval()
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, weight: float,
                 temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - w) * CE(student, targets) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``, the KL
    averaged over the batch (Hinton et al. 2015). ``targets`` may be class indices or MixUp/CutMix
    probabilities; the teacher has seen the same (mixed) images."""
    ce = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if weight <= 0:
        return ce
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce + weight * t * t * kl


def quant_mix(epoch: int, quantize_from_epoch: int, ramp_epochs: int) -> float:
    """How ternary epoch ``epoch`` runs: 0.0 full precision (before ``quantize_from_epoch``), then rising
    linearly over ``ramp_epochs`` epochs (the weight used is ``(1 - m) * W + m * a*T``), 1.0 fully ternary."""
    if epoch < quantize_from_epoch:
        return 0.0
    if ramp_epochs <= 0:
        return 1.0
    return min(1.0, (epoch - quantize_from_epoch + 1) / ramp_epochs)


def set_quant_mix(model: nn.Module, mix: float) -> None:
    """Put every ternary layer of ``model`` in the regime ``mix`` (see ``quant_mix``)."""
    if not 0.0 <= mix <= 1.0 or math.isnan(mix):
        raise ValueError(f"quantization mix must be in [0, 1], got {mix}")
    for _, module in ternary_modules(model):
        module.mix.fill_(mix)  # in place: the buffer compiled code reads (see TernaryConv2d's mix)


def check_sources(cfg) -> None:
    """Before any training: the local weight sources a config names (``model.init_from``,
    ``train.distill_from``; a sweep may search whether they are used) exist and hold a checkpoint. MLflow URIs
    are read when the run starts."""
    for key, source in (("model.init_from", cfg.model.init_from), ("train.distill_from", cfg.train.distill_from)):
        if source and not _is_mlflow_uri(source):
            try:
                _checkpoint_dir(source)
            except RecipeError as exc:
                raise RecipeError(str(exc), key) from None
