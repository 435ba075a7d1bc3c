"""Records a crash cannot tear (``ternsearch.results.atomic``) and what the commands do with one that is torn or
hand-edited anyway (``ternsearch.results.files``, ``ternsearch.results.rebuild``): one line naming the file and exit
1, or, where the other records hold what is missing, a rebuild said in one warning line. Files present before a
failing command are byte-identical after it.

Results directories are hand-made in the format the sweep writes (tests/helpers_report.py's trials, Tune's
experiment state as Tune 2.60 saves it, reduced to the fields read here): no Ray, except the last test, a real
tiny sweep stopped and resumed over a torn trials.json."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest
import yaml

from helpers_report import MIXED, cli, write_hand_results
from ternsearch.errors import RecordError
from ternsearch.results.atomic import append_line, replace_with, write_atomic
from ternsearch.results.files import read_history, read_sweep, read_trials
from ternsearch.results.location import spec_digest
from ternsearch.results.rebuild import recover_trials
from ternsearch.spec import load_spec

NAME = "rec"
SPEC = """\
name: {name}
metric: {{name: val_acc, mode: max}}
data: {{subset: 400, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64, optimizer: adam}}
search:
  lr: {{choice: [0.002, 0.01, 0.005]}}
searcher: {{algorithm: grid, num_samples: 3, max_concurrent_trials: 1}}
scheduler: {{algorithm: fifo}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
failure: {{max_failures: 0}}
storage: {{path: {storage}}}
"""
TUNE_STATUS = {"completed": "TERMINATED", "stopped": "TERMINATED", "failed": "ERROR"}


def _tune_state(results: Path, trials: dict) -> None:
    """Tune's experiment state and trial directories for ``trials`` (what a real sweep leaves in RESULTS/tune)."""
    pairs = []
    for tid, t in sorted(trials.items(), key=lambda kv: kv[1]["number"]):
        trial_dir = results / "tune" / f"trial_{tid}"
        (trial_dir / "checkpoint_000000").mkdir(parents=True)
        (trial_dir / "params.json").write_text(json.dumps(t["config"]))
        error = None
        if t["status"] == "failed":
            error = "error.txt"
            (trial_dir / error).write_text(f"Failure # 1\nTraceback ...\nDivergedError: {t['reason']}\n")
        state = {"trial_id": tid, "config": t["config"], "status": TUNE_STATUS[t["status"]],
                 "relative_logdir": f"trial_{tid}", "results": "80059504", "trainable_name": "train_driver_fn"}
        run = {"start_time": t["started"], "num_failures": 0, "error_filename": error,
               "last_result": dict(t["last"], config=t["config"], training_iteration=t["epochs"]),
               "checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": "8005"}}
        pairs.append([json.dumps(state, indent=2), json.dumps(run)])
    (results / "tune" / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": pairs, "runner_data": {}, "stats": {"start_time": 100.0}}))


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(working dir, spec file, results dir): the records of a finished sweep of MIXED's trials (completed,
    ASHA-stopped, diverged), each last result saying whether the run was complete, as the loop reports it."""
    spec = tmp_path / f"{NAME}.yaml"
    spec.write_text(SPEC.format(name=NAME, storage=tmp_path / "results"))
    results = write_hand_results(tmp_path / "results" / NAME, MIXED)
    meta = json.loads((results / "sweep.json").read_text())
    meta.update(name=NAME, spec_file=str(spec.resolve()), spec_sha256=spec_digest(spec),
                base=load_spec(spec).base_config().model_dump(mode="json"))
    (results / "sweep.json").write_text(json.dumps(meta, indent=1))
    trials = json.loads((results / "trials.json").read_text())
    rows = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    for row in rows:
        t = trials[row["trial_id"]]
        row.setdefault("run_complete", t["status"] == "completed" and row["epoch"] == t["epochs"])
        if row["epoch"] == t["epochs"]:
            t["last"] = {k: v for k, v in row.items() if k not in ("trial_id", "time")}
    (results / "trials.json").write_text(json.dumps(trials, indent=1, sort_keys=True))
    (results / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results / "spec.yaml").write_bytes(spec.read_bytes())
    (results / "best.yaml").write_text("# the sweep's own export\n")
    _tune_state(results, trials)
    monkeypatch.chdir(tmp_path)
    return tmp_path, spec, results


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _one_line(proc) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr
    return line


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# ------------------------------------------------------------------------------------------------ the writers
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "trials.json"
    path.write_text('{"old": 1}')
    os.chmod(path, 0o640)

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"new": ')
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        replace_with(path, half_then_crash)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["trials.json"]
    write_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"new": 2}' and os.listdir(tmp_path) == ["trials.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the replaced file's mode is kept
    old_mask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.json", "{}")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640  # a new file: 0666 less the umask


def test_torn_last_history_line_is_skipped_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"trial_id": "a", "epoch": 1}\n{"trial_id": "a", "epoch": 2, "val_')
    warnings: list[str] = []
    assert [r["epoch"] for r in read_history(tmp_path, warn=warnings.append)] == [1]
    assert warnings == [f"warning: {path}:2: torn last line skipped (a write that a crash cut short)"]
    append_line(path, json.dumps({"trial_id": "a", "epoch": 2}))
    assert path.read_text() == '{"trial_id": "a", "epoch": 1}\n{"trial_id": "a", "epoch": 2}\n'
    path.write_bytes(path.read_bytes() + b'{"trial_id": "a", "epoch": 3}')  # whole, only its newline missing
    append_line(path, json.dumps({"trial_id": "a", "epoch": 4}))
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2, 3, 4]
    path.write_bytes(path.read_bytes() + b"\0" * 64)  # a file system's zero padding after a power cut
    append_line(path, json.dumps({"trial_id": "a", "epoch": 5}))
    assert [r["epoch"] for r in read_history(tmp_path)] == [1, 2, 3, 4, 5]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_history_record_whose_epoch_is_not_a_number_is_named(tmp_path):
    """Found by the fuzzing pass: a hand-edited epoch ("../x") made report's sort raise a TypeError."""
    path = tmp_path / "history.jsonl"
    rows = ['{"trial_id": "a", "epoch": 1}', '{"trial_id": "a", "epoch": "../x"}', '{"trial_id": "a", "epoch": 2}']
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecordError) as err:
        read_history(tmp_path)
    assert str(err.value) == (f"{path}:2: not a JSON record (epoch \"../x\" is not a whole number of epochs); fix "
                              "or delete that line")
    assert [r["epoch"] for r in read_history(tmp_path, strict=False)] == [1, 2]


