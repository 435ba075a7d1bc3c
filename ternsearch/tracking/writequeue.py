"""The write queue of ``MLflowTracker`` (``ternsearch.tracking.tracker``): how a sweep's writes survive a
tracking outage.

Every write is an op, a plain (picklable) dict: ``kind``, ``key`` (the trial id, or None for the sweep), ``ts``
(when it was made, in ms: metric timestamps, a late run's start and end times) and its data. Kinds:

- ``open``: find the trial's run by its tag (a resumed sweep, or a creation whose answer was lost) or create it;
  log its params;
- ``reopen``: the run is RUNNING again (tags: status, restarts);
- ``log``: one epoch's metrics (``epoch``, ``metrics``) and/or tags;
- ``end``: the status tag, then the run terminated with ``status``;
- ``close``: children left RUNNING are KILLED, then the parent terminated with ``status``.

``_flush`` writes the queue in order and stops at the first failure the store may get over (down, overloaded,
timing out: ``is_transient``), leaving it queued; every later callback tries again, bounded (MLflow's HTTP
retries and timeout cut to a few seconds by ``brief_http``; while the store stays down, attempts are spaced by
at least ``_MIN_RETRY_S`` and by ``_RETRY_COST_FACTOR`` times what the last failed one cost). A write the store
rejects is dropped with a warning. Retrying an op is harmless: metrics keep their timestamps (the store ignores
exact duplicates), tags and terminations are set again, and a run is looked for before it is created.

``_report_unwritten`` (run by ``close()``) reports what is still queued or was rejected: ``unwritten`` (one
entry per run: trial, run or None, epochs and count of metric values, params, end status, reasons), one warning
line per run, and the same entries appended to ``<results_dir>/tracking_unwritten.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

from ternsearch.results.atomic import write_atomic
from ternsearch.tracking.store import (TAG, as_params, as_tags, brief_http, is_transient, log_batch, now_ms,
                                       one_line, outage_reason, redact)

__all__ = ["UNWRITTEN_FILE", "WriteQueue", "describe_unwritten"]

log = logging.getLogger("ternsearch.tracking")

UNWRITTEN_FILE = "tracking_unwritten.json"  # in the results directory: what never reached the store
_MIN_RETRY_S = 1.0  # while the store is down, try again at most this often...
_RETRY_COST_FACTOR = 4  # ...and spend at most ~1/4 of the driver's time on failed attempts
_KILLED_STATUS = "killed: sweep ended while trial was running"


class WriteQueue:
    """Mixin of ``MLflowTracker``: the queue and how each op is written. Relies on the tracker's ``uri``,
    ``results_dir``, ``experiment_id``, ``parent_run_id``, ``failures``, ``_runs``, ``_last_epoch``,
    ``_restarts``, ``_restart_noted``, and its ``_client()``, ``_children()``, ``_find_child()``,
    ``_require_parent()``."""

    def _init_queue(self) -> None:
        self._queue: list[dict] = []  # writes not in the store yet, in order
        self._rejected: list[tuple[dict, str]] = []  # writes the store refused, with why
        self._skip_upto: dict[str, int] = {}  # epochs a run found in the store already holds (a resumed sweep)
        self._down_since: Optional[float] = None  # time.monotonic() of the first failed attempt of an outage
        self._retry_at = 0.0
        self._drain_failed = False  # _drain() ran out of time: the end of the sweep waits no more
        self.unwritten: list[dict] = []  # set by close(): one entry per run with writes that never reached the store

    def _warn(self, what: str) -> None:
        msg = f"MLflow tracking ({redact(self.uri)}): {what}"
        self.failures.append(msg)
        log.warning("%s (the sweep continues; its results directory keeps every result)", msg)

    @staticmethod
    def _op(kind: str, key: Optional[str], **data) -> dict:
        return {"kind": kind, "key": key, "ts": now_ms(), **data}

    def _submit(self, *ops: dict) -> None:
        self._queue.extend(ops)
        self._flush()

    @property
    def pending(self) -> int:
        """How many writes wait in the queue."""
        return len(self._queue)

    def _flush(self, *, force: bool = False) -> bool:
        """Write the queued ops in order; True when none is left. Stops at the first failure the store may get
        over (it is down: the next callback tries again, not before ``_retry_at`` unless ``force``); an op the
        store rejects is dropped, warned about and reported by ``close()``."""
        if not self._queue:
            return True
        if self._down_since is not None and not force and time.monotonic() < self._retry_at:
            return False
        written = 0
        with brief_http():
            while self._queue:
                op = self._queue[0]
                t0 = time.monotonic()
                try:
                    self._apply(op)
                    written += 1
                except Exception as exc:  # noqa: BLE001
                    if is_transient(exc):
                        # Sent, but no answer: the store may hold it. So may the first write to fail while the
                        # store was up, whatever the error: MLflow's client retries a request whose connection
                        # broke, and what it raises is its last attempt's error ("refused", once the server is
                        # gone), though the first attempt may have been written.
                        if _may_have_arrived(exc) or self._down_since is None:
                            op["maybe_written"] = True
                        self._note_down(exc, time.monotonic() - t0)
                        return False
                    self._reject(op, exc)
                self._queue.pop(0)
        if self._down_since is not None:
            log.warning("MLflow tracking (%s): store reachable again after %.0f s; %d buffered writes written",
                        redact(self.uri), time.monotonic() - self._down_since, written)
            self._down_since = None
        return True

    def _note_down(self, exc: BaseException, cost: float) -> None:
        now = time.monotonic()
        self._retry_at = now + max(_MIN_RETRY_S, _RETRY_COST_FACTOR * cost)
        if self._down_since is None:
            self._down_since = now
            self._warn(f"store unreachable ({outage_reason(exc)}); writes are buffered and retried "
                       f"({len(self._queue)} pending)")

    def _reject(self, op: dict, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {one_line(exc, 200)}"
        self._rejected.append((op, reason))
        if not isinstance(exc, _NoRun):  # the run's own failed creation was already reported
            who = f"trial {op['key']}" if op["key"] else "the sweep"
            self._warn(f"the store rejected a write ({op['kind']}) of {who}: {reason}")

    def _apply(self, op: dict) -> None:
        client = self._client()
        kind, tid = op["kind"], op["key"]
        if kind == "open":
            self._apply_open(client, op)
            return
        if kind == "close":
            for run in self._children("RUNNING"):
                log_batch(client, run.info.run_id, tags=as_tags({TAG["status"]: _KILLED_STATUS}))
                client.set_terminated(run.info.run_id, "KILLED", end_time=op["ts"])
            client.set_terminated(self.parent_run_id, op["status"], end_time=op["ts"])
            return
        run_id = self._runs.get(tid)
        if run_id is None:
            raise _NoRun(f"trial {tid} has no run (creating it failed)")
        tags = dict(op.get("tags") or {})
        if op.get("restarts"):  # the count when written (a run found in the store may add its earlier restarts)
            tags[TAG["restarts"]] = str(self._restarts.get(tid, 0))
        metrics = op.get("metrics") or []
        if op.get("epoch") is not None and op["epoch"] <= self._skip_upto.get(tid, 0):
            metrics = []  # the found run already has this epoch: keep its first value
        if kind == "reopen":
            client.update_run(run_id, status="RUNNING")
        log_batch(client, run_id, metrics=metrics, tags=as_tags(tags))
        if kind == "end":
            client.set_terminated(run_id, op["status"], end_time=op["ts"])

    def _apply_open(self, client, op: dict) -> None:
        tid = op["key"]
        run_id = self._runs.get(tid)  # set when an earlier attempt of this op created the run
        if run_id is None:
            run = self._find_child(tid)
            if run is None:
                tags = {**op["tags"], TAG["parent"]: self._require_parent()}
                run_id = client.create_run(self.experiment_id, start_time=op["ts"], tags=tags,
                                           run_name=op["run_name"]).info.run_id
                self._runs[tid] = run_id
            else:
                run_id = self._adopt(tid, run)
        log_batch(client, run_id, params=as_params(op["params"]))

    def _adopt(self, tid: str, run) -> str:
        """Take over a trial's run found in the store: one a killed driver left (a resumed sweep), or one whose
        creation went through although its answer was lost. Its tags are written by a ``reopen`` op next."""
        run_id = run.info.run_id
        epoch = run.data.metrics.get("epoch")
        stored = int(epoch) if epoch is not None and math.isfinite(epoch) else 0
        try:
            earlier = int(run.data.tags.get(TAG["restarts"], "0"))
        except ValueError:
            earlier = 0
        self._skip_upto[tid] = stored
        self._last_epoch[tid] = max(self._last_epoch.get(tid, 0), stored)
        restarted = stored > 0  # it logged epochs before: this start is a restart
        self._restarts[tid] = earlier + self._restarts.get(tid, 0) + int(restarted)
        if restarted:
            self._restart_noted[tid] = True
        self._runs[tid] = run_id
        self._queue.insert(1, self._op("reopen", tid, tags={TAG["status"]: "running"}, restarts=restarted))
        return run_id

    def _report_unwritten(self) -> None:
        lost: dict[Optional[str], dict] = {}
        for op, reason in [*self._rejected, *((op, "store unreachable") for op in self._queue)]:
            key, kind = op["key"], op["kind"]
            entry = lost.setdefault(key, {
                "trial_id": key, "run_id": self._runs.get(key) if key else self.parent_run_id,
                "epochs": [], "epochs_maybe_written": [], "metric_values": 0, "params": False, "tags": False,
                "end_status": None, "reasons": []})
            if kind == "open":
                entry["params"] = bool(op["params"])
            if kind == "log" and op.get("metrics"):
                entry["epochs"].append(op["epoch"])
                entry["metric_values"] += len(op["metrics"])
                if op.get("maybe_written"):
                    entry["epochs_maybe_written"].append(op["epoch"])
            if op.get("tags") or kind == "reopen":
                entry["tags"] = True
            if kind == "end":
                entry["end_status"] = f"{op['status']} ({op['tags'][TAG['status']]})"
            if kind == "close":
                entry["end_status"] = f"{op['status']} (and children left RUNNING not ended)"
            if reason not in entry["reasons"]:
                entry["reasons"].append(reason)
        self.unwritten = list(lost.values())
        for entry in self.unwritten:
            entry["epochs"] = sorted(set(entry["epochs"]))
            entry["epochs_maybe_written"] = sorted(set(entry["epochs_maybe_written"]))
            msg = f"MLflow tracking ({redact(self.uri)}): not written: {describe_unwritten(entry)}"
            self.failures.append(msg)
            log.warning("%s", msg)
        if self.unwritten:
            self._save_unwritten()

    def _save_unwritten(self) -> Path:
        """``self.unwritten`` appended to ``RESULTS/tracking_unwritten.json`` (replaced whole, never torn); an
        earlier one that is not a JSON list (torn, hand-edited) is kept as it is, and this list goes beside it in
        ``tracking_unwritten.json.new``. Returns the file written."""
        path = Path(self.results_dir) / UNWRITTEN_FILE
        try:
            earlier = json.loads(path.read_text()) if path.is_file() else []
            if not isinstance(earlier, list):
                raise ValueError("not a list")
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); this sweep's unwritten writes go to %s.new", path, exc, path.name)
            earlier, path = [], path.with_name(path.name + ".new")
        try:
            write_atomic(path, json.dumps(earlier + self.unwritten, indent=1) + "\n")
        except OSError as exc:
            log.warning("could not write %s: %s", path, exc)
        return path

    def _drain(self, budget_s: float) -> bool:
        """Try to write the whole queue now, and again 1, 2, 4, 8, 8... s later for up to ``budget_s``; True when
        done. Once it has run out of time, later calls try just once (the end of a sweep waits only once)."""
        if self._drain_failed:
            budget_s = 0.0
        deadline, delay = time.monotonic() + budget_s, 1.0
        while not self._flush(force=True):
            if time.monotonic() + delay > deadline:
                self._drain_failed = True
                return False
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
        return True


def _may_have_arrived(exc: BaseException) -> bool:
    """Whether a failed request may have reached the store and been written: it timed out or the connection broke
    after it was sent, as opposed to a connection that was never made (refused, unresolvable host)."""
    reason = outage_reason(exc).lower()
    return not any(word in reason for word in ("refused", "name or service", "no route", "name resolution",
                                               "nodename", "network is unreachable"))


class _NoRun(LookupError):
    """A write for a trial whose run could not be created (reported with that failure)."""


def describe_unwritten(entry: dict) -> str:
    """One line for an entry of ``MLflowTracker.unwritten``: which run, which epochs, what else."""
    if entry["trial_id"] is None:
        who = f"the sweep's run {entry['run_id']}"
    else:
        who = f"trial {entry['trial_id']} (run {entry['run_id'] or 'not created'})"
    what = []
    if entry["epochs"]:
        maybe = entry.get("epochs_maybe_written") or []
        what.append(f"epochs {', '.join(map(str, entry['epochs']))} ({entry['metric_values']} metric values)"
                    + (f", of which {', '.join(map(str, maybe))} may be in the store (it stopped answering "
                       "while writing them)" if maybe else ""))
    if entry["params"]:
        what.append("params")
    if entry["end_status"]:
        what.append(f"end status {entry['end_status']}")
    elif entry["tags"]:
        what.append("tags")
    return f"{who}: {'; '.join(what) or 'nothing'} [{'; '.join(entry['reasons'])}]"

