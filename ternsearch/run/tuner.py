"""Builds the Ray Tune objects of a sweep. The only module of the platform that constructs Tune objects."""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ray import tune
from ray._raylet import PlacementGroupID
from ray.train._internal import checkpoint_manager
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group
from trainables.entry import train_driver_fn
from trainables.replay import ReplayTable, replay_fn
from trainables.setup import TrialSetup

from ternsearch.results.files import TUNE_DIR
from ternsearch.results.location import records_dir
from ternsearch.run.failfast import no_retry_for_permanent_errors
from ternsearch.run.replay import replay_setup
from ternsearch.run.searcher import StudySearcher, search_alg, study_storage
from ternsearch.run.searcher import StudySearcher as _Searcher  # noqa: F401 - earlier sweeps pickled it so
from ternsearch.spec import SweepSpec
from ternsearch.spec.space import DefineByRun, make_sampler

__all__ = ["Plan", "ReleaseTrainResources", "make_plan", "trial_bundles", "build_tuner", "restore_tuner", "trial_setup",
           "sweep_storage", "experiment_path"]


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
    fits: int = 1  # trials the cluster holds at once, node by node (0: a trial fits on no node)
    local: bool = False  # the sweep runs on a Ray it started on this machine (no --address)


def trial_bundles(spec: SweepSpec, mode: str, use_gpu: bool) -> list[tuple[dict[str, float], int]]:
    """The resource bundles one trial asks Ray for, each with how many of it: the trial's driver (which in
    function mode is also the trainer) and, for a TorchTrainer, its workers. Each bundle lands on one node."""
    r = spec.resources
    worker = {"CPU": r.cpus_per_worker}
    if use_gpu:
        worker["GPU"] = r.gpus_per_worker
    driver = {k: float(v) for k, v in r.driver_resources.items()}
    if mode == "function":
        return [({**worker, **{k: worker.get(k, 0) + v for k, v in driver.items()}}, 1)]
    return [(driver, 1), (worker, r.workers_per_trial)] if driver else [(worker, r.workers_per_trial)]


def _fits(bundle: dict[str, float], nodes: list[tuple[dict[str, float], int]]) -> int:
    """How many copies of ``bundle`` the nodes hold at once (each copy on one node)."""
    total = 0
    for res, count in nodes:
        per_node = min((math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0), default=1)
        total += count * max(per_node, 0)
    return total


def make_plan(spec: SweepSpec, cluster: dict[str, float],
              nodes: Optional[list[tuple[dict[str, float], int]]] = None) -> Plan:
    """Resolve ``auto`` settings against the cluster's resources (``ray.cluster_resources()`` or a guess).

    ``nodes`` lists the cluster's nodes as (resources, count), the nodes an autoscaler may add included; by
    default ``cluster`` is one node. Concurrency never exceeds the trials those nodes hold at once, node by
    node (``Plan.fits``; 0 when a trial's bundle fits on no node), whatever ``max_concurrent_trials`` asks.
    """
    r = spec.resources
    use_gpu = cluster.get("GPU", 0) > 0 if r.use_gpu == "auto" else bool(r.use_gpu)
    gpus = r.gpus_per_worker if use_gpu else 0.0
    mode = r.trial_mode
    per_trial = {"CPU": r.cpus_per_worker * r.workers_per_trial}
    if gpus:
        per_trial["GPU"] = gpus * r.workers_per_trial
    for k, v in r.driver_resources.items():
        per_trial[k] = per_trial.get(k, 0) + v
    fits = min(_fits(bundle, nodes or [(cluster, 1)]) // count
               for bundle, count in trial_bundles(spec, mode, use_gpu))
    cap = max(fits, 1)
    concurrent = min(spec.searcher.max_concurrent_trials or cap, cap)
    return Plan(mode, r.workers_per_trial, use_gpu, r.cpus_per_worker, gpus, per_trial,
                min(concurrent, spec.searcher.num_samples), spec.max_epochs, fits)


