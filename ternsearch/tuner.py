"""Builds the Ray Tune objects of a sweep. The only module of the platform that constructs Tune objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ternsearch.space import DefineByRun, make_sampler
from ternsearch.spec import SweepSpec

__all__ = ["Plan", "make_plan", "build_tuner", "restore_tuner", "trial_setup"]


@dataclass(frozen=True)
class Plan:
    """How a sweep will run on the cluster at hand."""

    mode: str  # "function" or "torchtrainer"
    workers: int
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float
    trial_resources: dict  # what one trial takes (driver + workers)
    max_concurrent: int
    max_epochs: int


def _max_epochs(spec: SweepSpec) -> int:
    p = next((q for q in spec.params if q.name == "epochs"), None)
    if p is None:
        return spec.train.epochs
    return int(max(p.choices) if p.kind == "choice" else p.high)


def make_plan(spec: SweepSpec, cluster: dict[str, float]) -> Plan:
    """Resolve ``auto`` settings against the cluster's resources (``ray.cluster_resources()`` or a guess)."""
    r = spec.resources
    use_gpu = cluster.get("GPU", 0) > 0 if r.use_gpu == "auto" else bool(r.use_gpu)
    gpus = r.gpus_per_worker if use_gpu else 0.0
    mode = "function" if r.workers_per_trial == 1 and r.trainer != "torchtrainer" else "torchtrainer"
    per_trial = {"CPU": r.cpus_per_worker * r.workers_per_trial}
    if gpus:
        per_trial["GPU"] = gpus * r.workers_per_trial
    for k, v in r.driver_resources.items():
        per_trial[k] = per_trial.get(k, 0) + v
    fits = min((cluster.get(k, 0.0) // v for k, v in per_trial.items() if v > 0), default=1)
    concurrent = spec.searcher.max_concurrent_trials or max(int(fits), 1)
    return Plan(mode, r.workers_per_trial, use_gpu, r.cpus_per_worker, gpus, per_trial,
                min(concurrent, spec.searcher.num_samples), _max_epochs(spec))


def trial_setup(spec: SweepSpec, plan: Plan, storage_path: str) -> dict[str, Any]:
    """What every trial needs besides the searcher's values (passed once through the object store)."""
    return {
        "base": spec.base_config().model_dump(mode="json"),
        "mode": plan.mode,
        "workers": plan.workers,
        "use_gpu": plan.use_gpu,
        "cpus_per_worker": plan.cpus_per_worker,
        "gpus_per_worker": plan.gpus_per_worker,
        # Train runs of DDP trials live beside the Tune trials, inside the sweep's results directory.
        "storage_path": f"{storage_path.rstrip('/')}/{spec.name}",
        "max_failures": spec.failure.max_failures,
        "keep_checkpoints": spec.failure.keep_checkpoints,
        "placement_strategy": "SPREAD" if spec.storage.shared else "PACK",
    }


class _Searcher(OptunaSearch):
    """OptunaSearch that reports by our ``epoch`` (Tune's iteration restarts with a restarted trial) and tells
    Optuna that trials ASHA stopped early were pruned, not completed."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        if self.metric in result and "epoch" in result and trial_id in self._ot_trials:
            seen = self.__dict__.setdefault("_reported", {}).setdefault(trial_id, set())
            epoch = int(result["epoch"])
            if epoch not in seen:  # a restarted trial repeats epochs; Optuna takes one value per step
                seen.add(epoch)
                self._ot_trials[trial_id].report(result[self.metric], epoch)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if result and not error and not result.get("run_complete", True) and trial_id not in self._completed_trials:
            import optuna

            ot_trial = self._ot_trials[trial_id]
            try:
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            except Exception:  # already told (restored searcher state)
                pass
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def _trainable(spec: SweepSpec, plan: Plan, storage_path: str):
    from trainables.entry import train_driver_fn

    fn = tune.with_parameters(train_driver_fn, setup=trial_setup(spec, plan, storage_path))
    extra = dict(spec.resources.driver_resources)
    if plan.mode == "function":
        res = {"cpu": plan.cpus_per_worker, **extra}
        if plan.use_gpu:
            res["gpu"] = plan.gpus_per_worker
    else:
        # The trial's driver only builds and watches the TorchTrainer: it must not hold a CPU its workers need
        # (on a 2-core machine that deadlocks). {"cpu": 0} alone is refused, hence the token memory.
        res = {"cpu": 0, "memory": 1, **extra}
    return tune.with_resources(fn, res)


def _searcher_and_scheduler(spec: SweepSpec, plan: Plan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sampler = make_sampler(spec.searcher.algorithm, spec.params, spec.searcher.seed, spec.searcher.num_samples)
    search = _Searcher(space=DefineByRun(spec.params), metric=spec.metric.name, mode=spec.metric.mode,
                       sampler=sampler, seed=spec.searcher.seed)
    if spec.scheduler.algorithm == "asha":
        # Our own `epoch` is the time axis: Tune's training_iteration restarts when a trial's driver restarts.
        scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor, brackets=spec.scheduler.brackets)
    else:
        scheduler = FIFOScheduler()
    return search, scheduler


def build_tuner(spec: SweepSpec, plan: Plan, storage_path: str, callbacks: list) -> tune.Tuner:
    """A fresh Tuner for ``spec`` whose experiment lives in ``storage_path/spec.name``."""
    search, scheduler = _searcher_and_scheduler(spec, plan)
    return tune.Tuner(
        _trainable(spec, plan, storage_path),
        tune_config=tune.TuneConfig(
            metric=spec.metric.name, mode=spec.metric.mode, search_alg=search, scheduler=scheduler,
            num_samples=spec.searcher.num_samples, max_concurrent_trials=plan.max_concurrent,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=storage_path, callbacks=callbacks, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
        ),
    )


def restore_tuner(spec: SweepSpec, plan: Plan, storage_path: str, results_dir: Path, callbacks: list) -> tune.Tuner:
    """Continue an interrupted sweep: unfinished trials resume from their checkpoints, finished ones are kept,
    and the searcher's state (Optuna study) is restored. Errored trials stay errored (a diverged trial would
    only diverge again)."""
    tuner = tune.Tuner.restore(str(results_dir), trainable=_trainable(spec, plan, storage_path),
                               resume_unfinished=True, resume_errored=False)
    # The restored run config carries pickled copies of our callbacks; use fresh ones (private API, checked
    # against ray 2.60: TunerInternal.get_run_config() returns the RunConfig that fit() hands to Tune).
    tuner._local_tuner.get_run_config().callbacks = callbacks
    return tuner
