"""How a training run fails for good: errors a retry from the checkpoint would only repeat, and the result a
run reports when it fails that way. Torch-free, so the sweep driver and reports can read them cheaply."""

from __future__ import annotations

import os
import re
from typing import Optional

try:
    import resource
except ImportError:  # not POSIX: no memory cap (cap_memory_from_env, a test's fault injection, is Linux-only)
    resource = None

from trainables.errors import TrainablesError

__all__ = ["DivergedError", "OutOfMemoryError", "PermanentTrialError", "TrialFailure", "as_permanent",
           "exception_line", "failure_reason", "find_permanent", "root_cause", "without_permanent_prefix"]


class TrialFailure(TrainablesError, RuntimeError):
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


class PermanentTrialError(TrainablesError, RuntimeError):
    """A trial failed in a way a retry cannot fix (data missing or corrupt, a config it cannot build, an import
    error, a weight source that does not exist, or a ``TrialFailure``): the sweep ends the trial at once instead
    of retrying it (``ternsearch.run.failfast``). Retries are for crashes and lost workers, which never raise here.
    ``reason`` is one line: ``DataError: CIFAR-10 data folder X does not exist ...``."""

    def __init__(self, reason: str, kind: str = ""):
        super().__init__(reason)
        self.reason, self.kind = reason, kind  # kind: the original exception's class name

    @property
    def setup(self) -> bool:
        """The trial could not run at all as configured (not a run that diverged or ran out of memory)."""
        return self.kind not in ("TrialFailure", "DivergedError", "OutOfMemoryError")

    def __reduce__(self):
        return (PermanentTrialError, (self.reason, self.kind))


# Exception types a retry from the last checkpoint would raise again. Not RuntimeError or OSError in general:
# a lost peer (gloo/NCCL), a CUDA fault or a flaky filesystem raise those, and a retry may well get past them.
_PERMANENT_NAMES = {"DataError", "RecipeError", "CheckpointError", "ValidationError", "SpecError", "ImportError",
                    "ModuleNotFoundError", "ValueError", "TypeError", "KeyError", "AttributeError", "NameError",
                    "IndexError", "NotImplementedError", "FileNotFoundError", "NotADirectoryError",
                    "IsADirectoryError", "PermissionError", "ZeroDivisionError", "AssertionError"}


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, (PermanentTrialError, TrialFailure)):
        return True
    return any(cls.__name__ in _PERMANENT_NAMES for cls in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def as_permanent(exc: BaseException) -> Optional[PermanentTrialError]:
    """``exc`` as a ``PermanentTrialError`` when a retry would repeat it, else None."""
    if isinstance(exc, PermanentTrialError):
        return exc
    if not _is_permanent(exc):
        return None
    return PermanentTrialError(_one_line(exc), type(exc).__name__)


def _wrapped(exc: BaseException) -> list:
    """What a Ray wrapper of an error holds, the workers' first (Train V2's ``worker_failures``, by rank), then a
    task error's ``cause``, a ``ControllerError``'s ``controller_failure``, ``_base_exc`` and ``__cause__``.
    The one list of those attributes for ``find_permanent`` and ``root_cause``."""
    failures = getattr(exc, "worker_failures", None)
    held = [failures[k] for k in sorted(failures)] if isinstance(failures, dict) else []
    held += [getattr(exc, "cause", None), getattr(exc, "controller_failure", None), getattr(exc, "_base_exc", None),
             exc.__cause__]
    return [e for e in held if isinstance(e, BaseException)]


def find_permanent(exc: BaseException) -> Optional[PermanentTrialError]:
    """The ``PermanentTrialError`` anywhere inside Ray's wrappers of ``exc`` (any rank's), or None."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PermanentTrialError):
            return e
        todo += _wrapped(e)
    return None


# Exceptions that only wrap the trainable's own error: Tune's task error (its class is "RayTaskError(X)", a
# subclass of both), Train V2's worker-group and controller errors, the traceback holder inside them.
WRAPPERS = ("RayTaskError", "TuneError", "RayTrainError", "TrainingFailedError", "WorkerGroupError",
            "ControllerError", "UserExceptionWithTraceback")


def _is_wrapper(exc: BaseException) -> bool:
    return any(cls.__name__ in WRAPPERS for cls in type(exc).__mro__)


def root_cause(exc: Optional[BaseException]) -> Optional[BaseException]:
    """The exception the trainable raised, inside Ray's wrappers of it (the lowest rank's, when several ranks
    failed), or None when there is only a wrapper. Train V2's ``WorkerGroupError`` message keeps a truncated
    traceback per group of ranks, which for a long message (DDP's) drops the exception line itself; its
    ``worker_failures`` keep the exceptions whole."""
    seen: set[int] = set()
    while isinstance(exc, BaseException) and id(exc) not in seen:
        seen.add(id(exc))
        if not _is_wrapper(exc):
            return exc
        held = _wrapped(exc)
        exc = held[0] if held else None
    return None


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message``, at most 300 characters (a permanent error's own reason)."""
    if isinstance(exc, PermanentTrialError):
        return exc.reason[:300]
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


_PERMANENT_PREFIX = re.compile(r"^\s*(?:[\w.]+\.)?PermanentTrialError: ")


def without_permanent_prefix(line: str) -> str:
    """An error file's exception line without the ``...PermanentTrialError: `` wrapper around the real one."""
    return _PERMANENT_PREFIX.sub("", line)


def failure_reason(result: dict) -> Optional[str]:
    """Why a run failed, from the result it reported when it did (``None`` for an ordinary result)."""
    if result.get("diverged"):
        return f"diverged at epoch {result.get('epoch')}"
    return result.get("failed") or None


MEMORY_CAP_ENV = "TERNSEARCH_FAULT_MEMORY_MB"
MEMORY_CAP_RANK_ENV = "TERNSEARCH_FAULT_MEMORY_RANK"


def cap_memory_from_env(rank: int = 0) -> Optional[int]:
    """Fault injection for tests, off unless ``TERNSEARCH_FAULT_MEMORY_MB`` is set: caps this process's data
    segment (RLIMIT_DATA, which malloc'd and mmap'd memory count against) at its current size plus that many
    MB, so that a run needing more fails with a real allocation error, as on a machine with little memory.
    With ``TERNSEARCH_FAULT_MEMORY_RANK`` set, only the DDP rank it names (``rank``) is capped.
    Returns the cap in bytes, or None."""
    extra = os.environ.get(MEMORY_CAP_ENV)
    only = os.environ.get(MEMORY_CAP_RANK_ENV)
    if not extra or (only and int(only) != rank):
        return None
    with open("/proc/self/status") as f:
        now_kb = int(re.search(r"VmData:\s+(\d+)", f.read()).group(1))
    cap = (now_kb // 1024 + int(extra)) << 20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    return cap
