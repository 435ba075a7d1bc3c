"""A ``ternsearch train`` run directory as a source of its model (``export RUN_DIR --onnx/--packed``,
``evaluate RUN_DIR``): the checkpoint its test evaluation used (``final_metrics.json``'s ``evaluated_checkpoint``:
the best epoch's with a validation split, else the last), else its newest usable checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ternsearch.errors import ResultsError
from ternsearch.results.files import SWEEP

__all__ = ["FINAL", "is_run_dir", "run_checkpoint"]

CHECKPOINTS = "checkpoints"  # trainables.checkpoint.RUN_CHECKPOINTS (not imported here: it pulls in torch)
FINAL = "final_metrics.json"


def is_run_dir(path: Path) -> bool:
    """A ``ternsearch train`` run directory (checkpoints/ or final_metrics.json, and no sweep.json)."""
    return path.is_dir() and not (path / SWEEP).is_file() and ((path / CHECKPOINTS).is_dir()
                                                               or (path / FINAL).is_file())


def _evaluated(run_dir: Path) -> Path | None:
    """The checkpoint ``final_metrics.json`` names, found where it was written or, the run directory moved,
    under this one's checkpoints/; None when there is no such record."""
    try:
        final = json.loads((run_dir / FINAL).read_text())
    except (OSError, ValueError):
        return None
    named = final.get("evaluated_checkpoint") if isinstance(final, dict) else None
    if not isinstance(named, str) or not named:
        return None
    for candidate in (run_dir / CHECKPOINTS / Path(named).name, Path(named)):
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def run_checkpoint(run_dir: Path) -> tuple[Path, str]:
    """``(checkpoint, how it was chosen)`` of run directory ``run_dir``.

    Raises:
        ResultsError: the run has no usable checkpoint yet.
    """
    chosen = _evaluated(run_dir)
    if chosen is not None:
        return chosen, "the checkpoint its test evaluation used"
    # torch: only once a run's model is loaded (the checks before it run without torch)
    from trainables.checkpoint import latest_checkpoint

    newest = latest_checkpoint(run_dir)
    if newest is None:
        raise ResultsError(f"{run_dir}: no usable checkpoint under {run_dir / CHECKPOINTS} (has the run trained "
                           "an epoch?)")
    return newest, "its newest checkpoint"