def sweep_storage(storage_path: str, name: str) -> str:
    """The sweep's directory in its storage, ``STORAGE/NAME`` (a local path or a URI): Tune's storage_path, under
    which its experiment and the DDP trials' Train runs live."""
    return f"{storage_path.rstrip('/')}/{name}"


def experiment_path(storage_path: str, name: str) -> str:
    """Tune's experiment directory: ``STORAGE/NAME/tune``.

    Not ``STORAGE/NAME`` itself: Tune syncs its experiment directory from a driver-side staging copy, and on
    restore that copy would overwrite the sweep's own records (trials.json) with their state at the kill.
    """
    return f"{sweep_storage(storage_path, name)}/{TUNE_DIR}"


def trial_setup(spec: SweepSpec, plan: Plan, storage_path: str) -> TrialSetup:
    """What every trial needs besides the searcher's values (passed once through the object store)."""
    return TrialSetup(
        base=spec.base_config().model_dump(mode="json"),
        mode=plan.mode,
        workers=plan.workers,
        use_gpu=plan.use_gpu,
        cpus_per_worker=plan.cpus_per_worker,
        gpus_per_worker=plan.gpus_per_worker,
        # Train runs of DDP trials live beside the Tune experiment, inside the sweep's directory.
        storage_path=sweep_storage(storage_path, spec.name),
        trial_dir_root=f"{experiment_path(storage_path, spec.name)}",
        max_failures=spec.failure.max_failures,
        keep_checkpoints=spec.failure.keep_checkpoints,
        # A trial's DDP ranks on as few nodes as possible (NVLink / shared memory, not NCCL over TCP), whatever
        # the storage: shared storage lets trials spread over nodes, which Tune does trial by trial anyway.
        placement_strategy="PACK",
        objectives=[(m.name, m.mode) for m in spec.objectives],
        local_cluster=plan.local,
    )


def prestart_train_services() -> None:
    """Start the cluster-wide actor every Train V2 fit asks for resources through (its autoscaling coordinator)
    now, while the sweep sets up, instead of on the first DDP trial's way to its first step, where its process
    start measured ~1.4 s on 2 cores (benchmarks/trial_overhead.py). Train would create the same named actor
    itself; if Ray's internals move, it still does."""
    try:
        # private Ray API, imported inside the try: if it moves, Train creates the actor itself
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator)

        get_or_create_autoscaling_coordinator()  # asynchronous: returns once the actor is requested
    except Exception:  # noqa: BLE001 - an optimization only
        pass


