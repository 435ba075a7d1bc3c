"""What benchmarks/scale.py measures and checks after (and while) a replayed sweep runs: the driver's memory and CPU,
its Ray workers' memory and imports, and whether every trial ended exactly once in Tune's state, trials.json, the
Optuna study and MLflow (read straight from the SQLite files: no MLflow or Optuna import, no server round trip).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import psutil

from ternsearch.results.rebuild import tune_trials

__all__ = ["Sampler", "records", "tune_counts", "study_counts", "mlflow_counts", "exactly_once"]


class Sampler(threading.Thread):
    """Samples a driver process every ``every`` seconds: its peak RSS (VmHWM), CPU seconds, and the summed RSS of
    its Ray worker processes (descendants named ``ray::...``), and whether any of them has torch loaded."""

    def __init__(self, pid: int, every: float = 1.0):
        super().__init__(daemon=True, name="scale-sampler")
        self.proc, self.every = psutil.Process(pid), every
        self.peak_rss = self.cpu_s = self.workers_peak_rss = 0.0
        self.workers_peak = 0
        self.torch_workers: set[int] = set()
        self.checked: set[int] = set()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._sample()
            except (psutil.Error, OSError):
                return  # the driver has exited (or was killed)
            self._halt.wait(self.every)

    def _sample(self) -> None:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), None)
        if hwm is None:
            raise OSError("the driver has exited (a zombie has no memory)")
        self.peak_rss = max(self.peak_rss, hwm * 1024.0)
        times = self.proc.cpu_times()
        self.cpu_s = times.user + times.system
        workers, rss = 0, 0.0
        for child in self.proc.children(recursive=True):
            try:
                if not child.cmdline()[:1] or not child.cmdline()[0].startswith("ray::"):
                    continue
                workers += 1
                rss += child.memory_info().rss
                if child.pid not in self.checked:  # a Ray worker's libraries, looked at once
                    self.checked.add(child.pid)
                    if "libtorch" in Path(f"/proc/{child.pid}/maps").read_text():
                        self.torch_workers.add(child.pid)
            except (psutil.Error, OSError):
                continue
        if rss > self.workers_peak_rss:
            self.workers_peak_rss, self.workers_peak = rss, workers


def _rows(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line of a killed driver
    return out


def records(results: Path) -> dict:
    """trials.json, history.jsonl and the folder's size: trials by status, rows by trial (each epoch once)."""
    trials = json.loads((results / "trials.json").read_text())
    history = _rows(results / "history.jsonl")
    epochs: dict[str, set] = {}
    for row in history:
        epochs.setdefault(row["trial_id"], set()).add(row["epoch"])
    lost_path = results / "trials_lost.json"
    size = sum(p.stat().st_size for p in results.rglob("*") if p.is_file())
    own = sum((results / f).stat().st_size for f in ("trials.json", "history.jsonl") if (results / f).exists())
    return {"trials": trials, "statuses": Counter(t["status"] for t in trials.values()),
            "history_rows": len(history), "history_epochs": {k: len(v) for k, v in epochs.items()},
            "times": sorted(r["time"] for r in history if "time" in r),
            "lost": json.loads(lost_path.read_text()) if lost_path.exists() else {},
            "size": size, "records_size": own}


def tune_counts(results: Path) -> Counter:
    """Tune's saved state: its trials by Tune status (TERMINATED, ERROR, RUNNING...)."""
    return Counter(t["status"] for t in tune_trials(results))


def study_counts(results: Path) -> Counter:
    """The Optuna study in RESULTS/optuna.db: its trials by state (COMPLETE, PRUNED, FAIL, RUNNING)."""
    con = sqlite3.connect(f"file:{results / 'optuna.db'}?mode=ro", uri=True)
    try:
        return Counter(dict(con.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall()))
    finally:
        con.close()


