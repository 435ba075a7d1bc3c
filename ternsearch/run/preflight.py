"""Checks that need the machine but start nothing: data, storage, GPUs, and whether a trial fits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

from ternsearch.errors import PreflightError, ResultsError
from ternsearch.results.outputs import unwritable
from ternsearch.spec.sweepfile import SweepSpec

__all__ = ["check_environment", "local_resources", "check_fits", "resolve_storage", "spec_digest"]


def spec_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_same_spec(results_dir: Path, meta: dict, spec_file, hint: str) -> None:
    """Refuse a results directory (its sweep.json: ``meta``) that another spec file, or another version of this
    one, made: one line ending in ``hint`` (what to do instead)."""
    if meta.get("spec_sha256") != spec_digest(spec_file):
        raise ResultsError(f"{results_dir}: made by another spec ({meta.get('spec_file')}), not by {spec_file} as it "
                           f"is now; {hint}")


def resolve_storage(spec: SweepSpec, override: Optional[str]) -> str:
    """Absolute local path, or a URI (s3://, gs://...) left as it is."""
    raw = override or spec.storage.path
    if "://" in raw:
        return raw
    return str(Path(raw).expanduser().resolve())


def local_resources() -> dict[str, float]:
    """This machine's CPUs and GPUs as Ray would see them, without starting Ray."""
    import torch

    res = {"CPU": float(os.cpu_count() or 1)}
    if torch.cuda.is_available():
        res["GPU"] = float(torch.cuda.device_count())
    return res


def check_environment(spec: SweepSpec, storage: str, address: Optional[str]) -> None:
    """Data present, storage writable, GPUs present when asked for, multi-node constraints.

    Raises:
        PreflightError: one line naming the file, the key and what to do.
    """
    from trainables.datafiles import DataError, check_data

    loc = spec.located
    base = spec.base_config()  # the absolute paths the trials will read
    try:
        check_data(base.data)
    except DataError as exc:
        raise PreflightError(str(loc.error(("data", "root") if spec.data.root else ("data",), str(exc)))) from None
    if base.model.init_from or base.train.distill_from:  # trainables.recipes imports torch: only when needed
        from trainables.recipes import RecipeError, check_sources

        try:
            check_sources(base)
        except RecipeError as exc:
            raise PreflightError(str(loc.error(tuple(exc.key.split(".")), exc.detail))) from None
    why = unwritable(Path(storage)) if "://" not in storage else None
    if why:
        raise PreflightError(str(loc.error(("storage", "path"), f"{storage} is not writable: {why} (use a "
                                           "directory you can write, or --storage DIR)")))
    if spec.resources.use_gpu is True and address is None and local_resources().get("GPU", 0) == 0:
        raise PreflightError(str(loc.error(("resources", "use_gpu"), "true, but this machine has no GPU and no "
                                           "--address was given (use use_gpu: auto or false, or --address of a "
                                           "cluster with GPUs)")))


def check_fits(spec: SweepSpec, trial_resources: dict[str, float], cluster: dict[str, float],
               where: str, multi_node: bool = False, storage: Optional[str] = None,
               tracking_uri: Optional[str] = None) -> None:
    """A trial must fit the cluster; on several nodes storage must be shared and tracking a server.

    ``storage`` and ``tracking_uri`` are the effective values (command-line overrides applied).
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
        uri = tracking_uri or spec.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri.startswith(("http://", "https://", "databricks")):
            raise PreflightError(str(loc.error(("tracking", "uri"), f"{uri or 'the default SQLite file'} is local, "
                                               "but the cluster has several nodes (run `mlflow server` on the head "
                                               "and use http://HEAD:5000)")))