class ReleaseTrainResources(tune.Callback):
    """Removes a DDP trial's Ray Train placement group when the trial ends, is stopped, or restarts.

    When ASHA stops a trial, Tune kills the trial's process and with it the Train controller it owns; Train
    V2 then relies on a detached cleaner actor that polls the State API, and that poll fails in some setups
    (measured here: several Ray instances on one machine make it raise), leaving the workers' CPUs or GPUs
    reserved forever and every later DDP trial waiting. The workers report their placement group id, and
    the sweep driver, which outlives every trial, removes it.
    """

    def _release(self, trial) -> None:
        pg_hex = (trial.last_result or {}).get("placement_group_id")
        if not pg_hex:
            return
        pg = PlacementGroup(PlacementGroupID.from_hex(pg_hex))
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._release(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._release(trial)


def _replay_trainable(spec: SweepSpec, plan: Plan, storage_path: str, table: ReplayTable):
    """A trial that replays ``table`` (``--replay``). It trains nothing, so it takes no GPU; it takes the CPUs and
    custom resources of the trial it stands for, so that as many run at once as would train (the plan's
    concurrency): a spec asking for a fraction of a CPU per worker runs that many more at once."""
    setup = replay_setup(spec, table, experiment_path(storage_path, spec.name))
    res = {"cpu": plan.trial_resources.get("CPU", 0.0),
           **{k: v for k, v in plan.trial_resources.items() if k not in ("CPU", "GPU")}}
    return tune.with_resources(tune.with_parameters(replay_fn, setup=setup), res)


def _trainable(spec: SweepSpec, plan: Plan, storage_path: str, replay: Optional[ReplayTable] = None):
    if replay is not None:
        return _replay_trainable(spec, plan, storage_path, replay)
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


def _searcher_and_scheduler(spec: SweepSpec, plan: Plan, storage_path: Optional[str] = None, sweep_id: str = ""):
    """The searcher (its study in RESULTS/optuna.db; in memory without ``storage_path``) and the scheduler."""
    s = spec.searcher
    sampler = make_sampler(s.algorithm, spec.params, s.seed, s.num_samples, n_startup_trials=s.n_startup_trials,
                           multivariate=s.multivariate, constant_liar=s.constant_liar)
    if spec.multi_objective:  # OptunaSearch takes lists: the study is multi-objective
        metric, mode = [m.name for m in spec.objectives], [m.mode for m in spec.objectives]
    else:
        metric, mode = spec.metric.name, spec.metric.mode
    storage = study_storage(records_dir(spec.name, storage_path)) if storage_path else None
    search = StudySearcher(space=DefineByRun(spec.params), metric=metric, mode=mode, sampler=sampler,
                           seed=spec.searcher.seed, study_name=sweep_id or None, storage=storage, sweep_id=sweep_id,
                           sweep=spec.name, points_to_evaluate=[dict(p) for p in spec.searcher.points] or None,
                           warm_start=[str(Path(s).expanduser().resolve()) for s in spec.searcher.warm_start])
    if spec.scheduler.algorithm == "asha":
        # Our own `epoch` is the time axis: Tune's training_iteration restarts when a trial's driver restarts.
        # With several objectives ASHA gets its own (scheduler.metric) and Tune none (see build_tuner).
        own = {"metric": spec.asha_metric.name, "mode": spec.asha_metric.mode} if spec.multi_objective else {}
        scheduler = ASHAScheduler(time_attr="epoch", max_t=plan.max_epochs, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor, brackets=spec.scheduler.brackets,
                                  **own)
    else:
        scheduler = FIFOScheduler()
    return search, scheduler


def reuse_actors(plan: Plan, replay: bool = False) -> bool:
    """Whether a finished trial's process runs the next trial: for function trials (one worker, all trials alike),
    which then skip a Ray worker start and the torch import (see BENCHMARKS.md). TorchTrainer trials start their
    own worker group anyway; replayed trials are function trials. ``TERNSEARCH_REUSE_ACTORS=0`` turns it off
    (benchmarks compare both)."""
    return (plan.mode == "function" or replay) and os.environ.get("TERNSEARCH_REUSE_ACTORS", "1") != "0"


def _tolerate_deleted_checkpoints() -> None:
    """Tune's checkpoint manager deletes a trial's oldest checkpoint when a new one exceeds num_to_keep, and fails
    the trial when that directory is already gone. After a killed driver it is: the restored experiment state is a
    few seconds older than the last deletions (ray-project/ray#27790; measured here with ray 2.60: a resumed trial
    failed with "FileNotFoundError: Path not found ... checkpoint_000000"). A checkpoint that is already deleted is
    what deleting it wants, so the sweep driver lets that pass."""
    original = checkpoint_manager._delete_fs_path
    if getattr(original, "_ternsearch", False):
        return

    def delete(fs, fs_path):
        try:
            original(fs=fs, fs_path=fs_path)
        except FileNotFoundError:
            pass

    delete._ternsearch = True
    checkpoint_manager._delete_fs_path = delete


def build_tuner(spec: SweepSpec, plan: Plan, storage_path: str, callbacks: list,
                stop: Optional[tune.Stopper] = None, sweep_id: str = "", target=None,
                replay: Optional[ReplayTable] = None) -> tune.Tuner:
    """A fresh Tuner for ``spec`` whose experiment lives in ``storage_path/spec.name``; ``stop`` may end it. Its
    Optuna study is ``RESULTS/optuna.db``, named ``sweep_id`` (see :mod:`ternsearch.run.searcher`); no trial starts
    once ``target`` (a ``TargetStopper``) is reached. With ``replay``, trials replay that table."""
    _tolerate_deleted_checkpoints()
    no_retry_for_permanent_errors()
    search, scheduler = _searcher_and_scheduler(spec, plan, storage_path, sweep_id or spec.name)
    return tune.Tuner(
        _trainable(spec, plan, storage_path, replay),
        tune_config=tune.TuneConfig(
            # One metric for Tune to hand the scheduler; none with several objectives (ASHA has its own then).
            metric=None if spec.multi_objective else spec.metric.name,
            mode=None if spec.multi_objective else spec.metric.mode, scheduler=scheduler,
            search_alg=search_alg(search, spec.searcher.num_samples, plan.max_concurrent, target),
            num_samples=spec.searcher.num_samples,
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            reuse_actors=reuse_actors(plan, replay is not None),
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=sweep_storage(storage_path, spec.name), callbacks=callbacks, verbose=0,
            stop=stop,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.failure.keep_checkpoints),
        ),
    )