def test_a_corrupt_history_line_inside_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"trial_id": "a", "epoch": 1}\n{"trial_id": "a", "epo\n[3]\n{"trial_id": "a", "epoch": 2}\n')
    with pytest.raises(RecordError) as err:
        read_history(tmp_path)
    assert str(err.value) == (f"{path}:2: not a JSON record (column 19: Unterminated string starting at); "
                              "fix or delete that line")
    warnings: list[str] = []
    assert [r["epoch"] for r in read_history(tmp_path, strict=False, warn=warnings.append)] == [1, 2]
    assert warnings == [f"warning: {path}: 2 line(s) skipped, not JSON records (first: line 2: column 19: "
                        "Unterminated string starting at)"]


@pytest.mark.parametrize("text, problem", [
    ('{"a": {"status": "completed",', "not valid JSON (line 1 column 30: Expecting property name enclosed in "
                                      "double quotes)"),
    ("", "empty (a write that never finished, or truncated)"),
    ("[1, 2]", "not a trials record (a list, expected an object)"),
    ('{"a": {"config": {}, "last": {}}}', "trial 'a': not a trial entry (no 'status')"),
    (b"\xff\xfe{", "not valid JSON (not UTF-8 text: byte 0xff at offset 0)"),
])
def test_a_hand_edited_trials_json_is_one_line_naming_it(tmp_path, text, problem):
    path = tmp_path / "trials.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecordError) as err:
        read_trials(tmp_path)
    assert str(err.value) == f"{path}: {problem}"


# ----------------------------------------------------------------------------------- rebuilt from the records
def test_trials_rebuilt_from_history_and_tune_state_match_the_records(sweep):
    _, _, results = sweep
    original = read_trials(results)
    _truncate(results / "trials.json")
    rebuilt, note = recover_trials(results)
    assert note.startswith(f"{results / 'trials.json'}: not valid JSON (line ")
    assert note.endswith("; 5 trials rebuilt from history.jsonl and Tune's state in tune/")
    for tid, t in original.items():
        keys = ("number", "config", "status", "reason", "epochs", "started", "last")
        assert {k: rebuilt[tid][k] for k in keys} == {k: t[k] for k in keys}, tid
        assert rebuilt[tid]["checkpoint"] == str(results / "tune" / f"trial_{tid}" / "checkpoint_000000")


def test_export_and_report_of_a_torn_trials_json_rebuild_it_and_leave_it(sweep):
    """The real command line: the same best.yaml as from the whole file, one warning line, trials.json untouched."""
    work, _, results = sweep
    assert cli("export", str(results), "-o", "whole.yaml", cwd=work).returncode == 0
    _truncate(results / "trials.json")
    torn = (results / "trials.json").read_bytes()
    proc = cli("export", str(results), "-o", "rebuilt.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr
    (warning,) = proc.stderr.strip().splitlines()
    assert warning.startswith(f"warning: {results / 'trials.json'}: not valid JSON (line ")
    assert warning.endswith("5 trials rebuilt from history.jsonl and Tune's state in tune/ (this command leaves "
                            "trials.json as it is)")
    whole, rebuilt = (yaml.safe_load((work / f).read_text()) for f in ("whole.yaml", "rebuilt.yaml"))
    assert rebuilt == whole and rebuilt["origin"]["trial_id"] == "tr00"
    proc = cli("report", str(results), "-o", "r.html", cwd=work, timeout=300)
    assert proc.returncode == 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (results / "trials.json").read_bytes() == torn
    assert "tr03" in (results / "trials.csv").read_text()


def test_what_cannot_be_rebuilt_is_one_line_and_nothing_changes(sweep):
    """Without Tune's state and params.json the searched values are gone: export refuses in one line (the report
    still draws the trials); with no history either, report refuses too. Every file stays byte-identical."""
    work, _, results = sweep
    for params in (results / "tune").glob("*/params.json"):
        params.unlink()
    for state in (results / "tune").glob("experiment_state-*.json"):
        state.write_text("{}")  # not Tune's: skipped
    (results / "trials.json").write_text("[]")
    before = _tree(work)
    line = _one_line(cli("export", str(results), "-o", str(results / "best.yaml"), cwd=work))
    assert line == (f"{results / 'trials.json'}: not a trials record (a list, expected an object); the chosen trial "
                    "tr00's searched values are in no other record (Tune's state, its params.json): restore "
                    "trials.json from a copy to export it")
    assert _tree(work) == before
    (results / "history.jsonl").write_text("")
    before = _tree(work)
    line = _one_line(cli("report", str(results), "-o", "r.html", cwd=work, timeout=300))
    assert line == (f"{results / 'trials.json'}: not a trials record (a list, expected an object); nothing to "
                    "rebuild it from (history.jsonl and Tune's state in tune/ hold no trial): restore trials.json "
                    "from a copy")
    assert _tree(work) == before


def test_a_corrupt_history_line_fails_report_in_one_line(sweep):
    work, _, results = sweep
    lines = (results / "history.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"
    (results / "history.jsonl").write_text("".join(lines))
    before = _tree(work)
    line = _one_line(cli("report", str(results), "-o", "r.html", cwd=work, timeout=300))
    assert line.startswith(f"{results / 'history.jsonl'}:3: not a JSON record (column ")
    assert line.endswith("; fix or delete that line")
    assert _tree(work) == before


@pytest.mark.parametrize("text, problem", [
    ('{"name": "rec", "metric": "val_a', "not valid JSON (line 1 column 27: Unterminated string starting at)"),
    ('["rec"]', "not a sweep record (a list, expected an object)"),
    ('{"name": "rec", "metric": "val_acc"}', "not a sweep record (no 'mode')"),
])
def test_a_torn_sweep_json_is_one_line_for_every_command(sweep, text, problem):
    """export, report, ui and sweep --resume: one line naming sweep.json, exit 1, every file as it was."""
    work, spec, results = sweep
    (results / "sweep.json").write_text(text)
    before = _tree(work)
    expected = (f"{results / 'sweep.json'}: {problem}; sweep.json is written when the sweep starts and the other "
                "records cannot replace it: restore it from a copy, or start a new sweep (change name: or "
                "storage.path)")
    with pytest.raises(RecordError) as err:
        read_sweep(results)
    assert str(err.value) == expected
    for args in (["export", str(results), "-o", str(results / "best.yaml")], ["report", str(results)],
                 ["ui", str(results)], ["sweep", str(spec), "--resume"]):
        assert _one_line(cli(*args, cwd=work, timeout=300)) == expected, args
    assert _tree(work) == before


def test_resume_refuses_a_torn_trials_lost_json_before_ray(sweep):
    work, spec, results = sweep
    (results / "trials_lost.json").write_text('{"x": ')
    before = _tree(work)
    line = _one_line(cli("sweep", str(spec), "--resume", cwd=work, timeout=300))
    assert line == (f"{results / 'trials_lost.json'}: not valid JSON (line 1 column 7: Expecting value); move it "
                    "away to resume (it lists the trials an earlier driver lost)")
    assert _tree(work) == before


# ------------------------------------------------------------------------------------------- a real sweep
@pytest.mark.slow
@pytest.mark.ray
def test_resume_over_a_torn_trials_json_and_history(tmp_path, data_root):
    """A real sweep stopped (SIGTERM) in its second trial, then trials.json cut in half and a torn line left at
    the end of history.jsonl, as a crash would: --resume says so in two warning lines, rebuilds trials.json from
    Tune's state and history.jsonl, appends after the torn line on a line of its own and finishes the sweep."""
    import subprocess
    import sys

    spec = tmp_path / f"{NAME}.yaml"
    spec.write_text(SPEC.format(name=NAME, storage=tmp_path / "results"))
    results = tmp_path / "results" / NAME
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec)], cwd=tmp_path, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def one_done_one_running() -> bool:  # trials.json is replaced whole: safe to read while it is written
            status = [(t["status"], t["epochs"]) for t in read_trials(results).values()]
            return any(s == "completed" for s, _ in status) and any(s == "running" and e >= 1 for s, e in status)

        deadline = time.time() + 300
        while not one_done_one_running():
            assert time.time() < deadline and proc.poll() is None, "no trial was running after the first finished"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    finished = {tid for tid, t in read_trials(results).items() if t["status"] == "completed"}
    assert finished
    _truncate(results / "trials.json")
    with open(results / "history.jsonl", "ab") as f:
        f.write(b'{"epoch": 4, "trial_id": "x", "val_a')

    resumed = cli("sweep", str(spec), "--resume", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"warning: {results / 'trials.json'}: not valid JSON (line ")
    assert warnings[0].endswith("the resumed sweep rewrites trials.json")
    assert warnings[1].startswith(f"warning: {results / 'history.jsonl'}:") and "torn last line skipped" in warnings[1]
    trials = read_trials(results)
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials.values()), trials
    assert finished <= {tid for tid, t in trials.items() if t.get("rebuilt")}
    rows = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    assert {(r["trial_id"], r["epoch"]) for r in rows} == {(tid, e) for tid in trials for e in (1, 2, 3)}
    assert not [p for p in results.rglob("*.tmp")]


