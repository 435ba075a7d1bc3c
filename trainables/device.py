"""Where and how a run computes: its device, its autocast precision, torch's determinism switches."""

from __future__ import annotations

import os
from typing import Optional

import torch

__all__ = ["pick_device", "precision_name", "resolve_precision", "set_determinism"]


def pick_device() -> torch.device:
    """CUDA device of this process's local rank when there is a GPU, else CPU: for runs outside Ray
    (``ternsearch train``, tests). A Ray trial passes the device it reserved (``entry.trial_device``)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32.

    ``auto``: bf16 on GPUs that support it, else fp16 (with a GradScaler); fp32 on CPU, where bf16 autocast
    measured slower than fp32 on CPUs without AMX (see FIELD-NOTES).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        # including_emulation=False: the default counts bf16 emulated in fp32 (V100, T4), slower than fp16 with
        # a GradScaler, which is what those GPUs get.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``resolve_precision``'s result by name (``fp32`` for None), as a checkpoint records it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Set torch's global switches for this run (explicitly both ways: a reused trial actor keeps the last run's).

    ``deterministic``: cuDNN's deterministic algorithms, a fixed cuBLAS workspace (cuBLAS otherwise reduces in
    an order that depends on its stream's workspace) and ``torch.use_deterministic_algorithms``, warning
    instead of raising for an op that has no deterministic CUDA kernel. Otherwise ``cudnn.benchmark`` on CUDA:
    it times the algorithms for each new input shape once and keeps the fastest, which is also why GPU runs,
    resumed or not, differ in the last bits.
    """
    if deterministic:
        # Read by cuBLAS when its handle is created: set before the first matmul of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
