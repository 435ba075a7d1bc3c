"""What a checkpoint holds, back in objects: the model it trained (``model_from_checkpoint``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from trainables.checkpoint import load_checkpoint
from trainables.config import TrainConfig
from trainables.models import build_model

__all__ = ["model_from_checkpoint"]


def model_from_checkpoint(path: str | Path, device: Optional[torch.device] = None) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model a checkpoint holds (its config travels in the manifest), in eval mode."""
    device = device or torch.device("cpu")
    state, manifest = load_checkpoint(path, map_location=device)
    cfg = TrainConfig.model_validate(manifest["config"])
    model = build_model(cfg.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg

