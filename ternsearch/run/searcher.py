"""The sweep's searcher and its Optuna study on disk.

Every sweep keeps its study in its results directory, ``RESULTS/optuna.db``: Optuna's RDB storage on SQLite, one
study named by the sweep's id (sweep.json's ``sweep_id``: OptunaSearch's default name plus ``load_if_exists``
would merge every sweep sharing a storage). Only the sweep driver writes it. SQLite rather than Optuna's journal
file: measured with a writer SIGKILLed at a random moment (benchmarks/study_kill.py, 6 kills each, Optuna 5.0),
both kept every finished trial whole, but the journal's lock is a file the killed process leaves behind, and 2 of
6 reopenings waited 30 s for it to go stale (Optuna's grace period); SQLite reopened in 0.7 s every time (its
locks die with their process, its rollback journal undoes a half-written transaction on the next open).
Open it with Optuna's own tools::

    optuna.load_study(study_name=SWEEP_ID, storage="sqlite:///RESULTS/optuna.db")

Each trial carries user attributes ``tune_trial_id``, ``sweep_id`` and ``trials_before`` (the study's finished
trials when the sampler proposed it); the study carries ``sweep_id``, ``sweep`` and ``objectives``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from trainables.failures import failure_reason

from ternsearch.results.files import STUDY, read_sweep
from ternsearch.spec.space import distribution

__all__ = ["StudySearcher", "GrowingGenerator", "study_url", "study_storage", "search_alg", "reconcile_study",
           "seed_study"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def study_url(results_dir) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / STUDY}"


def study_storage(results_dir):
    """The sweep's RDB storage (a busy SQLite waits up to 60 s rather than failing: `optuna` tools may read it)."""
    return optuna.storages.RDBStorage(study_url(results_dir), engine_kwargs={"connect_args": {"timeout": 60}})


class StudySearcher(OptunaSearch):
    """OptunaSearch that reports by our ``epoch`` (Tune's iteration restarts with a restarted trial), tells
    Optuna that trials ASHA stopped early were pruned, not completed, and that a trial which failed for good
    (diverged, out of memory) completed with the worst value it reported, so TPE learns to avoid its region
    (Tune tells the searcher of an errored trial without a result, which Optuna would record as FAIL and ignore).
    Each trial it proposes is labelled in the study with its Tune trial id and the sweep."""

    def __init__(self, *args, sweep_id: str = "", sweep: str = "", warm_start=(), **kwargs):
        self._sweep_id, self._sweep, self._warm_start = sweep_id, sweep, list(warm_start)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        fresh = self._storage is None or not any(s.study_name == self._study_name
                                                 for s in optuna.get_all_study_summaries(self._storage))
        super()._setup_study(mode)  # enqueues searcher.points (points_to_evaluate), in order
        if getattr(self, "_sweep_id", ""):
            names = self._metric if isinstance(self._metric, list) else [self._metric]
            for key, value in (("sweep_id", self._sweep_id), ("sweep", self._sweep), ("objectives", names),
                               ("warm_start", self._warm_start)):
                self._ot_study.set_user_attr(key, value)
        if fresh and self._warm_start:
            for line in seed_study(self._ot_study, self._warm_start, self._space.params):
                print(line, file=sys.stderr, flush=True)

    def suggest(self, trial_id: str):
        new = trial_id not in self._ot_trials
        before = len(self._ot_study.get_trials(deepcopy=False, states=FINISHED)) if new else 0
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            ot_trial.set_user_attr("sweep_id", getattr(self, "_sweep_id", ""))
            ot_trial.set_user_attr("trials_before", before)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        if failure_reason(result) and all(n in result for n in names):
            self.__dict__.setdefault("_failed", {})[trial_id] = {**{n: result[n] for n in names}, "run_complete": True}
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list):  # Optuna takes no intermediate values in a multi-objective study
            return
        if self.metric in result and "epoch" in result and trial_id in self._ot_trials:
            seen = self.__dict__.setdefault("_reported", {}).setdefault(trial_id, set())
            epoch = int(result["epoch"])
            if epoch not in seen:  # a restarted trial repeats epochs; Optuna takes one value per step
                seen.add(epoch)
                try:
                    self._ot_trials[trial_id].report(result[self.metric], epoch)
                except Exception:  # noqa: BLE001 - already finished in the study (told before a driver kill)
                    pass

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            self._rerun_complete(trial_id, result, error)
            return
        failed = self.__dict__.get("_failed", {}).pop(trial_id, None)
        if error and failed is not None:
            result, error = failed, False
        if result and not error and not result.get("run_complete", True):
            # The result that stopped it (ASHA's rung, a stop_at target) reached only on_trial_complete: Tune does
            # not pass a result it stops a trial on to on_trial_result.
            self._report(trial_id, result)
            try:  # Optuna gives a pruned trial its last intermediate value
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception:  # noqa: BLE001 - already told (before a driver kill, or restored searcher state)
                pass
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _rerun_complete(self, trial_id: str, result: Optional[dict], error: bool) -> None:
        """A trial ``--resume`` ran again after it had errored: Optuna recorded it as failed and takes no second
        answer for it, so its configuration and final value go into the study as a new, completed trial (user
        attribute ``rerun_of``: the failed record's number)."""
        ot_trial = self._ot_trials.get(trial_id)
        names = self.metric if isinstance(self.metric, list) else [self.metric]
        if error or not result or ot_trial is None or any(not isinstance(result.get(n), (int, float)) for n in names):
            return
        try:
            stored = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == ot_trial.number)
            if stored.state != TrialState.FAIL:
                return
            values = [float(result[n]) for n in names]
            self._ot_study.add_trial(optuna.trial.create_trial(
                params=ot_trial.params, distributions=ot_trial.distributions,
                user_attrs={**stored.user_attrs, "rerun_of": stored.number},
                **({"values": values} if len(values) > 1 else {"value": values[0]})))
        except Exception:  # noqa: BLE001 - the searcher learns a little less; the sweep goes on
            pass


