"""The names of a sweep's record files and how to read them, without Ray: export, report and the sweep's own
checks before Ray starts read them (see :mod:`ternsearch.results.recorder` for the writer)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["HISTORY", "LOST", "SWEEP", "TRIALS", "read_epochs", "read_history", "read_trials"]

HISTORY = "history.jsonl"
TRIALS = "trials.json"
SWEEP = "sweep.json"
LOST = "trials_lost.json"  # trials a killed driver started that Tune's last saved state did not hold


def read_trials(results_dir: Path) -> dict:
    path = Path(results_dir) / TRIALS
    return json.loads(path.read_text()) if path.exists() else {}


def read_history(results_dir: Path) -> list[dict]:
    """All results of a sweep's ``history.jsonl``, the last line kept per (trial_id, epoch)."""
    path = Path(results_dir) / HISTORY
    rows: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row.get("trial_id"), row.get("epoch"))] = row
    return sorted(rows.values(), key=lambda r: (str(r.get("trial_id")), r.get("epoch", 0)))


def read_epochs(run_dir: Path) -> dict[int, dict]:
    """A single run's ``history.jsonl`` (``ternsearch train``'s run directory): epoch -> row, the last line kept
    per epoch (a resumed run repeats the epochs after its checkpoint)."""
    return {int(row["epoch"]): row for row in read_history(run_dir) if "epoch" in row}
