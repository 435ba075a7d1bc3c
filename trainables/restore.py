"""What a checkpoint holds, back in objects: the model it trained (``model_from_checkpoint``), and for a resumed
run the state of its training (``restore_train_state``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from trainables.checkpoint import load_checkpoint
from trainables.config import TrainConfig
from trainables.models import build_model

__all__ = ["model_from_checkpoint", "restore_train_state"]


def model_from_checkpoint(path: str | Path, device: Optional[torch.device] = None) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model a checkpoint holds (its config travels in the manifest), in eval mode."""
    device = device or torch.device("cpu")
    state, manifest = load_checkpoint(path, map_location=device)
    cfg = TrainConfig.model_validate(manifest["config"])
    model = build_model(cfg.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg


def restore_train_state(state: dict, model, optimizer, scaler, stopper) -> int:
    """Restore a checkpoint's state; return the epoch to start at.

    The GradScaler's state is loaded only when the checkpoint has one and this run's scaler is on: a checkpoint
    written in bf16 or fp32 (scaler off, state ``{}``) may resume where ``precision: auto`` resolves to fp16 (another
    GPU, or CPU -> GPU), and the fresh scaler then starts from its default scale."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    stopper.load(state["early_stop"])
    return int(state["epoch"]) + 1
