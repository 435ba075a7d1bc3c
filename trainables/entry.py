"""What a Ray Tune trial runs. The only module on the trial side that touches Ray (``ray.tune``/``ray.train``).

A trial is ``train_driver_fn(config, setup)``: ``config`` holds the searcher's values, ``setup`` (a
``trainables.setup.TrialSetup``) the resolved base config and the trial's resources. Two ways to run it:

- ``function`` (single-worker trials, the default there): the trial process runs ``loop.run`` itself and
  reports through ``ray.tune.report``. Measured ~1 s from trial start to training, against 13-27 s for a
  TorchTrainer, whose controller and worker actors must start first (benchmarks/trial_overhead.py).
- ``torchtrainer`` (DDP trials): the trial builds a Ray Train V2 ``TorchTrainer`` whose workers run
  ``loop.run`` under torch.distributed, and ``TuneReportCallback`` relays rank 0's reports to Tune.

Either way, the trial restarts from its latest checkpoint after a failure.

Ray, torch and the modules that import torch are imported inside the functions that run in a trial: the sweep
driver imports this module to hand Tune the trainable, and tests call its helpers, without either.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional

from trainables.attempt import newest_first, run_attempt, siblings
from trainables.config import TrainConfig
from trainables.failures import as_permanent, cap_memory_from_env, find_permanent
from trainables.setup import TrialSetup

__all__ = ["train_driver_fn", "trial_device", "trial_events_dir", "worker_fn"]


def _node_info() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname()}
    try:
        import ray  # in the trial only (see the module's docstring)

        info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests calling the loop directly)
        info["node_id"] = ""
    return info


def _set_threads(cpus: float) -> None:
    import torch  # in the trial only (see the module's docstring)

    # Ray starts workers with OMP_NUM_THREADS=1; give each trial the cores its resources reserve, so that
    # concurrent trials share the machine instead of oversubscribing it.
    torch.set_num_threads(max(int(cpus), 1))


def trial_device(setup: TrialSetup, train_worker: bool = False):
    """The device the trial reserved: CPU when it reserved no GPU, else the GPU Ray assigned it.

    Not ``device.pick_device``: Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for actors that reserve no GPU, so a
    ``use_gpu: false`` trial on a GPU machine would see every GPU and train on one unreserved. A Train worker
    takes ``ray.train.torch.get_device()`` (the GPU of its own bundle, whatever its local rank); a function-mode
    trial sees only its own GPU (Ray sets ``CUDA_VISIBLE_DEVICES`` for it), which is ``cuda:0``.
    """
    import torch  # in the trial only (see the module's docstring)

    if not setup.use_gpu:
        return torch.device("cpu")
    if train_worker:
        from ray.train.torch import get_device  # in a Train worker only

        device = get_device()
    else:
        device = torch.device("cuda", 0)
    share = setup.gpus_per_worker
    if 0.0 < share < 1.0:
        # Several trials on one GPU: cap this process's caching allocator at its share, so that a neighbour's
        # memory use is not this trial's out-of-memory failure (which TPE would learn as "big batches fail").
        torch.cuda.set_per_process_memory_fraction(share, device)
    return device


def _config(config: dict, setup: TrialSetup) -> TrainConfig:
    # Validated once the searched values are in: the base alone may break a rule they mend (spec.base_config).
    return TrainConfig.from_base(setup.base, config)


def _train(cfg, setup: TrialSetup, send, candidates: list[str], world_rank: int,
           events_dir: Optional[str] = None, refind: Optional[Callable[[], list[str]]] = None) -> None:
    """``attempt.run_attempt`` on the device the trial reserved."""
    run_attempt(cfg, setup, send, candidates, world_rank, trial_device(setup, train_worker=setup.mode != "function"),
                events_dir, refind)


def trial_events_dir(setup: TrialSetup, trial_id: str) -> Optional[str]:
    """Where the trial's TensorBoard event files go: its own directory in the Tune experiment,
    ``RESULTS/tune/trial_ID``, so ``tensorboard --logdir RESULTS`` shows one run per trial. None on object storage
    (s3://, gs://...), which the writer cannot append to."""
    if "://" in setup.trial_dir_root:
        return None
    return f"{setup.trial_dir_root}/trial_{trial_id}"


def _run_function_trial(config: dict, setup: TrialSetup) -> None:
    from ray import tune  # in the trial only (see the module's docstring)

    cfg = _config(config, setup)
    _set_threads(setup.cpus_per_worker)
    cap_memory_from_env()  # a test's simulated small machine; off unless set
    node = _node_info()

    def send(metrics: dict, ckpt_dir: Optional[str]) -> None:
        metrics.update(node)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)

    ckpt = tune.get_checkpoint()
    trial_id = tune.get_context().get_trial_id()

    def stored() -> list[str]:  # the trial's checkpoints on local or shared-filesystem storage, newest first
        trial_dir = Path(f"{setup.trial_dir_root}/trial_{trial_id}")
        return newest_first([str(p) for p in trial_dir.glob("checkpoint_*") if p.is_dir()])

    if ckpt is None:
        # Tune records a trial's checkpoints in its experiment state every few seconds; a driver killed in
        # between restores the trial without its newest checkpoint. The checkpoints are on storage all the
        # same: look for them (local and shared filesystems).
        _train(cfg, setup, send, stored(), 0, trial_events_dir(setup, trial_id), refind=stored)
        return
    with ckpt.as_directory() as directory:
        # On local or shared-filesystem storage the directory is the stored checkpoint itself, and the
        # previous one (kept by CheckpointConfig.num_to_keep) lies beside it.
        _train(cfg, setup, send, siblings(directory), 0, trial_events_dir(setup, trial_id), refind=stored)


