"""A model as a function from uint8 images ``N x 3 x 32 x 32`` to float32 logits ``N x 10`` (numpy in, numpy out),
for ``ternsearch evaluate``: a PyTorch module (from a checkpoint, a ``.tern`` file or MLflow) with the CIFAR-10
normalization of training applied first, or an ONNX graph in ONNX Runtime (the normalization is inside it)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from trainables.augment import normalize
from trainables.errors import TrainablesError
from trainables.onnx_export import INPUT

__all__ = ["BATCH", "ModelLoadError", "Predict", "onnx_predictor", "torch_predictor"]

BATCH = 500
Predict = Callable[[np.ndarray], np.ndarray]


class ModelLoadError(TrainablesError, ValueError):
    """A model file that cannot be loaded or run (one line, naming the file)."""


def torch_predictor(model: nn.Module) -> Predict:
    """``model`` in eval mode on CPU, fed normalized float images a batch of ``BATCH`` at a time."""
    model = model.to("cpu").eval()

    @torch.no_grad()
    def predict(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images))
        return torch.cat([model(normalize(x[i:i + BATCH])).float() for i in range(0, len(x), BATCH)]).numpy()

    return predict


def onnx_predictor(path: str | Path) -> Predict:
    """The ONNX graph at ``path`` (uint8 ``images`` in, ``logits`` out) on ONNX Runtime's CPU provider.

    Raises:
        ImportError: onnxruntime is not installed (``name`` is ``onnxruntime``).
    """
    import onnxruntime as ort  # onnxruntime: only for an .onnx model (an optional extra)

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own InvalidProtobuf/Fail/InvalidGraph classes
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None
    if [i.name for i in session.get_inputs()] != [INPUT]:
        raise ModelLoadError(f"{path}: not a ternsearch ONNX model (its inputs are "
                             f"{[i.name for i in session.get_inputs()]}, expected [{INPUT!r}])")

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return np.concatenate([session.run(None, {INPUT: images[i:i + BATCH]})[0]
                               for i in range(0, len(images), BATCH)])

    return predict


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
