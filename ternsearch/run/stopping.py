"""The spec's stopping rules: ``searcher.time_budget`` (wall time of this run of the driver) and
``searcher.stop_at`` (objective values that end the sweep once one trial reaches them).

A spent time budget ends the sweep the way Ctrl-C does (Tune's SIGUSR1 handler, as ``SetupFailureGuard`` does):
Tune saves its state with the running trials unfinished; each resumes from its last checkpoint (its last whole
epoch) on ``--resume``, which gets a time budget of its own. A reached target stops each running trial at its next
report and the searcher proposes no more (``GrowingGenerator.target``; not Tune's ``stop_all``, which would end the
trials without telling the records or the study); the sweep then finishes as usual (best trial, export, report),
and ``--resume`` with a larger ``num_samples`` or another ``stop_at`` goes on sampling.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

from ray import tune
from trainables.failures import failure_reason

from ternsearch.spec import SweepSpec

__all__ = ["TargetStopper", "TimeBudget", "SweepStops"]


class TargetStopper(tune.Stopper):
    """Once a trial reports an objective at or beyond its ``stop_at`` value (by the objective's mode): ``reached``
    says so, and every trial stops at its next report (that one included)."""

    def __init__(self, targets: dict[str, float], modes: dict[str, str]):
        self.targets, self.modes = dict(targets), dict(modes)
        self.reached: Optional[str] = None
        self.stopped: set[str] = set()  # the trials it stopped

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.reached is None and not failure_reason(result):
            for name, target in self.targets.items():
                value = result.get(name)
                if isinstance(value, (int, float)) and (value >= target if self.modes[name] == "max"
                                                        else value <= target):
                    self.reached = (f"stop_at reached: trial {trial_id} has {name} = {value:.4f} at epoch "
                                    f"{result.get('epoch')} (target {target:g})")
                    break
        if self.reached is not None:
            self.stopped.add(trial_id)
        return self.reached is not None

    def stop_all(self) -> bool:
        return False

    def relabel(self, trials: dict) -> bool:
        """Give the trials it stopped (trials.json's entries, which say "stopped by ASHA") their real reason;
        whether any changed. (Their MLflow runs keep the recorder's words.)"""
        changed = False
        for tid in self.stopped & set(trials):
            if trials[tid]["status"] == "stopped":
                trials[tid]["reason"] = f"stopped at epoch {trials[tid].get('epochs')}: stop_at reached"
                changed = True
        return changed


class TimeBudget:
    """While entered, a timer that after ``seconds`` stops the sweep (SIGUSR1 to this process: Tune's handler,
    installed while ``tuner.fit`` runs on the main thread, saves the experiment with unfinished trials)."""

    def __init__(self, seconds: Optional[float], words: str = ""):
        self.seconds, self.words = seconds, words
        self.spent = False
        self._done = threading.Event()

    def _wait(self) -> None:
        if not self._done.wait(self.seconds) and callable(signal.getsignal(signal.SIGUSR1)):
            self.spent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def __enter__(self) -> "TimeBudget":
        if self.seconds:
            threading.Thread(target=self._wait, name="ternsearch-time-budget", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


class SweepStops:
    """The stopping rules of one run of the sweep driver, and (after the fit) why it ended early, if it did."""

    def __init__(self, spec: SweepSpec):
        modes = {m.name: m.mode for m in spec.objectives}
        self.target = TargetStopper(spec.searcher.stop_at, modes) if spec.searcher.stop_at else None
        budget = spec.searcher.time_budget
        self.budget = TimeBudget(spec.searcher.time_budget_s,
                                 budget if isinstance(budget, str) else f"{budget:g}s" if budget else "")

    def stopper(self, other: tune.Stopper) -> tune.Stopper:
        """``other`` (the setup-failure guard's) combined with the target's, if any."""
        return other if self.target is None else tune.stopper.CombinedStopper(other, self.target)

    @property
    def reason(self) -> Optional[str]:
        """``stop_at reached: ...``, ``time_budget 30m spent``, or None."""
        if self.target is not None and self.target.reached:
            return self.target.reached
        return f"time_budget {self.budget.words} spent" if self.budget.spent else None