def test_unwritten_tracking_writes_never_replace_a_hand_edited_list(tmp_path):
    """tracking_unwritten.json is appended to (replaced whole); one that is not a JSON list is kept, byte for
    byte, and this sweep's entries go beside it."""
    from ternsearch.tracking.writequeue import UNWRITTEN_FILE, WriteQueue

    queue = WriteQueue.__new__(WriteQueue)  # only what _save_unwritten reads
    queue.results_dir, queue.unwritten = str(tmp_path), [{"trial_id": "a", "epochs": [1]}]
    assert queue._save_unwritten() == tmp_path / UNWRITTEN_FILE
    queue.unwritten = [{"trial_id": "b", "epochs": [2]}]
    queue._save_unwritten()
    assert [e["trial_id"] for e in json.loads((tmp_path / UNWRITTEN_FILE).read_text())] == ["a", "b"]
    (tmp_path / UNWRITTEN_FILE).write_text('[{"trial_id": "a", ')
    assert queue._save_unwritten() == tmp_path / f"{UNWRITTEN_FILE}.new"
    assert (tmp_path / UNWRITTEN_FILE).read_text() == '[{"trial_id": "a", '
    assert sorted(os.listdir(tmp_path)) == [UNWRITTEN_FILE, f"{UNWRITTEN_FILE}.new"]


