"""The names of a sweep's record files and how to read them, without Ray: export, report and the sweep's own
checks before Ray starts read them (see :mod:`ternsearch.results.recorder` for the writer)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["HISTORY", "SWEEP", "TRIALS", "read_history", "read_trials"]

HISTORY = "history.jsonl"
TRIALS = "trials.json"
SWEEP = "sweep.json"


def read_trials(results_dir: Path) -> dict:
    path = Path(results_dir) / TRIALS
    return json.loads(path.read_text()) if path.exists() else {}


def read_history(results_dir: Path) -> list[dict]:
    """All results, the last line kept per (trial_id, epoch)."""
    path = Path(results_dir) / HISTORY
    rows: dict[tuple, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row.get("trial_id"), row.get("epoch"))] = row
    return sorted(rows.values(), key=lambda r: (str(r.get("trial_id")), r.get("epoch", 0)))
