"""How a training run fails for good: errors a retry from the checkpoint would only repeat, and the result a
run reports when it fails that way. Torch-free, so the sweep driver and reports can read them cheaply."""

from __future__ import annotations

from typing import Optional

__all__ = ["DivergedError", "OutOfMemoryError", "TrialFailure", "failure_reason"]


class TrialFailure(RuntimeError):
    """A failure that would happen again if the run were retried from its checkpoint: a sweep reports it as the
    trial's end (failed, with this reason) instead of retrying."""

    def __init__(self, reason: str, epoch: int):
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch

    def __reduce__(self):  # picklable across Ray processes
        return (TrialFailure, (self.reason, self.epoch))


class DivergedError(TrialFailure):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"diverged at epoch {epoch} (train_loss={loss})", epoch)
        self.loss = loss

    def __reduce__(self):
        return (DivergedError, (self.epoch, self.loss))


class OutOfMemoryError(TrialFailure):
    """The run ran out of memory (host or GPU): this batch size or model does not fit this device."""

    def __reduce__(self):
        return (OutOfMemoryError, (self.reason, self.epoch))


def failure_reason(result: dict) -> Optional[str]:
    """Why a run failed, from the result it reported when it did (``None`` for an ordinary result)."""
    if result.get("diverged"):
        return f"diverged at epoch {result.get('epoch')}"
    return result.get("failed") or None


MEMORY_CAP_ENV = "TERNSEARCH_FAULT_MEMORY_MB"


def cap_memory_from_env() -> Optional[int]:
    """Fault injection for tests, off unless ``TERNSEARCH_FAULT_MEMORY_MB`` is set: caps this process's data
    segment (RLIMIT_DATA, which malloc'd and mmap'd memory count against) at its current size plus that many
    MB, so that a run needing more fails with a real allocation error, as on a machine with little memory.
    Returns the cap in bytes, or None."""
    import os
    import re
    import resource

    extra = os.environ.get(MEMORY_CAP_ENV)
    if not extra:
        return None
    with open("/proc/self/status") as f:
        now_kb = int(re.search(r"VmData:\s+(\d+)", f.read()).group(1))
    cap = (now_kb // 1024 + int(extra)) << 20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    return cap