def test_export_of_hand_edited_configs_is_one_line(sweep):
    """A sweep.json whose fixed config, or a trials.json whose searched values, no longer make a train config."""
    work, _, results = sweep
    meta = json.loads((results / "sweep.json").read_text())
    meta["base"]["model"]["arch"] = 5
    (results / "sweep.json").write_text(json.dumps(meta))
    before = _tree(work)
    line = _one_line(cli("export", str(results), "-o", str(results / "best.yaml"), cwd=work))
    assert line.startswith(f"{results / 'sweep.json'}: not a sweep record ('base' is not a train config: model.arch: "
                           "Input should be a valid string); sweep.json is written when the sweep starts")
    assert _tree(work) == before
    meta["base"]["model"]["arch"] = "tinynet"
    (results / "sweep.json").write_text(json.dumps(meta))
    trials = json.loads((results / "trials.json").read_text())
    trials["tr00"]["config"]["colour"] = "red"
    (results / "trials.json").write_text(json.dumps(trials))
    before = _tree(work)
    line = _one_line(cli("export", str(results), "-o", str(results / "best.yaml"), cwd=work))
    assert line == (f"{results / 'trials.json'}: trial 'tr00': its config is not one this sweep makes (KeyError: "
                    "'colour'); restore trials.json from a copy")
    assert _tree(work) == before
