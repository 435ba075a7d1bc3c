"""One attempt at a trial's run: from the newest usable checkpoint of those it is handed, with an out-of-memory
failure on a shared GPU retried once, and the result a failed run records (the worst metric value and a marker
checkpoint, so that a retried trial fails at once).

torch and the modules that import it are imported inside the functions, as in ``trainables.entry``: the sweep
driver imports that module, and so this one, without them.
"""

from __future__ import annotations

import gc
import tempfile
import warnings
from pathlib import Path
from typing import Callable, NoReturn, Optional

from trainables.failures import DivergedError, OutOfMemoryError, TrialFailure
from trainables.setup import TrialSetup

__all__ = ["newest_first", "oom_retries", "run_attempt", "siblings", "usable", "worst_value"]


def worst_value(metric: str, mode: str) -> float:
    """What a diverged trial reports for the metric, so the searcher counts it as a bad result."""
    if mode == "max":
        return 0.0
    return 1.0 if metric.endswith(("_acc", "_frac")) else 1e6


def usable(paths: list[str]) -> tuple[Optional[str], Optional[dict]]:
    """The newest usable checkpoint of ``paths`` (newest first), skipping corrupted ones with a warning.

    Returns ``(path, manifest)``; a failure marker is returned as it is (its manifest says so).
    """
    from trainables.checkpoint import CheckpointError, load_checkpoint, read_manifest  # torch: in the trial only

    for path in paths:
        try:
            manifest = read_manifest(path)
            if not (manifest.get("diverged") or manifest.get("failed")):
                load_checkpoint(path)
            return path, manifest
        except CheckpointError as exc:
            warnings.warn(f"checkpoint {path} is unusable ({exc}); falling back to the previous one")
    return None, None


def oom_retries(setup: TrialSetup) -> int:
    """How often a trial retries an out-of-memory failure before it is the trial's result: once when it shares its
    GPU with other trials (a fraction of one), where a neighbour's peak may have been the cause and the next try
    can fit; never otherwise, where it would fail the same way. Function-mode trials only: a DDP rank's failure
    ends its whole worker group (see ``run_attempt``)."""
    return 1 if setup.use_gpu and 0.0 < setup.gpus_per_worker < 1.0 and setup.mode == "function" else 0


def run_attempt(cfg, setup: TrialSetup, send, candidates: list[str], world_rank: int, device,
                events_dir: Optional[str] = None, refind: Optional[Callable[[], list[str]]] = None) -> None:
    """Resume from the newest usable checkpoint and run the loop on ``device``; a ``TrialFailure`` is reported,
    then raised.

    ``send(metrics, ckpt_dir)`` hands a result to Ray. A run that fails in a way a retry would repeat (it
    diverged, it ran out of memory) reports the worst metric value (so the searcher learns from it) with a
    marker checkpoint; a retried trial finds the marker and fails at once instead of failing again the slow way.
    An out-of-memory failure on a shared GPU is first retried once in this process (``oom_retries``), from the
    newest checkpoint ``refind()`` lists (the ones this run saved), else from where it started.
    Rank 0 writes TensorBoard event files into ``events_dir`` (none without it).
    """
    from trainables.loop import run  # torch: in the trial only

    path, manifest = usable(candidates)
    if manifest and manifest.get("diverged"):
        raise DivergedError(manifest["epoch"], float("nan"))
    if manifest and manifest.get("failed"):
        raise (OutOfMemoryError if manifest.get("kind") == "OutOfMemoryError" else TrialFailure)(
            manifest["failed"], manifest["epoch"])
    if manifest:
        # Report the resumed epoch again from the checkpoint's own record: a driver killed after the trial
        # saved this checkpoint may never have recorded the epoch. Receivers keep one value per epoch.
        send(dict(manifest.get("metrics", {}), replayed=True), None)
    retries = oom_retries(setup)
    while True:
        try:
            run(cfg, send, resume_from=path, device=device, events_dir=events_dir)
            return
        except OutOfMemoryError as exc:
            if retries == 0:
                _fail(exc, setup, send, world_rank)
            retries -= 1
            reason = exc.reason
        except TrialFailure as exc:
            _fail(exc, setup, send, world_rank)
        _free_memory(device)  # the failed run's tensors, which its exception's traceback held until here
        if refind is not None:
            path = usable(refind())[0] or path
        warnings.warn(f"{reason}; the GPU is shared with other trials, retrying once from "
                      f"{'the last checkpoint' if path else 'the start'}")


def _free_memory(device) -> None:
    import torch  # in the trial only (see the module's docstring)

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fail(exc: TrialFailure, setup: TrialSetup, send, world_rank: int) -> NoReturn:
    """Record ``exc`` as the trial's result (see ``run_attempt``) and raise it."""
    from trainables.checkpoint import save_checkpoint  # torch: in the trial only

    if setup.workers > 1 and isinstance(exc, OutOfMemoryError):
        # One rank ran out: the others wait in a collective for it, so its report (a barrier across the
        # ranks) would wait for them until the group's timeout. Raised at once, it ends the trial (Ray Train
        # stops the worker group) with this rank's reason; the searcher is told only that the trial failed.
        raise exc
    diverged = isinstance(exc, DivergedError)
    metrics = {"epoch": exc.epoch, "run_complete": True,
               **{name: worst_value(name, mode) for name, mode in setup.objectives}}
    metrics.update({"diverged": True, "train_loss": exc.loss} if diverged else {"failed": exc.reason})
    marker_manifest = {"epoch": exc.epoch, "reason": str(exc), "kind": type(exc).__name__}
    marker_manifest.update({"diverged": True} if diverged else {"failed": exc.reason})
    with tempfile.TemporaryDirectory(prefix="ternsearch-failed-") as marker:
        if world_rank == 0:
            save_checkpoint(marker, {}, marker_manifest)
        send(metrics, marker if world_rank == 0 else None)
    raise exc


def newest_first(paths: list[str]) -> list[str]:
    """Checkpoint directories by the epoch their manifest records, newest first (unreadable ones last)."""
    from trainables.checkpoint import CheckpointError, read_manifest  # torch: in the trial only

    def epoch(path: str) -> int:
        try:
            return int(read_manifest(path).get("epoch", -1))
        except CheckpointError:
            return -1

    return sorted(paths, key=epoch, reverse=True)


def siblings(path: str) -> list[str]:
    """``path`` and the checkpoint directories beside it, newest first by the epoch each holds (local storage
    only). Tune's saved state may be a few seconds older than the trial directory (a killed driver): a newer
    checkpoint beside the one Tune hands over is then the one to resume from."""
    here = Path(path)
    if not here.is_dir():
        return [path]
    return newest_first([path] + [str(p) for p in here.parent.glob("checkpoint_*") if p.is_dir() and p != here])