def worker_fn(loop_config: dict) -> None:
    """One Ray Train worker: run the loop under torch.distributed (set up by TorchTrainer)."""
    import ray.train  # in the trial only (see the module's docstring)
    import torch.distributed as dist  # in the trial only

    _quiet_logs()
    setup: TrialSetup = loop_config["setup"]
    cfg = _config(loop_config["config"], setup)
    _set_threads(setup.cpus_per_worker)
    node = _node_info()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    cap_memory_from_env(rank)
    # Report which node every rank ran on: rank 0's metrics are what Tune sees, so gather them there.
    nodes = [None] * ctx.get_world_size()
    dist.all_gather_object(nodes, node["node_id"])
    node["rank_node_ids"] = ",".join(nodes)
    # The worker group's placement group: the sweep driver removes it when the trial ends, stops or restarts,
    # because Train's own cleaner misses it when Tune kills a stopped trial (see ternsearch.run.tuner).
    node["placement_group_id"] = ray.get_runtime_context().get_placement_group_id() or ""

    def send(metrics: dict, ckpt_dir: Optional[str]) -> None:
        metrics.update(node)
        checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir and rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)

    candidates = []
    if ray.train.get_checkpoint() is not None:
        from pyarrow.fs import LocalFileSystem  # Ray's storage layer: in a Train worker only

        for reported in reversed(ray.train.get_all_reported_checkpoints()):  # newest first
            ckpt = reported.checkpoint
            local = isinstance(ckpt.filesystem, LocalFileSystem)
            candidates.append(ckpt.path if local else ckpt.to_directory())
            if not local:  # remote storage: download the newest only
                break
    _train(cfg, setup, send, candidates, rank, loop_config.get("events_dir"))


def _permanent_worker_fn(loop_config: dict) -> None:
    """``worker_fn``, raising a ``PermanentTrialError`` for what a retry would repeat (see ``_lean``'s policy)."""
    try:
        worker_fn(loop_config)
    except Exception as exc:  # noqa: BLE001 - classified, then re-raised
        permanent = as_permanent(exc)
        if permanent is None:
            raise
        raise permanent from None


