"""How a trial ended, said once for the sweep's records (``ternsearch.results.recorder``), its progress lines and
its MLflow runs (``ternsearch.tracking.tracker``): its status and reason, the one line of a failed trial's error,
and which keys of a result are Tune's bookkeeping. No Ray here: the trial objects are only read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from trainables.failures import WRAPPERS, exception_line, failure_reason, root_cause, without_permanent_prefix

__all__ = ["LOST_REASON", "RECORDED_TUNE_KEYS", "TUNE_KEYS", "error_text", "run_complete", "trial_status"]

# Keys Tune adds to every result (bookkeeping): never metrics. ``done`` is Tune's too: it is forced to True when a
# scheduler stops a trial, so it cannot tell "ran all epochs" from "stopped by ASHA".
TUNE_KEYS = frozenset({
    "training_iteration", "time_this_iter_s", "time_total_s", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "episodes_total", "timestamp", "pid", "hostname", "node_ip",
    "config", "trial_id", "date", "done", "experiment_tag", "experiment_id", "checkpoint_dir_name",
    "should_checkpoint", "__duplicate__", "warmup_time",
})
# Of those, what the sweep's records keep with each result: where it was produced (the trial's process and host).
RECORDED_TUNE_KEYS = frozenset({"pid", "hostname"})

LOST_REASON = ("lost: the sweep driver was killed before Tune saved this trial in its state; the resumed sweep "
               "does not continue it (the searcher may propose its configuration again)")

_EXC_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit|Failure)): ?(.*)$")


# ------------------------------------------------------------------------------------------------ status
def run_complete(last: dict, planned_epochs: Optional[int] = None) -> bool:
    """Whether a trial that reported ``last`` (with an ``epoch``) ran its whole run: the loop's own
    ``run_complete`` flag when it reports one, else early stopping, else its epochs against ``planned_epochs``,
    else Tune's ``done`` (which a scheduler's stop sets too)."""
    if last.get("run_complete") is not None:
        return bool(last["run_complete"])
    if last.get("early_stopped"):
        return True
    if planned_epochs is not None:
        return int(last["epoch"]) >= planned_epochs
    return bool(last.get("done"))


def trial_status(last: dict, errored: bool, error: str = "",
                 planned_epochs: Optional[int] = None) -> tuple[str, str]:
    """(status, reason) of a finished trial from its last result: ``failed`` (why: the failure it reported, else
    ``error``), ``completed`` ("early stopped (patience)" or ""), or ``stopped`` ("stopped by ASHA at epoch N",
    "stopped before its first epoch")."""
    failure = failure_reason(last)
    if failure:  # ASHA may stop a trial on its failure report (divergence, out of memory) before it raises
        return "failed", failure
    if errored:
        return "failed", error or "unknown error"
    epoch = last.get("epoch")
    if epoch is None:
        return ("completed", "") if last.get("done") else ("stopped", "stopped before its first epoch")
    if run_complete(last, planned_epochs):
        return "completed", "early stopped (patience)" if last.get("early_stopped") else ""
    return "stopped", f"stopped by ASHA at epoch {int(epoch)}"


# ------------------------------------------------------------------------------------------------ errors
def error_text(trial, limit: Optional[int] = 300) -> str:
    """One line saying why a trial failed, e.g. ``DivergedError: diverged at epoch 2 (train_loss=nan)``, at most
    ``limit`` characters.

    Ray 2.60 keeps the error on the trial as files in the trial directory: ``trial.error_file`` (text, one
    ``Failure # N`` section per failure; the last is why the trial ended) and ``trial.pickled_error_file`` (the
    ``RayTaskError``; its ``cause`` is the trainable's exception). Not redacted: the tracker masks credentials
    (before it cuts the line, so that no part of a secret is left) when a reason goes to MLflow.
    """
    text = ""
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            text = Path(path).read_text(errors="replace").split("Failure # ")[-1]
    except Exception:  # noqa: BLE001 - no readable error file (an old trial, a test's stand-in)
        text = ""
    reason = _exception_line(text, own_only=True)
    if reason:
        return reason[:limit]
    # Only Ray's wrappers in the text (Train V2 truncates a long worker traceback, DDP's included, to its head
    # and tail, dropping the exception line): the pickled error keeps the workers' exceptions whole.
    try:
        exc = root_cause(trial.get_pickled_error())
    except Exception:  # noqa: BLE001
        exc = None
    if exc is not None:
        return without_permanent_prefix(exception_line(exc))
    reason = _exception_line(text)
    if reason:
        return reason[:limit]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else "unknown error"


def _exception_line(text: str, own_only: bool = False) -> str:
    """The last ``SomeError: message`` line of a traceback text, preferring the trainable's own exception
    over Ray's wrappers of it (with ``own_only``, only the trainable's own)."""
    found = [m for m in map(_EXC_LINE.match, text.splitlines()) if m]
    own = [m for m in found if m.group(1) not in WRAPPERS]
    if not own and (own_only or not found):
        return ""
    m = (own or found)[-1]
    return without_permanent_prefix(f"{m.group(1)}: {m.group(2).strip()}").rstrip(": ")