class GrowingGenerator(SearchGenerator):
    """Tune's SearchGenerator, whose number of trials is the spec's, also on ``--resume``: Tune restores the
    count (and a 'finished' flag a stopped sweep sets) from its saved state, so a grown ``num_samples`` would
    otherwise add nothing (ray-project/ray#42221)."""

    def __init__(self, searcher, wanted: int, target=None):
        super().__init__(searcher)
        self.wanted = wanted
        self.target = target  # a TargetStopper (ternsearch.run.stopping): no new trial once it is reached

    def is_finished(self) -> bool:
        return super().is_finished() or bool(getattr(getattr(self, "target", None), "reached", None))

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._total_samples = max(self._total_samples, self.wanted)
        self._finished = self._counter >= self._total_samples


def search_alg(searcher, num_samples: int, max_concurrent: int, target=None) -> GrowingGenerator:
    """What Tune searches with: ``searcher`` (a restored one unwrapped first) behind a concurrency limit."""
    while hasattr(searcher, "searcher"):
        searcher = searcher.searcher
    return GrowingGenerator(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), num_samples, target)


def seed_study(study, sources: list[str], params) -> list[str]:
    """Add the finished (complete and pruned) trials of earlier sweeps' studies (results directories ``sources``) to
    ``study``: those whose every parameter the new space has with the same distribution, in studies with the same
    objective directions; the others are skipped and counted. One line per source, saying so."""
    dists = {p.name: distribution(p) for p in params}
    lines = []
    for source in sources:
        meta = read_sweep(Path(source))
        old = optuna.load_study(study_name=meta["sweep_id"], storage=study_url(source))
        added = skipped = 0
        for t in old.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if old.directions != study.directions or any(dists.get(k) != d for k, d in t.distributions.items()):
                skipped += 1
                continue
            study.add_trial(optuna.trial.create_trial(
                state=t.state, params=t.params, distributions=t.distributions,
                values=t.values if t.state == TrialState.COMPLETE else None, intermediate_values=t.intermediate_values,
                user_attrs={"warm_start_from": meta["sweep_id"], "source_trial": t.user_attrs.get("tune_trial_id")}))
            added += 1
        lines.append(f"warm start: {added} trials from {source}" + (
            f" ({skipped} skipped: other parameters, distributions or objectives)" if skipped else ""))
    return lines


def _told(entry: Optional[dict], names: list[str]) -> tuple[TrialState, Optional[list[float]]]:
    """What the study should say of a trial trials.json records as ``entry``."""
    if entry is None or entry.get("status") in (None, "lost"):
        return TrialState.FAIL, None
    last = entry.get("last") or {}
    if entry["status"] == "stopped":
        return TrialState.PRUNED, None
    values = [last.get(n) for n in names]
    if all(isinstance(v, (int, float)) for v in values) and entry["status"] == "completed":
        return TrialState.COMPLETE, [float(v) for v in values]
    return TrialState.FAIL, None


def reconcile_study(results_dir, study_name: str, trials: dict, names: list[str]) -> int:
    """After a sweep's fit: every study trial still RUNNING whose Tune trial has ended (a driver killed after
    the trial finished but before Tune's saved state said so) gets the state trials.json gives it; one Tune
    never knew (started in a killed driver's last seconds) is FAIL with user attribute ``lost``. Trials Tune
    will resume stay RUNNING. Returns how many were set."""
    if not (Path(results_dir) / STUDY).exists():
        return 0
    storage = study_storage(results_dir)
    study = optuna.load_study(study_name=study_name, storage=storage)
    fixed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        entry = trials.get(t.user_attrs.get("tune_trial_id", ""))
        if entry is not None and entry.get("status") == "running":
            continue
        state, values = _told(entry, names)
        if entry is None or entry.get("status") == "lost":
            storage.set_trial_user_attr(t._trial_id, "lost", True)  # FrozenTrial's storage id (Optuna 5.0)
        try:
            study.tell(t.number, values if values is None or len(values) > 1 else values[0], state=state)
            fixed += 1
        except Exception:  # noqa: BLE001 - finished meanwhile
            pass
    return fixed