def _run_torchtrainer_trial(config: dict, setup: TrialSetup) -> None:
    from ray import train, tune  # in the trial only (see the module's docstring)
    from ray.train.torch import TorchConfig, TorchTrainer  # in the trial only
    from ray.tune.integration.ray_train import TuneReportCallback  # in the trial only

    res: dict[str, float] = {"CPU": setup.cpus_per_worker}
    if setup.use_gpu:
        res["GPU"] = setup.gpus_per_worker
    trial_id = tune.get_context().get_trial_id()
    if setup.local_cluster:
        # Train's preemption watcher polls for nodes being drained (spot instances); a local Ray has none, and its
        # extra process would start just while the workers set up (benchmarks/trial_overhead.py).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    trainer = _lean(TorchTrainer)(
        _permanent_worker_fn,
        train_loop_config={"config": config, "setup": setup, "events_dir": trial_events_dir(setup, trial_id)},
        torch_config=TorchConfig(backend="nccl" if setup.use_gpu else "gloo"),
        scaling_config=train.ScalingConfig(
            num_workers=setup.workers, use_gpu=setup.use_gpu, resources_per_worker=res,
            placement_strategy=setup.placement_strategy,
        ),
        run_config=train.RunConfig(
            # A stable name lets a re-run trial (driver restarted) find and resume the same Train run.
            name=f"train-{trial_id}",
            storage_path=setup.storage_path,
            failure_config=train.FailureConfig(max_failures=setup.max_failures),
            checkpoint_config=train.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            callbacks=[TuneReportCallback()],
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a worker's permanent error ends the trial as one
        permanent = find_permanent(exc)
        if permanent is None:
            raise
        raise permanent from None


def _lean(trainer_cls):
    """``trainer_cls`` without Train's placement-group cleaner: a detached actor, started with every fit, that
    polls the State API to remove the workers' placement group when the controller dies. The sweep driver does
    that itself (ternsearch.run.tuner.ReleaseTrainResources), and the cleaner's process start and blocking
    registration sit on every DDP trial's way to its first step. Checked against ray 2.60; if Train's internals
    move, the full trainer is used."""
    try:  # in the trial only (see the module's docstring); Train's internals, which may move
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return trainer_cls

    policy_cls = _permanent_aware_policy()

    class LeanTrainer(trainer_cls):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

        def _initialize_and_run_controller(self, **kwargs):
            if policy_cls is not None and "failure_policy" in kwargs:
                kwargs["failure_policy"] = policy_cls(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

    return LeanTrainer


def _permanent_aware_policy():
    """Train V2's default failure policy, except that a worker group failing with a ``PermanentTrialError`` (data
    missing, a config the trial cannot build...) is not restarted: every restart would fail the same way, ~13 s
    each on 2 cores. Crashes and lost workers are retried as before. Checked against ray 2.60; if Train's
    internals move, the default policy is used."""
    try:  # in the trial only (see the module's docstring); Train's internals, which may move
        from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
        from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision  # as above
    except ImportError:
        return None

    class PermanentAwarePolicy(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if find_permanent(training_failed_error) is not None:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return PermanentAwarePolicy


def _quiet_logs() -> None:
    # Tune and Train log every checkpoint and every report at INFO from every trial and worker, and Ray
    # forwards those lines to the sweep's terminal; our own progress lines say the same thing once.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_driver_fn(config: dict, setup: TrialSetup) -> None:
    """The Tune trial: run the loop here (function mode) or through a TorchTrainer (DDP)."""
    _quiet_logs()
    try:
        if setup.mode == "function":
            _run_function_trial(config, setup)
        else:
            _run_torchtrainer_trial(config, setup)
    except Exception as exc:  # noqa: BLE001 - classified, then re-raised
        # What a retry would repeat ends the trial at once (the sweep driver does not retry a
        # PermanentTrialError); anything else (a crash, a lost peer) is retried from the last checkpoint.
        permanent = as_permanent(exc)
        if permanent is None:
            raise
        raise permanent from None
