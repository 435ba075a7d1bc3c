"""Checks that need the machine but start nothing: data, storage, GPUs, and whether a trial fits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from trainables.datafiles import DataError, check_data

from ternsearch.errors import PreflightError
from ternsearch.results.outputs import unwritable
from ternsearch.spec import SweepSpec
from ternsearch.tracking.store import sqlite_path

__all__ = ["check_environment", "check_inputs", "local_resources", "check_fits", "check_one_node",
           "check_tracking_store"]


def local_resources() -> dict[str, float]:
    """This machine's CPUs and GPUs as Ray would see them, without starting Ray."""
    # torch takes seconds to import: only for a dry run without --address, or use_gpu: true
    import torch

    res = {"CPU": float(os.cpu_count() or 1)}
    if torch.cuda.is_available():
        res["GPU"] = float(torch.cuda.device_count())
    return res


def check_inputs(cfg, where: Callable[[tuple[str, ...], str], str], data_key: tuple[str, ...] = ("data",)) -> None:
    """What a trial config ``cfg`` reads before it trains: the data files, and the local weight sources its recipe
    names (``model.init_from``, ``train.distill_from``). The one place trainables' DataError and RecipeError become
    a user's PreflightError, whose line ``where(key, detail)`` writes (``data_key`` is the data error's key).
    """
    try:
        check_data(cfg.data)
    except DataError as exc:
        raise PreflightError(where(data_key, str(exc))) from None
    if cfg.model.init_from or cfg.train.distill_from:
        # trainables.recipes imports torch: only when a weight source is named
        from trainables.recipes import RecipeError, check_sources

        try:
            check_sources(cfg)
        except RecipeError as exc:
            raise PreflightError(where(tuple(exc.key.split(".")), exc.detail)) from None


def check_environment(spec: SweepSpec, storage: str, address: Optional[str],
                      storage_arg: Optional[str] = None, inputs: bool = True) -> None:
    """Data present, storage writable, GPUs present when asked for, multi-node constraints. ``storage`` is the
    resolved storage path; ``storage_arg`` the ``--storage`` that gave it, if any (named in the message). Without
    ``inputs`` (a replayed sweep, which reads no data), the data and weight sources are not checked.

    Raises:
        PreflightError: one line naming the file, the key and what to do.
    """
    loc = spec.located
    if inputs:
        check_inputs(spec.base_config(),  # the absolute paths the trials will read
                     lambda key, detail: str(loc.error(key, detail)), ("data", "root") if spec.data.root else ("data",))
    why = unwritable(Path(storage)) if "://" not in storage else None
    if why and storage_arg:
        raise PreflightError(f"--storage {storage_arg}: {storage} is not writable: {why} (give a directory you "
                             "can write)")
    if why:
        raise PreflightError(str(loc.error(("storage", "path"), f"{storage} is not writable: {why} (use a "
                                           "directory you can write, or --storage DIR)")))
    if spec.resources.use_gpu is True and address is None and local_resources().get("GPU", 0) == 0:
        raise PreflightError(str(loc.error(("resources", "use_gpu"), "true, but this machine has no GPU and no "
                                           "--address was given (use use_gpu: auto or false, or --address of a "
                                           "cluster with GPUs)")))
def check_fits(spec: SweepSpec, trial_resources: dict[str, float], cluster: dict[str, float],
               where: str, *, tracking_uri: str, multi_node: bool = False, storage: Optional[str] = None) -> None:
    """A trial must fit the cluster; on several nodes storage must be shared and tracking a server.

    ``storage`` is the effective value (command-line override applied); ``tracking_uri`` the sweep's resolved
    URI (``ternsearch.tracking.store.resolve_uri``).
    """
    loc = spec.located
    for key, need in trial_resources.items():
        have = cluster.get(key, 0.0)
        if need > have:
            raise PreflightError(str(loc.error(
                ("resources",), f"one trial needs {need:g} {key} but {where} has {have:g} "
                f"(lower workers_per_trial / cpus_per_worker / gpus_per_worker, or add nodes)")))
    if multi_node:
        path = storage or spec.storage.path
        if "://" not in path and not spec.storage.shared:
            raise PreflightError(str(loc.error(("storage", "path"), f"{path!r} is a local path, but the cluster has "
                                               "several nodes (use s3://, gs://, or an NFS path with shared: true)")))
        if not tracking_uri.startswith(("http://", "https://", "databricks")):
            raise PreflightError(str(loc.error(("tracking", "uri"), f"{tracking_uri} is local, "
                                               "but the cluster has several nodes (run `mlflow server` on the head "
                                               "and use http://HEAD:5000)")))


def check_one_node(spec: SweepSpec, plan, where: str) -> None:
    """Every trial needs each of its bundles on a single node: one that fits no node would wait forever."""
    if plan.fits > 0:
        return
    # ternsearch.run.tuner imports Ray Tune: only for the message of a trial that fits no node
    from ternsearch.run.tuner import trial_bundles

    need = " + ".join(f"{count} x {{{', '.join(f'{k}: {v:g}' for k, v in b.items())}}}"
                      for b, count in trial_bundles(spec, plan.mode, plan.use_gpu))
    hint = ("in function mode (workers_per_trial: 1) the driver is the trainer, so driver_resources must be on a "
            "node that also has its CPUs/GPUs: drop driver_resources or use trainer: torchtrainer"
            if plan.mode == "function" and spec.resources.driver_resources else
            "lower cpus_per_worker / gpus_per_worker, or check driver_resources names a resource a node has")
    raise PreflightError(str(spec.located.error(
        ("resources",), f"a trial needs {need}, each on one node, but no node of {where} holds that ({hint})")))


def check_tracking_store(uri: str, where: Callable[[str], str]) -> None:
    """A SQLite store's folder must be one that can be created and written: one line (``where(detail)``) before
    anything starts or trains, not a traceback when the first run is recorded."""
    db = sqlite_path(uri)
    if db is None:
        return
    why = unwritable(db.expanduser().resolve().parent)
    if why:
        raise PreflightError(where(f"the database's folder cannot be made or written: {why} (use a sqlite:/// URI "
                                   "in a folder you can write, or leave tracking.uri out for one in the results)"))
