"""MLflow imported without its side effects on the process (no torch import here)."""

from __future__ import annotations

import logging
import threading

_LOCK = threading.Lock()


def import_mlflow_pytorch():
    """``mlflow.pytorch``, imported without its change to logging.

    MLflow 3.17's ``mlflow.pytorch`` imports its Lightning autolog module, which calls
    ``logging.basicConfig(level=logging.ERROR)``. That puts the root logger at ERROR, which silences every other
    library's warnings in the process, ours included (a sweep's tracking-outage messages). The root logger's level
    and handlers are put back as they were.
    """
    with _LOCK:
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        try:
            import mlflow.pytorch  # MLflow and torch only for who logs or loads a model: importing this is free
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
    return mlflow.pytorch
