"""The whole CLI under a fuzzing pass (issue 16): every subcommand and flag, mutated sweep and train files.

Hypothesis draws cases (``tests/helpers_fuzz_argv.py``: a command line over a workspace of specs, results
directories and checkpoints, plus a mutation of a shipped file from ``tests/helpers_fuzz_spec.py``); one
long-lived worker process runs each through ``ternsearch.cli.main`` (``tests/helpers_fuzz_worker.py``: importing
torch costs ~3 s a process), and ``tests/helpers_fuzz_judge.py`` says what went wrong: a traceback, a library's
log line, an exit code other than 0/1, exit 1 without exactly one line, exit 0 on an input that is certainly
invalid (``tests/helpers_fuzz_rules.py``), a hang, a file that was there changed. Failures are grouped by class;
the assertion message lists each class with its smallest reproducer.

Knobs (environment): ``TERNSEARCH_FUZZ_EXAMPLES`` (cases drawn, default 3000), ``TERNSEARCH_FUZZ_SECONDS`` (wall-clock
budget for the cases, default 100), ``TERNSEARCH_FUZZ_SEED`` (unset: derandomized, the same cases on every run;
set: a different pass per seed), ``TERNSEARCH_FUZZ_TIMEOUT`` (seconds a case may take, default 15) and
``TERNSEARCH_FUZZ_REPORT`` (a JSON file to write every class and its reproducers to), ``TERNSEARCH_FUZZ_TRACE``
(a JSON-lines file to append every case and its outcome to).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from helpers_fuzz_argv import SPEC, SWEEP, TRAIN, Case, cases
from helpers_fuzz_judge import Findings, Worker, judge
from helpers_fuzz_rules import spec_violation
from helpers_fuzz_spec import BASES, dump
from helpers_fuzz_worker import run_fresh

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("TERNSEARCH_FUZZ_EXAMPLES", "3000"))
SECONDS = float(os.environ.get("TERNSEARCH_FUZZ_SECONDS", "100"))
SEED = os.environ.get("TERNSEARCH_FUZZ_SEED")
TIMEOUT = float(os.environ.get("TERNSEARCH_FUZZ_TIMEOUT", "15"))
REPORT = os.environ.get("TERNSEARCH_FUZZ_REPORT")
TRACE = os.environ.get("TERNSEARCH_FUZZ_TRACE")

# The corpus files whose problem is within one section (the rules leave checks across sections, or that need
# the machine, to the CLI: a rule never says "invalid" unless it is certain).
_CORPUS_THE_RULES_SEE = {f"{n:02d}" for n in [*range(1, 24), 25, 26, 28, 29, 31, 32, 33, 34, 35, 36, 37, 43, 48,
                                              50, 51]}


def test_rules_accept_the_shipped_files():
    for name, doc in BASES.items():
        if not name.startswith("inline:"):
            assert spec_violation((REPO / name).read_bytes()) is None, name
        assert spec_violation(dump(doc)) is None, f"{name}, as the fuzzer writes it"


def test_rules_refuse_the_corpus():
    for f in sorted((REPO / "tests" / "bad_specs").glob("*.yaml")):
        if f.name[:2] in _CORPUS_THE_RULES_SEE:
            assert spec_violation(f.read_bytes()), f.name


def test_rules_on_edge_values():
    base = (REPO / "configs" / "cifar10-small-cpu.yaml").read_text()
    refused = ["epochs: 10", "epochs: abc"], ["epochs: 10", "epochs: -1"], ["epochs: 10", "epochs: 2.5"], \
        ["lr: 0.05", "lr: .nan"], ["nesterov: true", "nesterov: maybe"], ["arch: airbench", "arch: [airbench]"], \
        ["name: cifar10-small-cpu", "name: 'a b'"], ["output: runs", "outputt: runs"]
    kept = ["epochs: 10", "epochs: 010"], ["nesterov: true", "nesterov: yes"], ["lr: 0.05", "lr: '0.05'"]
    for old, new in refused:
        assert spec_violation(base.replace(old, new).encode()), new
    for old, new in kept:
        assert spec_violation(base.replace(old, new).encode()) is None, new


def _worker_env(base: Path, data_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "TERNSEARCH_FUZZ"))}
    env.update(HOME=str(base / "ws" / "home"), TMPDIR=str(base / "tmp"), RAY_TMPDIR=str(base / "tmp"),
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO), TERNSEARCH_DATA=str(data_root),
               PYTHONDONTWRITEBYTECODE="1")
    (base / "tmp").mkdir(parents=True, exist_ok=True)
    return env


class _OutOfTime(BaseException):
    """Ends the pass when its time budget is spent (a BaseException: Hypothesis lets it through untouched)."""


def _explore(worker: Worker, findings: Findings, stats: Counter, outcomes: Counter, deadline: float):
    seen: set = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(cases())
    def explore(case: Case):
        if time.time() > deadline:
            raise _OutOfTime
        if case.key() in seen:
            stats["repeats"] += 1
            return
        seen.add(case.key())
        res = worker.run(case.wire())
        stats["skipped" if "skipped" in res else case.command] += 1
        outcomes[f"{case.command}:{res.get('code', next(iter(res)))}"] += 1
        if TRACE:
            with open(TRACE, "a") as f:
                f.write(json.dumps({"argv": case.argv, "ops": case.spec_ops, "code": res.get("code"),
                                    "seconds": res.get("seconds"), "stderr": res.get("stderr", "")[-300:]},
                                   ensure_ascii=True) + "\n")
        for cls, detail in judge(case, res):
            findings.add(cls, detail, case, res)

    return seed(int(SEED))(explore) if SEED else explore


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory, data_root) -> tuple[Path, dict]:
    """The folder of the workspace (its template is built on first use) and the environment commands run in."""
    base = tmp_path_factory.mktemp("fuzz")
    return base, _worker_env(base, data_root)


def test_cli_survives_fuzzing(fuzz_base):
    base, env = fuzz_base
    worker = Worker(base, env, timeout=TIMEOUT)
    findings, stats, outcomes = Findings(), Counter(), Counter()
    t0 = time.time()
    worker.run({"argv": ["validate", "configs/cifar10-small-cpu.yaml"], "spec": "", "env": {}})  # start-up
    stats["start-up seconds"] = round(time.time() - t0)
    try:
        _explore(worker, findings, stats, outcomes, deadline=time.time() + SECONDS)()
    except _OutOfTime:
        stats["stopped by the time budget"] = 1
    finally:
        worker.stop()
    stats["worker starts"] = worker.starts
    stats["outcomes"] = " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    stats["seconds"] = round(time.time() - t0)
    if REPORT:
        findings.dump(REPORT, dict(stats))
    summary = findings.summary(dict(stats))
    print(summary)
    ran = sum(v for k, v in stats.items() if k in ("validate", "sweep", "train", "export", "report", "ui", "junk"))
    assert ran >= min(EXAMPLES, 50), f"too few cases ran: {summary}"
    assert not findings.classes, summary


# The real program, one process each (its exit path, and whatever the imports of each path print once a process):
# a few cases per subcommand, judged like the fuzzed ones. None can train (no data) or serve (no store).
_NODATA = {"TERNSEARCH_DATA": "{ws}/nodata"}
FRESH = [
    Case(["validate", "search_spaces/cifar10-cpu.yaml"], "validate", file_kind=SWEEP),
    Case(["sweep", "search_spaces/cifar10-cpu.yaml", "--dry-run"], "sweep", file_kind=SWEEP),
    Case(["sweep", "hand.yaml", "--dry-run", "--resume", "--tracking-uri", "bogus://x"], "sweep", file_kind=SWEEP,
         flags={"--tracking-uri": "--tracking-uri 'bogus://x': not a tracking URI"}),
    Case(["export", "results/hand", "-o", "out/best.yaml", "--packed", "out/best.tern"], "export", outputs=["out"]),
    Case(["report", "results/hand"], "report", outputs=["reports"]),
    Case(["train", "configs/cifar10-small-cpu.yaml", "--epochs", "0"], "train", file_kind=TRAIN, env=_NODATA,
         flags={"--epochs": "--epochs '0': epochs must be >= 1"}),
    Case(["ui", "results/nodb", "--port", "5000"], "ui", invalid=["its tracking store does not exist"]),
]


def test_cli_as_separate_processes(fuzz_base):
    base, env = fuzz_base
    findings = Findings()
    for case in FRESH:
        run_env = dict(env, **{k: v.replace("{ws}", str(base / "ws")) for k, v in case.env.items()})
        res = run_fresh(base, case.argv, run_env)
        for cls, detail in judge(case, res):
            findings.add(cls, detail, case, res)
    summary = findings.summary({"separate processes": len(FRESH)})
    print(summary)
    assert not findings.classes, summary


def test_a_spec_case_round_trips():
    """The strategy's cases carry what the judge needs (a smoke check of the harness without the worker)."""
    case = Case(argv=["validate", "spec.yaml"], command="validate", file_kind=SPEC, spec=b"name: x\nfoo: 1\n")
    found = judge(case, {"code": 0, "stderr": "", "stdout": "ok", "changed": [], "created": []})
    assert [c for c, _ in found] == ["accepted an invalid input (exit 0): `validate` spec: top level: unknown key Q"]
    found = judge(case, {"code": 1, "stderr": "a\nb\n", "stdout": "", "changed": ["hand.yaml"], "created": []})
    assert len(found) == 2
