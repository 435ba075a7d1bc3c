"""A cluster-sized sweep on one machine: N replayed trials (``sweep --replay``: no training) x E epochs, C at once,
ASHA + TPE, through the real driver, records, Optuna study, MLflow tracker and report. Each store in turn: the
sweep's default SQLite MLflow store, then a real ``mlflow server`` on 127.0.0.1 (SQLite backend, one worker).

Prints per store: wall time and each phase's share (start-up until the first trial starts; trials until the last
ends; the end: MLflow closed, best config, the sweep's own report, Ray stopped), results per second the driver
handled (history.jsonl rows over the trials phase) and per second of its CPU, its peak RSS (VmHWM, sampled) and
its Ray workers' summed RSS, MLflow metric values per second and whether any were lost or came after the sweep
(each trial's metric history in the store against history.jsonl, read once the driver has exited), the records'
size, ``ternsearch report``'s time and HTML size, and the targets met or missed. ``--kill-at F`` SIGKILLs the
driver once F of the trials have ended, resumes it (``--resume``) and checks every trial ended exactly once in
Tune, trials.json, the Optuna study and MLflow.

The table has as many epochs as it was recorded with (benchmarks/data/curves-cpu.csv: 8). ``--extend hold``
(default) lets a trial go on past the table's last epoch holding that epoch's values; ``--extend cap`` caps E
at the table's epochs instead. Each trial asks for 2/C of a CPU (``resources.cpus_per_worker``), so C fit on 2.

    python benchmarks/scale.py                                  # 1,000 x 20 x 64, both stores
    python benchmarks/scale.py --trials 200 --concurrent 16 --stores sqlite --kill-at 0.5
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_checks import (Sampler, exactly_once, metric_gaps, mlflow_counts, records, study_counts,  # noqa: E402
                          tune_counts, wait_file)

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "benchmarks" / "data" / "curves-cpu.csv"
TABLE_SPEC = ROOT / "benchmarks" / "data" / "curves-cpu.yaml"  # the sweep that recorded the table: its space
TARGETS = {"results_per_s": 200, "driver_rss_gib": 2.0, "report_s": 60, "report_mb": 20}


def extended_table(src: Path, epochs: int, how: str, out: Path) -> tuple[Path, int, str]:
    """(the table to replay, the epochs a trial runs, what was done): a table with fewer epochs than asked is
    extended by holding each trial's last recorded epoch (``hold``) or caps the epochs (``cap``)."""
    with src.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["trial_id"], []).append(row)
    recorded = min(len(c) for c in curves.values())
    if recorded >= epochs:
        return src, epochs, f"the table's {len(curves)} trials x {recorded} epochs, as recorded"
    if how == "cap":
        return src, recorded, f"E capped at the table's {recorded} epochs ({len(curves)} trials)"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for curve in curves.values():
            w.writerows(curve[:recorded])
            w.writerows(dict(curve[recorded - 1], epoch=str(e)) for e in range(recorded + 1, epochs + 1))
    return out, epochs, (f"the table's {len(curves)} trials x {recorded} epochs; epochs {recorded + 1}-{epochs} "
                         f"hold epoch {recorded}'s values")


class Driver:
    """``ternsearch sweep`` as a subprocess: its stderr time-stamped into a log, sampled while it runs."""

    def __init__(self, args: list[str], cwd: Path, log: Path):
        self.log, self.lines = log, []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_TRACKING_URI"))}
        self.t0 = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.sampler = Sampler(self.proc.pid)
        self.sampler.start()
        self._out: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True)]
        for t in self._readers:
            t.start()
        self.spy = None
        if os.environ.get("SCALE_PYSPY"):  # a profile of the driver: py-spy's collapsed stacks in that file
            self.spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                         str(self.proc.pid), "-f", "raw", "-r", "25", "--nonblocking", "-o",
                                         os.environ["SCALE_PYSPY"]], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    @staticmethod
    def _read(pipe, into: list) -> None:
        for line in pipe:
            into.append((time.time(), line.rstrip("\n")))

    def wait(self, timeout: float) -> tuple[int, float]:
        rc = self.proc.wait(timeout=timeout)
        t_exit = time.time()
        self.sampler.stop()
        if self.spy is not None:
            self.spy.wait(timeout=60)
        for t in self._readers:
            t.join(timeout=30)  # Ray's daemons may hold the pipes a while after the driver exits
        self.log.write_text("".join(f"{t - self.t0:9.2f} {line}\n" for t, line in self.lines))
        return rc, t_exit

    def summary(self) -> dict:
        text = "\n".join(line for _, line in self._out)
        try:
            return json.loads(text[text.index("{"):])
        except ValueError:
            return {}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)