# Where the classes a sweep's Tune state pickles (tuner.pkl, the searcher's state) lived before ternsearch/ had
# subpackages, so that a sweep an earlier version started still resumes: pickle finds a class by its module's
# name. (ternsearch.spec.Param and ternsearch.tracking.MLflowTracker still resolve under their former names.)
FORMER_MODULES = {"ternsearch.tuner": "ternsearch.run.tuner", "ternsearch.failfast": "ternsearch.run.failfast",
                  "ternsearch.progress": "ternsearch.run.progress", "ternsearch.records": "ternsearch.results.recorder",
                  "ternsearch.space": "ternsearch.spec.space"}


def accept_former_module_names() -> None:
    """Let Tune's unpickling of a sweep's state find our classes under the module names they had before."""
    for former, now in FORMER_MODULES.items():
        sys.modules.setdefault(former, importlib.import_module(now))


def restore_tuner(spec: SweepSpec, plan: Plan, storage_path: str, callbacks: list,
                  stop: Optional[tune.Stopper] = None, target=None,
                  replay: Optional[ReplayTable] = None) -> tune.Tuner:
    """Continue an interrupted or failed sweep: unfinished trials resume from their checkpoints, finished and
    ASHA-stopped ones are kept, and the searcher's state (Optuna study) is restored. Errored trials run again
    from their last checkpoint: one that failed because of something since fixed (data, a crash budget spent)
    now finishes; a diverged or out-of-memory trial finds its failure marker and ends at once, as before."""
    _tolerate_deleted_checkpoints()
    no_retry_for_permanent_errors()
    accept_former_module_names()
    tuner = tune.Tuner.restore(experiment_path(storage_path, spec.name),
                               trainable=_trainable(spec, plan, storage_path, replay),
                               resume_unfinished=True, resume_errored=True)
    # The restored run config carries pickled copies of our callbacks and stopper; use fresh ones (private API,
    # checked against ray 2.60: TunerInternal.get_run_config() returns the RunConfig that fit() hands to Tune).
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks, run_config.stop = callbacks, stop
    # The spec's num_samples, which --resume may have raised (a grown sweep): the restored searcher behind a fresh
    # generator that keeps it (TuneConfig is TunerInternal._tune_config, checked against ray 2.60).
    tune_config = tuner._local_tuner._tune_config
    tune_config.search_alg = search_alg(tune_config.search_alg, spec.searcher.num_samples, plan.max_concurrent,
                                        target)
    tune_config.num_samples, tune_config.max_concurrent_trials = spec.searcher.num_samples, None
    return tuner
