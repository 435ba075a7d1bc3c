"""The one base of the errors ``trainables`` raises on purpose, torch-free so that any caller can catch it cheaply.

Each error keeps the builtin base callers already catch it by (``TrialFailure`` a ``RuntimeError``, ``PackError``
a ``ValueError``...), and ``trainables.failures`` still classifies them by class name.
"""

from __future__ import annotations

__all__ = ["BatchSizeError", "TrainablesError"]


class TrainablesError(Exception):
    """An error of a training run or of the files it reads and writes (data, checkpoints, weights)."""


class BatchSizeError(TrainablesError, ValueError):
    """``train.batch_size`` does not fit the run: not divisible by its workers, or more than a worker's images."""
