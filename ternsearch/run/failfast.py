"""Fail fast on what a retry cannot fix, on the sweep driver.

A trial raises ``trainables.failures.PermanentTrialError`` for an error a retry from its checkpoint would repeat
(data missing or corrupt, a config it cannot build, an import error, a weight source that does not exist, a
diverged run). Tune's ``FailureConfig`` retries every trial error alike; here such a trial ends at once, and
retries stay for crashes and lost workers. When the sweep's first trials all fail with the same such error and no
trial has trained an epoch, ``SetupFailureGuard`` stops the sweep: the cause is the sweep's, not a trial's.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

from ray import tune
from trainables.failures import PermanentTrialError, failure_reason, find_permanent

__all__ = ["SetupFailureGuard", "no_retry_for_permanent_errors", "permanent_error"]

# trial id -> the PermanentTrialError it ended with (this driver process only)
_PERMANENT: dict[str, PermanentTrialError] = {}


def permanent_error(trial_id: str) -> Optional[PermanentTrialError]:
    """The error a retry would repeat that trial ``trial_id`` ended with, or None."""
    return _PERMANENT.get(trial_id)


def no_retry_for_permanent_errors() -> None:
    """Make Tune end a trial that raised a ``PermanentTrialError`` instead of retrying it.

    Tune decides with ``Trial.should_recover()`` right after ``Trial.handle_error(exc)`` counted the failure
    (``TuneController._process_trial_failure``, checked against ray 2.60; private API). The failure is not counted
    against ``max_failures``, so a trial that ``--resume`` reruns after the cause is fixed has its whole retry
    budget for real crashes.
    """
    from ray.tune.experiment import Trial

    if getattr(Trial.should_recover, "_ternsearch", False):
        return
    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    def handle(self, exc=None):
        failures = self.run_metadata.num_failures
        handle_error(self, exc)
        permanent = find_permanent(exc) if exc is not None else None
        if permanent is not None:
            _PERMANENT[self.trial_id] = permanent
            self.run_metadata.num_failures = failures
        else:
            _PERMANENT.pop(self.trial_id, None)

    def recover(self):
        return self.trial_id not in _PERMANENT and should_recover(self)

    recover._ternsearch = True
    Trial.handle_error, Trial.should_recover = handle, recover


class _StopAll(tune.Stopper):
    """The fallback way to end the sweep (see ``SetupFailureGuard._stop``)."""

    def __init__(self):
        self.now = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.now


class SetupFailureGuard(tune.Callback):
    """Stops the sweep when its first ``needed`` trials all failed with one and the same setup error (a
    ``PermanentTrialError`` other than a diverged run or one out of memory) before any trial trained an epoch
    (data missing, an import error: every later trial would fail the same way).

    ``reason`` is then ``trial 2c9355df failed: DataError: CIFAR-10 data folder X does not exist ...``; the
    sweep driver prints it as its one line. Trials still starting when the sweep stops stay unfinished, so
    ``--resume`` runs them (and reruns the failed ones) once the cause is fixed.
    """

    def __init__(self, needed: int = 2):
        self.needed = max(int(needed), 1)
        self.reason: Optional[str] = None
        self.trained = False
        self._failed: list[tuple[str, str]] = []  # (trial id, reason), in the order they failed
        self.stopper = _StopAll()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") and not result.get("replayed") and not failure_reason(result):
            self.trained = True

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.trained or self.reason is not None:
            return
        error = permanent_error(trial.trial_id)  # a diverged run or one out of memory says nothing of the sweep
        self._failed.append((trial.trial_id, error.reason if error is not None and error.setup else ""))
        first = self._failed[: self.needed]
        if len(first) == self.needed and all(r and r == first[0][1] for _, r in first):
            self.reason = f"trial {first[0][0]} failed: {first[0][1]}"
            self._stop()

    def _stop(self) -> None:
        """End the sweep the way Ctrl-C does: Tune's handler for SIGUSR1 (installed while ``tune.run`` runs on the
        main thread) saves the experiment with unfinished trials left unfinished, so ``--resume`` runs them. A
        stopper's ``stop_all`` would end them and the searcher for good; it is the fallback without the handler."""
        if callable(signal.getsignal(signal.SIGUSR1)):
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            self.stopper.now = True
