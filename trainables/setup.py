"""What every trial of a sweep is handed besides the searcher's values: a ``TrialSetup``, torch-free.

The sweep driver builds one (``ternsearch.run.tuner.trial_setup``) and Ray passes it, pickled, to every trial and
its Train workers (``trainables.entry``). Validated where it is built, so a trial never meets a missing key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from trainables.config import Strict

__all__ = ["TrialSetup"]


class TrialSetup(Strict):
    """A sweep's trials' shared settings: the base config, how a trial runs, where it writes, how it fails."""

    base: dict[str, Any]  # the resolved base TrainConfig, as JSON (model_dump(mode="json"))
    mode: Literal["function", "torchtrainer"]  # the trial trains itself, or through a TorchTrainer (DDP)
    workers: int  # Train workers (DDP ranks) per trial
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float = 1.0  # below 1: a fraction of a GPU, which several trials share
    storage_path: str  # where DDP trials' Train runs live: the sweep's directory
    trial_dir_root: str  # Tune's experiment directory (trial_<id>/checkpoint_* under it)
    max_failures: int  # Train's restarts of a DDP trial's worker group
    keep_checkpoints: int
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]  # of a DDP trial's workers
    objectives: tuple[tuple[str, Literal["max", "min"]], ...] = Field(min_length=1)  # (metric, mode), primary first
    local_cluster: bool = False  # the sweep runs on a Ray it started on this machine