def _ended(results: Path) -> int:
    try:
        return sum(t["status"] != "running" for t in json.loads((results / "trials.json").read_text()).values())
    except (OSError, ValueError):
        return 0


def scale_spec(name: str, a, epochs: int, storage: Path) -> str:
    """The table's sweep (its space, data and model) as TPE + ASHA over ``a.trials`` trials, ``a.concurrent`` at
    once, tracked in MLflow."""
    doc = yaml.safe_load(TABLE_SPEC.read_text())
    doc.pop("tracking")
    doc.pop("failure")
    doc.update(name=name, storage={"path": str(storage)},
               searcher={"algorithm": "tpe", "seed": a.seed, "num_samples": a.trials,
                         "max_concurrent_trials": a.concurrent},
               scheduler={"algorithm": "asha", "grace_period": a.grace, "reduction_factor": a.reduction},
               resources={"workers_per_trial": 1, "cpus_per_worker": a.cpus})
    doc["train"] = dict(doc["train"], epochs=epochs)
    return yaml.safe_dump(doc, sort_keys=False)


def run_store(a, store: str, work: Path, table: Path, epochs: int) -> dict:
    """One sweep (killed and resumed with ``--kill-at``), then ``ternsearch report``: what was measured."""
    name = f"scale-{store}"
    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"{name}.yaml"
    spec.write_text(scale_spec(name, a, epochs, work / "results"))
    results = work / "results" / name
    server = None
    extra = []
    if store == "server":
        server = _start_server(work / "server")
        extra = ["--tracking-uri", server.uri]
    try:
        out = _sweep(a, spec, results, work, extra)
        out["report"] = _report(results, work)
        db = server.base / "mlflow.db" if server else results / "mlflow.db"
        out.update(_checks(a.trials, results, db, name, out))
    finally:
        if server is not None:
            server.stop()
    return out


def _sweep(a, spec: Path, results: Path, work: Path, extra: list[str]) -> dict:
    args = ["sweep", str(spec), "--replay", str(a.table_used), "--quiet", *extra]
    driver = Driver(args, work, work / f"{spec.stem}-driver.log")
    out: dict = {"killed_at": None}
    if a.kill_at:
        while driver.proc.poll() is None and _ended(results) < a.kill_at * a.trials:
            time.sleep(0.2)
        if driver.proc.poll() is None:
            out["killed_at"] = _ended(results)
            driver.kill()
        driver.wait(120)
        first = driver
        driver = Driver([*args, "--resume"], work, work / f"{spec.stem}-resume.log")
        out["first_run_s"] = time.time() - first.t0
        out["first_peak_rss"] = first.sampler.peak_rss
    rc, t_exit = driver.wait(a.timeout)
    s = driver.sampler
    out.update(rc=rc, wall_s=t_exit - (first.t0 if a.kill_at else driver.t0), driver_peak_rss=max(
        s.peak_rss, out.get("first_peak_rss", 0)), driver_cpu_s=s.cpu_s, workers_peak_rss=s.workers_peak_rss,
        workers=s.workers_peak, torch_workers=len(s.torch_workers), checked_workers=len(s.checked),
        summary=driver.summary(), t0=driver.t0, t_exit=t_exit,
        warnings=[line for _, line in driver.lines if "warning" in line.lower() or "MLflow tracking" in line])
    if rc != 0:
        raise SystemExit(f"the sweep exited {rc}; see {driver.log}:\n" + "\n".join(x for _, x in driver.lines[-30:]))
    return out


