"""The sweep's own records in its results directory, written by the driver (a Tune callback).

``history.jsonl``: one line per trial result (trial_id, epoch, metrics); a restarted trial may repeat an
epoch, and readers keep the last line per (trial, epoch). ``trials.json``: one entry per trial with its
config, status (running / completed / stopped / failed), reason, epochs, last metrics, node and checkpoint.
These files, not Tune's internal layout, are what export and report read. Both are written so that a crash
cannot tear them (``ternsearch.results.atomic``): trials.json is replaced whole, history.jsonl appended a line at a
time (a torn last line left by a crash is cut off before the next append).

trials.json is rewritten at once when a trial starts, ends (fails, is stopped, completes) or moves to
trials_lost.json, and at the sweep's end; a result or a restart marks it stale, and a stale one is rewritten at
most every ``SAVE_EVERY_S`` (at the next callback after that). Rewriting it whole on every result cost O(trials)
per result: at 200 trials x 20 epochs, 16 at once, a quarter of the driver's time (benchmarks/scale.py, py-spy).
A killed driver may leave the last second of epoch counts and last metrics behind in trials.json (history.jsonl
has every row; the resumed trial reports again), never a trial's start or end.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

from ray import tune

from ternsearch.results.atomic import append_line, write_atomic
from ternsearch.results.files import HISTORY, LOST, TRIALS, read_history, read_json
from ternsearch.results.rebuild import recover_trials
from ternsearch.results.trials import LOST_REASON, RECORDED_TUNE_KEYS, TUNE_KEYS, error_text, trial_status

__all__ = ["SweepRecorder", "LOST", "LOST_REASON"]

_SKIP = TUNE_KEYS - RECORDED_TUNE_KEYS  # a history row keeps the trial's values and where they were produced
SAVE_EVERY_S = 1.0  # a stale trials.json (new results, starts) is rewritten at most this often


def _write_json(path: Path, data: Any) -> None:
    # Rewritten on every result: fsynced before its rename, the folder not (a lost rename keeps the last whole one)
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str), sync_dir=False)


class SweepRecorder(tune.Callback):
    """Writes history.jsonl and trials.json in the results directory as results arrive."""

    def __init__(self, results_dir: str, param_names: list[str]):
        self.results_dir = results_dir
        self.param_names = list(param_names)
        self._trials: Optional[dict] = None

    def __getstate__(self) -> dict:  # Tune pickles callbacks into its state; records are re-read from disk
        return {"results_dir": self.results_dir, "param_names": self.param_names, "_trials": None}  # no _stale

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _load(self) -> dict:
        """trials.json, read once per driver; a torn one (``sweep --resume`` has said so before Ray started) is
        rebuilt from history.jsonl and Tune's state and rewritten at once."""
        if self._trials is None:
            self._trials, rebuilt = recover_trials(Path(self.results_dir))
            if rebuilt:
                self._save()
        return self._trials

    def _save(self) -> None:
        """Rewrite trials.json now."""
        self.__dict__["_stale"] = False
        self.__dict__["_saved_at"] = time.monotonic()
        _write_json(Path(self.results_dir) / TRIALS, self._load())

    def _save_soon(self) -> None:
        """trials.json is stale: rewrite it if the last rewrite is ``SAVE_EVERY_S`` old, else at a later callback."""
        self.__dict__["_stale"] = True
        if time.monotonic() - self.__dict__.get("_saved_at", -math.inf) >= SAVE_EVERY_S:
            self._save()

    def on_step_end(self, iteration, trials, **info):
        if self.__dict__.get("_stale"):
            self._save_soon()

    def on_experiment_end(self, trials, **info):
        if self.__dict__.get("_stale"):
            self._save()

    def _entry(self, trial) -> dict:
        trials = self._load()
        entry = trials.get(trial.trial_id)
        if entry is None:
            entry = trials[trial.trial_id] = {
                "trial_id": trial.trial_id,
                "number": len(trials),
                "config": {k: trial.config.get(k) for k in trial.config},
                "status": "running",
                "reason": "",
                "epochs": 0,
                "started": time.time(),
                "restarts": 0,
                "last": {},
            }
        return entry

    def on_step_begin(self, iteration, trials, **info):
        """First step (of a resumed sweep): records of running trials that Tune does not know move to
        trials_lost.json with the reason; their history rows stay in history.jsonl."""
        if self.__dict__.get("_reconciled"):
            return
        self.__dict__["_reconciled"] = True
        known = {t.trial_id for t in trials}
        records = self._load()
        lost = {tid: e for tid, e in records.items() if e["status"] == "running" and tid not in known}
        if not lost:
            return
        path = Path(self.results_dir) / LOST
        earlier = read_json(path, "a lost-trials record", {})  # checked before Ray started (run.sweep)
        for tid, entry in lost.items():
            earlier[tid] = dict(entry, status="lost", reason=LOST_REASON, ended=time.time())
            del records[tid]
        _write_json(path, earlier)
        self._save()

    def on_trial_start(self, iteration, trials, trial, **info):
        seen = self.__dict__.setdefault("_seen", set())
        entry = self._entry(trial)
        if trial.trial_id not in seen and entry["epochs"]:
            entry["restarts"] += 1  # a resumed sweep picks up a trial an earlier driver had started
        seen.add(trial.trial_id)
        entry["status"] = "running"
        self._save()  # at once: a trial a killed driver started must be in it (trials_lost.json on --resume)

    def on_trial_recover(self, iteration, trials, trial, **info):
        entry = self._entry(trial)
        entry["restarts"] += 1  # the trial failed (worker died...) and restarts from its latest checkpoint
        self._save_soon()

    def _recorded_epochs(self, trial_id: str) -> set:
        """The epochs history.jsonl holds for a trial (read once per driver, then kept up to date)."""
        seen = self.__dict__.get("_epochs")
        if seen is None:
            seen = self.__dict__["_epochs"] = {}
            for row in read_history(Path(self.results_dir), strict=False):  # --resume has warned of bad lines
                seen.setdefault(row.get("trial_id"), set()).add(row.get("epoch"))
        return seen.setdefault(trial_id, set())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self._entry(trial)
        metrics = {k: v for k, v in result.items() if k not in _SKIP and isinstance(v, (int, float, str, bool))}
        recorded = self._recorded_epochs(trial.trial_id)
        if result.get("epoch") not in recorded:  # a replayed or re-run epoch keeps its first row (as in MLflow)
            recorded.add(result.get("epoch"))
            append_line(Path(self.results_dir) / HISTORY,
                        json.dumps(dict(metrics, trial_id=trial.trial_id, time=time.time()), default=str))
        entry["epochs"] = int(result.get("epoch", entry["epochs"]))
        entry["last"] = {k: v for k, v in metrics.items() if "/" not in k}
        if result.get("checkpoint_path"):
            entry["checkpoint"] = result["checkpoint_path"]
        for key in ("node_id", "hostname", "world_size", "rank_node_ids"):
            if key in result:
                entry[key] = result[key]
        self._save_soon()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        entry = self._entry(trial)
        entry["checkpoint"] = checkpoint.path
        self._save_soon()

    def _finish(self, trial, errored: bool) -> None:
        entry = self._entry(trial)
        entry["status"], entry["reason"] = trial_status(entry["last"], errored, error_text(trial) if errored else "")
        entry["ended"] = time.time()
        entry["wall_seconds"] = entry["ended"] - entry["started"]
        self._save()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, errored=True)
