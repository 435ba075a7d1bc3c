"""Which Optuna storage survives a SIGKILLed writer better: RDB on SQLite or the journal file storage.

A child process writes trials (ask, report, tell) as fast as it can; it is SIGKILLed at a random moment; then a
fresh process opens the storage (timed) and checks every trial is whole. Run:
    python benchmarks/study_kill.py [ROUNDS]
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import sys, optuna
from optuna.storages import RDBStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.ERROR)
kind, path = sys.argv[1], sys.argv[2]
st = RDBStorage(f"sqlite:///{path}") if kind == "sqlite" else JournalStorage(JournalFileBackend(path))
study = optuna.create_study(storage=st, study_name="s", load_if_exists=True)
print("ready", flush=True)
while True:
    t = study.ask()
    x = t.suggest_float("x", 0, 1)
    for step in range(3):
        t.report(x * step, step)
    study.tell(t, x)
"""

READER = """
import sys, time, optuna
from optuna.storages import RDBStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.ERROR)
kind, path = sys.argv[1], sys.argv[2]
t0 = time.time()
st = RDBStorage(f"sqlite:///{path}") if kind == "sqlite" else JournalStorage(JournalFileBackend(path))
study = optuna.load_study(storage=st, study_name="s")
trials = study.get_trials()
t = study.ask(); study.tell(t, 0.5)  # the storage takes writes again
bad = [x.number for x in trials if x.state.name == "COMPLETE" and (x.value is None or len(x.intermediate_values) != 3)]
print(len(trials), sum(x.state.name == "RUNNING" for x in trials), len(bad), f"{time.time() - t0:.2f}")
"""


def one(kind: str, tmp: Path) -> str:
    path = tmp / ("s.db" if kind == "sqlite" else "s.log")
    w = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(path)], stdout=subprocess.PIPE, text=True)
    w.stdout.readline()
    time.sleep(random.uniform(0.3, 1.5))
    w.send_signal(signal.SIGKILL)
    w.wait()
    r = subprocess.run([sys.executable, "-c", READER, kind, str(path)], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() or "ERROR " + r.stderr.strip().splitlines()[-1]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for kind in ("sqlite", "journal"):
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                print(kind, "trials running bad reopen_s:", one(kind, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