def _report(results: Path, work: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ternsearch.cli", "report", str(results)], cwd=work, text=True,
                          capture_output=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ternsearch report exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    html = max(results.rglob("*.html"), key=lambda p: p.stat().st_mtime)
    return {"seconds": seconds, "html_bytes": html.stat().st_size, "html": str(html)}


def _checks(n: int, results: Path, db: Path, name: str, out: dict) -> dict:
    rec = records(results)
    ml = mlflow_counts(db, name, "val_acc")
    tune, study = tune_counts(results), study_counts(results)
    lost, extra = metric_gaps(rec, ml)
    times = rec["times"]
    first = min(t["started"] for t in rec["trials"].values())
    last = max(t.get("ended", 0) for t in rec["trials"].values())
    return {"records": rec, "mlflow": ml, "tune": tune, "study": study, "lost_values": lost, "extra_values": extra,
            "problems": exactly_once(n, rec, tune, study, ml), "first_start": first, "last_end": last,
            "results_span_s": (times[-1] - times[0]) if len(times) > 1 else 0.0}


def _start_server(base: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_cluster import MLflowServer  # the tests' own `mlflow server` (SQLite backend, one worker)

    server = MLflowServer(base).start()
    server.wait_healthy(timeout=300)
    return server


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def show(a, store: str, m: dict) -> dict:
    """Print one store's measurements; returns the targets met (name -> bool)."""
    rec, ml, rep = m["records"], m["mlflow"], m["report"]
    wall = m["wall_s"]
    start, trials, end = m["first_start"] - m["t0"], m["last_end"] - m["first_start"], m["t_exit"] - m["last_end"]
    if m["killed_at"] is not None:
        start = m["first_start"] - (m["t_exit"] - wall)
    rows = rec["history_rows"]
    rate = rows / m["results_span_s"] if m["results_span_s"] else 0.0
    values_per_s = ml["metric_values"] / m["results_span_s"] if m["results_span_s"] else 0.0
    phases = {"start-up (Ray, checks, searcher; to the first trial)": start,
              "trials (first start to last end)": trials,
              "end (MLflow closed, best config, the sweep's report, Ray stopped)": end,
              "ternsearch report": rep["seconds"]}
    total = wall + rep["seconds"]
    print(f"\n== {store}: {a.trials} trials x {a.epochs_used} epochs, {a.concurrent} at once "
          f"({a.cpus:g} CPU each), ASHA grace {a.grace} rf {a.reduction} + TPE")
    if m["killed_at"] is not None:
        print(f"  driver SIGKILLed after {m['killed_at']} trials had ended ({m['first_run_s']:.1f} s in), "
              "then --resume")
    print(f"  wall time: {wall:.1f} s sweep + {rep['seconds']:.1f} s report = {total:.1f} s")
    for label, sec in phases.items():
        print(f"    {label}: {sec:.1f} s ({100 * sec / total:.0f}%)")
    print(f"  results: {rows} (history.jsonl) in {m['results_span_s']:.1f} s = {rate:.0f}/s handled by the driver; "
          f"driver CPU {m['driver_cpu_s']:.1f} s = {rows / max(m['driver_cpu_s'], 1e-9):.0f} results per CPU-second"
          + (" (resumed driver only)" if m["killed_at"] is not None else ""))
    print(f"  trials: {dict(rec['statuses'])}; lost (trials_lost.json): {len(rec['lost'])}")
    print(f"  driver peak RSS (VmHWM): {_gib(m['driver_peak_rss'])}; Ray workers: up to {m['workers']} processes, "
          f"{_gib(m['workers_peak_rss'])} summed RSS ({m['workers_peak_rss'] / max(m['workers'], 1) / 2**20:.0f} MiB "
          f"each); torch loaded in {m['torch_workers']} of {m['checked_workers']} workers")
    print(f"  MLflow: {ml['metric_values']} metric values = {values_per_s:.0f}/s over the trials phase; "
          f"runs {dict((f'{r}/{s}', c) for (r, s), c in ml['runs'].items())}; sweep run {ml['parent']}")
    unwritten = m["summary"].get("tracking_unwritten")
    print(f"  MLflow vs history.jsonl (read after the driver exited): {m['lost_values']} values lost, "
          f"{m['extra_values']} extra; writes still queued at the end: {unwritten}")
    print(f"  records: trials.json + history.jsonl {rec['records_size'] / 2**20:.1f} MiB; results folder "
          f"{rec['size'] / 2**20:.1f} MiB")
    print(f"  report: {rep['seconds']:.1f} s, HTML {rep['html_bytes'] / 2**20:.2f} MiB ({rep['html']})")
    print(f"  Tune: {dict(m['tune'])}; Optuna study: {dict(m['study'])}")
    for w in m["warnings"][:10]:
        print(f"  driver said: {w[:200]}")
    running = sum(c for (_, s), c in ml["runs"].items() if s == "RUNNING")
    met = {f">= {TARGETS['results_per_s']} results/s": rate >= TARGETS["results_per_s"],
           f"driver RSS <= {TARGETS['driver_rss_gib']:g} GiB":
               m["driver_peak_rss"] <= TARGETS["driver_rss_gib"] * 2**30,
           "0 metrics lost": m["lost_values"] == 0 and not unwritten, "0 runs RUNNING": running == 0,
           f"report <= {TARGETS['report_s']} s": rep["seconds"] <= TARGETS["report_s"],
           f"report <= {TARGETS['report_mb']} MB": rep["html_bytes"] <= TARGETS["report_mb"] * 1e6,
           "every trial ended exactly once": not m["problems"]}
    print("  targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in met.items()))
    for p in m["problems"]:
        print(f"  PROBLEM: {p}")
    return met


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--concurrent", type=int, default=64)
    p.add_argument("--table", type=Path, default=TABLE)
    p.add_argument("--extend", choices=["hold", "cap"], default="hold")
    p.add_argument("--stores", default="sqlite,server", help="comma-separated: sqlite, server")
    p.add_argument("--grace", type=int, default=2)
    p.add_argument("--reduction", type=float, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL the driver once this share of trials ended")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--work", type=Path, default=None, help="keep everything here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    a.cpus = int(2 / a.concurrent * 1e4) / 1e4  # 2 CPUs here; Ray counts resources to 1/10,000
    work = a.work or Path(tempfile.mkdtemp(prefix="ternsearch-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    a.table_used, a.epochs_used, how = extended_table(a.table, a.epochs, a.extend, work / "table.csv")
    one, five, _ = os.getloadavg()
    print(f"scale: {a.trials} trials x {a.epochs_used} epochs, {a.concurrent} at once; replay of {a.table}: {how}; "
          f"machine load {one:.1f}/{five:.1f} on {os.cpu_count()} cores; work in {work}")
    everything, ok = {}, True
    for store in a.stores.split(","):
        m = run_store(a, store, work / store, a.table_used, a.epochs_used)
        met = show(a, store, m)
        ok = ok and all(met.values())
        everything[store] = {"targets": met, "problems": m["problems"], "wall_s": m["wall_s"],
                             "statuses": dict(m["records"]["statuses"]), "tune": dict(m["tune"]),
                             "study": dict(m["study"]), "lost_values": m["lost_values"],
                             "mlflow_trial_runs": len(m["mlflow"]["trial_runs"]), "killed_at": m["killed_at"],
                             "lost_trials": len(m["records"]["lost"]), "report_s": m["report"]["seconds"]}
    if a.json:
        a.json.write_text(json.dumps(everything, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
