"""DDP ranks agree on a failure (``ranks_agree``): when one rank's run raises, every rank raises that error.

Without this, a rank that ran out of memory reports its failure (Ray Train's report is a barrier across ranks)
while the others wait in an all-reduce for it, until the process group's timeout (30 minutes). Instead the first
rank whose run raises posts its error on the process group's store, then leaves the group: with gloo the peers'
pending or next collective fails at once ("Connection closed by peer"), they find the posted error and raise it
as their own, so every rank reports the same failure and the trial ends with the failing rank's reason.

NCCL peers do not notice a rank leaving (their kernels wait on the GPU until the watchdog's timeout), so under
NCCL each rank also runs a thread that polls the store once a second and aborts its own communicator when
another rank has posted; the pending collective then fails the same way. That path has not run on a GPU.

Cost on the happy path: none for gloo (no extra collective); for NCCL one store lookup a second per rank, off the
training thread.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch.distributed as dist

from trainables.failures import (DivergedError, OutOfMemoryError, PermanentTrialError, TrialFailure, as_permanent,
                                 exception_line)

__all__ = ["KEY", "posted_failure", "ranks_agree", "watch_store"]

KEY = "ternsearch/failure"
POLL_S = 1.0


def _encode(rank: int, exc: BaseException) -> str:
    permanent = as_permanent(exc)
    record = {"rank": rank, "kind": type(exc).__name__, "line": exception_line(exc),
              "reason": getattr(exc, "reason", None) or (permanent.reason if permanent else ""),
              "permanent_kind": permanent.kind if permanent else "",
              "epoch": getattr(exc, "epoch", None), "loss": getattr(exc, "loss", None)}
    return json.dumps(record)


def _decode(posted: dict) -> BaseException:
    """The posted error as this rank raises it: the same class for the failures a sweep tells apart, otherwise a
    ``RuntimeError`` naming the rank, which is retried like the crash it is."""
    kind, reason, epoch = posted["kind"], posted["reason"], posted["epoch"]
    if kind == "OutOfMemoryError":
        return OutOfMemoryError(reason, epoch)
    if kind == "DivergedError":
        return DivergedError(epoch, posted["loss"])
    if kind == "TrialFailure":
        return TrialFailure(reason, epoch)
    if posted["permanent_kind"]:
        return PermanentTrialError(reason, posted["permanent_kind"])
    return RuntimeError(f"rank {posted['rank']} failed: {posted['line']}")


def posted_failure(store) -> Optional[dict]:
    """What a rank posted on ``store`` (``rank``, ``kind``, ``reason``...), or None."""
    if not store.check([KEY]):
        return None
    return json.loads(store.get(KEY).decode())


def _leave(backend: str) -> None:
    """Leave the process group, so that the other ranks' collectives fail instead of waiting for this rank."""
    if not dist.is_initialized():
        return
    if backend == "nccl":
        dist.distributed_c10d._abort_process_group()  # destroy would wait for the collectives peers never finish
        return
    # Gloo closes the group's connections (failing the peers' pending collectives at once) only when the group
    # is freed: measured, neither this nor abort() does it while a DDP model holds the group. The peers' wait then
    # ends when this process does (Ray Train tears the worker group down) or at the group's timeout.
    dist.destroy_process_group()


def watch_store(store, rank: int, on_posted: Callable[[], None], stop: threading.Event,
                poll_s: float = POLL_S) -> threading.Thread:
    """A daemon thread that calls ``on_posted`` once another rank than ``rank`` has posted a failure."""

    def poll() -> None:
        while not stop.wait(poll_s):
            try:
                posted = posted_failure(store)
            except Exception:  # noqa: BLE001 - the store went away with the group: nothing left to watch
                return
            if posted is not None and posted["rank"] != rank:
                on_posted()
                return

    thread = threading.Thread(target=poll, name="ternsearch-ranks-agree", daemon=True)
    thread.start()
    return thread


@contextmanager
def ranks_agree(rank: int, world: int) -> Iterator[None]:
    """Around a run under torch.distributed: an exception on any rank is raised on every rank (see the module's
    docstring). The first error posted wins; a rank whose own error came later (a collective that failed because
    the first rank left) raises the posted one, from its own. Outside DDP (``world`` 1) it does nothing."""
    if world == 1 or not dist.is_initialized():
        yield
        return
    store, backend = dist.distributed_c10d._get_default_store(), dist.get_backend()
    stop = threading.Event()
    if backend == "nccl":
        watch_store(store, rank, dist.distributed_c10d._abort_process_group, stop)
    try:
        yield
    except Exception as exc:
        store.compare_set(KEY, "", _encode(rank, exc))  # only the first rank's error is kept
        posted = posted_failure(store)
        _leave(backend)
        if posted is None or posted["rank"] == rank:
            raise
        raise _decode(posted) from exc
    finally:
        stop.set()