def mlflow_counts(db: Path, experiment: str, metric: str) -> dict:
    """Child runs of ``experiment`` in an MLflow SQLite store: by role and status, and ``metric``'s history
    length per trial id (runs with role ``trial`` only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT r.run_uuid, r.status, tid.value, role.value FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id "
            "JOIN tags tid ON tid.run_uuid = r.run_uuid AND tid.key = 'ternsearch.trial_id' "
            "JOIN tags role ON role.run_uuid = r.run_uuid AND role.key = 'ternsearch.role' "
            "WHERE e.name = ?", (experiment,)).fetchall()
        counts = dict(con.execute("SELECT run_uuid, count(*) FROM metrics WHERE key = ? GROUP BY run_uuid",
                                  (metric,)).fetchall())
        parent = con.execute("SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid AND "
                             "t.key = 'ternsearch.role' AND t.value = 'sweep' JOIN experiments e ON "
                             "e.experiment_id = r.experiment_id WHERE e.name = ?", (experiment,)).fetchall()
        values = con.execute("SELECT count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid JOIN "
                             "experiments e ON e.experiment_id = r.experiment_id WHERE e.name = ?",
                             (experiment,)).fetchone()[0]
    finally:
        con.close()
    trial_runs = [r for r in rows if r[3] == "trial"]
    return {"runs": Counter((r[3], r[1]) for r in rows), "trial_runs": Counter(r[2] for r in trial_runs),
            "history": {r[2]: counts.get(r[0], 0) for r in trial_runs}, "parent": [p[0] for p in parent],
            "metric_values": values}


def exactly_once(n: int, rec: dict, tune: Counter, study: Counter, ml: Optional[dict]) -> list[str]:
    """What is wrong with the counts (empty when every trial ended exactly once everywhere, none RUNNING, no
    metric lost or duplicated in MLflow)."""
    bad = []
    if len(rec["trials"]) != n or rec["statuses"].get("running"):
        bad.append(f"trials.json: {len(rec['trials'])} trials, statuses {dict(rec['statuses'])} (expected {n}, "
                   "none running)")
    if sum(tune.values()) != n or set(tune) - {"TERMINATED", "ERROR"}:
        bad.append(f"Tune's state: {dict(tune)} (expected {n} TERMINATED/ERROR)")
    ended = study.get("COMPLETE", 0) + study.get("PRUNED", 0)
    if ended != n or study.get("RUNNING") or study.get("WAITING"):
        bad.append(f"Optuna study: {dict(study)} (expected {n} COMPLETE/PRUNED, lost ones FAIL, none RUNNING)")
    if ml is not None:
        dup = [t for t, c in ml["trial_runs"].items() if c > 1]
        missing = set(rec["trials"]) - set(ml["trial_runs"])
        running = sum(c for (role, status), c in ml["runs"].items() if status == "RUNNING")
        if dup or missing or running or len(ml["trial_runs"]) != n:
            bad.append(f"MLflow: {len(ml['trial_runs'])} trial runs, {len(dup)} duplicated, {len(missing)} missing, "
                       f"{running} RUNNING (expected {n}, none RUNNING)")
        lost, extra = metric_gaps(rec, ml)
        if lost or extra:
            bad.append(f"MLflow: {lost} metric values missing, {extra} more than history.jsonl")
        if ml["parent"] != ["FINISHED"]:
            bad.append(f"MLflow: the sweep's run ended {ml['parent']} (expected FINISHED)")
    return bad


def metric_gaps(rec: dict, ml: dict) -> tuple[int, int]:
    """(values history.jsonl has and MLflow lacks, values MLflow has beyond history.jsonl), over every trial."""
    lost = extra = 0
    for tid, epochs in rec["history_epochs"].items():
        if tid not in rec["trials"]:
            continue  # a lost trial's rows (trials_lost.json)
        got = ml["history"].get(tid, 0)
        lost, extra = lost + max(0, epochs - got), extra + max(0, got - epochs)
    return lost, extra


def wait_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
