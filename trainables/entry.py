"""What a Ray Tune trial runs. The only module on the trial side that touches Ray (``ray.tune``/``ray.train``).

A trial is ``train_driver_fn(config, setup)``: ``config`` holds the searcher's values, ``setup`` the resolved
base config and the trial's resources. Two ways to run it:

- ``function`` (single-worker trials, the default there): the trial process runs ``loop.run`` itself and
  reports through ``ray.tune.report``. Measured ~1 s from trial start to training, against 13-27 s for a
  TorchTrainer, whose controller and worker actors must start first (benchmarks/trial_overhead.py).
- ``torchtrainer`` (DDP trials): the trial builds a Ray Train V2 ``TorchTrainer`` whose workers run
  ``loop.run`` under torch.distributed, and ``TuneReportCallback`` relays rank 0's reports to Tune.

Either way, the trial restarts from its latest checkpoint after a failure.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

__all__ = ["train_driver_fn", "worker_fn"]


def _node_info() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname()}
    try:
        import ray

        info["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests calling the loop directly)
        info["node_id"] = ""
    return info


def _set_threads(cpus: float) -> None:
    import torch

    # Ray starts workers with OMP_NUM_THREADS=1; give each trial the cores its resources reserve, so that
    # concurrent trials share the machine instead of oversubscribing it.
    torch.set_num_threads(max(int(cpus), 1))


def _config(config: dict, setup: dict):
    from trainables.config import TrainConfig

    return TrainConfig.model_validate(setup["base"]).with_overrides(config)


def _run_function_trial(config: dict, setup: dict) -> None:
    from ray import tune

    from trainables.loop import run

    cfg = _config(config, setup)
    _set_threads(setup["cpus_per_worker"])
    node = _node_info()
    node["world_size_requested"] = 1

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        metrics.update(node)
        checkpoint = tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        run(cfg, report)
        return
    with ckpt.as_directory() as directory:
        run(cfg, report, resume_from=directory)


def worker_fn(loop_config: dict) -> None:
    """One Ray Train worker: run the loop under torch.distributed (set up by TorchTrainer)."""
    import ray.train

    _quiet_logs()

    from trainables.loop import run

    cfg = _config(loop_config["config"], loop_config["setup"])
    _set_threads(loop_config["setup"]["cpus_per_worker"])
    node = _node_info()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # Report which node every rank ran on: rank 0's metrics are what Tune sees, so gather them there.
    import torch.distributed as dist

    nodes = [None] * ctx.get_world_size()
    dist.all_gather_object(nodes, node["node_id"])
    node["rank_node_ids"] = ",".join(nodes)

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        metrics.update(node)
        checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir and rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        run(cfg, report)
        return
    with ckpt.as_directory() as directory:
        run(cfg, report, resume_from=directory)


def _run_torchtrainer_trial(config: dict, setup: dict) -> None:
    from ray import train, tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res: dict[str, float] = {"CPU": setup["cpus_per_worker"]}
    if setup["use_gpu"]:
        res["GPU"] = setup["gpus_per_worker"]
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        worker_fn,
        train_loop_config={"config": config, "setup": setup},
        torch_config=TorchConfig(backend="nccl" if setup["use_gpu"] else "gloo"),
        scaling_config=train.ScalingConfig(
            num_workers=setup["workers"], use_gpu=bool(setup["use_gpu"]), resources_per_worker=res,
            placement_strategy=setup.get("placement_strategy", "PACK"),
        ),
        run_config=train.RunConfig(
            # A stable name lets a re-run trial (driver restarted) find and resume the same Train run.
            name=f"train-{trial_id}",
            storage_path=setup["storage_path"],
            failure_config=train.FailureConfig(max_failures=setup["max_failures"]),
            checkpoint_config=train.CheckpointConfig(num_to_keep=setup["keep_checkpoints"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _quiet_logs() -> None:
    import logging

    # Tune and Train log every checkpoint and every report at INFO from every trial and worker, and Ray
    # forwards those lines to the sweep's terminal; our own progress lines say the same thing once.
    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_driver_fn(config: dict, setup: dict) -> None:
    """The Tune trial: run the loop here (function mode) or through a TorchTrainer (DDP)."""
    _quiet_logs()
    if setup["mode"] == "function":
        _run_function_trial(config, setup)
    else:
        _run_torchtrainer_trial(config, setup)
