"""Live progress of a sweep on stderr: one line per finished epoch (or per finished trial with --quiet)."""

from __future__ import annotations

import sys
import time

from ray import tune

from ternsearch.numbers import fmt_number
from ternsearch.run.failfast import permanent_error
from ternsearch.results.trials import error_text, trial_status

__all__ = ["SweepProgress"]


class SweepProgress(tune.Callback):
    def __init__(self, spec, plan, quiet: bool = False):
        self.metric, self.mode = spec.metric.name, spec.metric.mode
        self.total, self.max_epochs, self.quiet = spec.searcher.num_samples, plan.max_epochs, quiet
        self.t0 = time.time()
        self.best = None
        self.done = 0
        self.last: dict = {}

    def _say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(f"{trial.trial_id} started: " + ", ".join(f"{k}={fmt_number(v, 4)}" for k, v in trial.config.items()))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                self.best = value
        if not self.quiet:
            running = sum(t.status == "RUNNING" for t in trials)
            self._say(f"{trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} {self.metric} "
                      f"{fmt_number(value, 4)} | best {fmt_number(self.best, 4)} | running {running}, "
                      f"finished {self.done}/{self.total}")

    def _end(self, trial, errored):
        self.done += 1
        last = self.last.get(trial.trial_id, {})
        status, reason = trial_status(last, errored, _error_line(trial) if errored else "")
        if errored:  # the traceback is in the trial's error file, not on the console
            self._say(f"{trial.trial_id} failed: {reason} (error file: {trial.error_file}) [{self.done}/{self.total}]")
            return
        value = last.get(self.metric)
        self._say(f"{trial.trial_id} {status}{' (' + reason + ')' if reason else ''}: {self.metric} "
                  f"{fmt_number(value, 4)} [{self.done}/{self.total}]")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, True)


def _error_line(trial) -> str:
    """The one-line reason a trial failed: the permanent error it raised, else its error file's last exception."""
    error = permanent_error(trial.trial_id)
    if error is not None:
        return error.reason
    return error_text(trial)
