"""Outputs never overwrite records (``ternsearch.results.outputs``): ``export -o``, ``export --packed`` and
``report -o`` refuse, in one line with exit code 1 and before writing anything, the sweep's spec file, every record
in a results directory, a directory, and a place whose folder cannot be made; they may rewrite their own
regenerable files.

The results directory is hand-made (tests/helpers_report.py) with the files a finished sweep leaves: no Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from helpers_report import cli, write_hand_sweep
from ternsearch.cli import main
from ternsearch.results.outputs import REGENERABLE, check_output
from ternsearch.results.files import SWEEP

NAME = "rec"
# What else a finished sweep leaves in its results directory (contents stand-ins: nothing here reads them).
RECORDS = {
    "tune/experiment_state-2025-01-01_00-00-00.json": b'{"trials": []}',
    "tune/train_driver_fn_0a1b2_00000/checkpoint_000002/state.pt": b"\x80\x02checkpoint bytes",
    "mlflow.db": b"SQLite format 3\x00 stand-in",
    "best.yaml": b"# the sweep's own export\n",
    "report.html": b"<html>the sweep's own report</html>\n",
    "trials.csv": b"trial_id\ntr00\n",
}


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(working dir, spec file, results dir), the working dir the current directory."""
    spec, results = write_hand_sweep(tmp_path, NAME)
    for rel, data in RECORDS.items():
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    return tmp_path, spec, results


def _tree(root: Path) -> dict[str, object]:
    """Every path under ``root`` with its bytes (a folder: None, a link: where it points)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else None if path.is_dir()
                    else path.read_bytes())
    return out


def _unwritable_place() -> Path:
    """A folder even root cannot create files in (sysfs), or skip."""
    sys_dir = Path("/sys")
    try:
        with tempfile.NamedTemporaryFile(dir=sys_dir):
            pass
    except OSError:
        return sys_dir / "ternsearch-test" / "out"
    pytest.skip("no folder here refuses new files to this user")


# (case, the target as given on the command line (relative ones to the working dir), what the refusal says)
CASES = {
    "spec file": (lambda w, s, r: str(s), "it is the spec file that made the sweep"),
    "spec file, relative": (lambda w, s, r: f"specs/{NAME}.yaml", "it is the spec file that made the sweep"),
    "spec file, via a symlink": (lambda w, s, r: _link(w / "link.yaml", s), "it is the spec file that made"),
    "spec file, via a hard link": (lambda w, s, r: _link(w / "hard.yaml", s, hard=True), "it is the spec file"),
    "sweep.json": (lambda w, s, r: str(r / SWEEP), "it is a record of the sweep in"),
    "trials.json, relative": (lambda w, s, r: f"results/{NAME}/trials.json", "it is a record of the sweep in"),
    "history.jsonl": (lambda w, s, r: str(r / "history.jsonl"), "it is a record of the sweep in"),
    "spec.yaml": (lambda w, s, r: str(r / "spec.yaml"), "it is a record of the sweep in"),
    "Tune's state": (lambda w, s, r: str(r / next(iter(RECORDS))), "it is a record of the sweep in"),
    "a checkpoint": (lambda w, s, r: str(r / list(RECORDS)[1]), "it is a record of the sweep in"),
    "mlflow.db": (lambda w, s, r: str(r / "mlflow.db"), "it is a record of the sweep in"),
    "another output's file": (lambda w, s, r: str(r / "trials.csv"), "it is a record of the sweep in"),
    "a directory": (lambda w, s, r: str(r / "tune"), "it is a directory"),
    "the current directory": (lambda w, s, r: ".", "it is a directory"),
    "parent is a file": (lambda w, s, r: str(r / SWEEP / "out"), f"{SWEEP} is not a directory;"),
    "parent not writable": (lambda w, s, r: str(_unwritable_place()), "its folder cannot be created or written"),
}
OUTPUTS = {
    "export -o": lambda r, target: ["export", str(r), "-o", target],
    "export --packed": lambda r, target: ["export", str(r), "-o", "fresh.yaml", "--packed", target],
    "export --onnx": lambda r, target: ["export", str(r), "-o", "fresh.yaml", "--onnx", target],
    "report -o": lambda r, target: ["report", str(r), "-o", target],
}


def _link(link: Path, target: Path, hard: bool = False) -> str:
    (os.link if hard else os.symlink)(target, link)
    return link.name


def _refused(argv: list[str], target: str, says: str, capsys, work: Path) -> None:
    """``argv`` exits 1 with one line naming ``target`` and saying ``says``, and nothing under ``work`` changed.
    A target given on the command line is named after its argument (``--output X: refusing ...``)."""
    before = _tree(work)
    assert main(argv) == 1
    captured = capsys.readouterr()
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line and captured.out == "", captured
    flag = next((f for f, given in (("--packed", "--packed"), ("--onnx", "--onnx"), ("--output", "-o"))
                 if given in argv and argv[argv.index(given) + 1] == target), None)
    named = f"{flag} {target}" if flag else target
    assert line.startswith(f"{named}: refusing to write here: ") and says in line, line
    assert _tree(work) == before


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("case", CASES)
def test_refused_and_nothing_written(sweep, capsys, case, output):
    work, spec, results = sweep
    make_target, says = CASES[case]
    target = make_target(work, spec, results)
    _refused(OUTPUTS[output](results, target), target, says, capsys, work)
    assert not Path("/sys/ternsearch-test").exists()


def test_regenerable_names_are_per_output(sweep, capsys):
    """Each output may replace only its own files: not another command's best.yaml or report.html."""
    work, _, results = sweep
    for argv, target in ((["export", str(results), "-o", str(results / "report.html")], results / "report.html"),
                         (["report", str(results), "-o", str(results / "best.yaml")], results / "best.yaml"),
                         (["export", str(results), "--packed", str(results / "best.yaml")], results / "best.yaml")):
        _refused(argv, str(target), "which this command does not write; there it may replace only", capsys, work)


def test_export_of_the_spec_file_onto_itself(sweep, capsys):
    """RESULTS given as the spec file (relative) and -o naming that same file."""
    work, spec, _ = sweep
    rel = f"specs/{NAME}.yaml"
    _refused(["export", rel, "-o", rel], rel, "it is the spec file that made the sweep", capsys, work)
    _refused(["export", str(work / "results" / NAME), "--spec", rel, "-o", rel], rel, "spec file", capsys, work)


def test_packed_onto_the_yaml_of_the_same_command(sweep, capsys):
    work, _, results = sweep
    _refused(["export", str(results), "-o", "out.yaml", "--packed", "out.yaml"], "out.yaml",
             "it is also the --output file", capsys, work)


def test_report_tables_linked_to_records_are_refused(sweep, capsys):
    """trials.csv/trials.parquet in RESULTS are rewritten by every report: not when they lead to a record."""
    work, _, results = sweep
    (results / "trials.parquet").symlink_to(results / "history.jsonl")
    target = str(results / "trials.parquet")
    _refused(["report", str(results), "-o", "elsewhere.html"], target, "it is a record of the sweep in", capsys, work)


def test_the_command_exits_1_without_a_traceback(sweep):
    """The real command line: exit status 1 and one line (in-process ``main`` is what the other tests call)."""
    work, spec, results = sweep
    before = _tree(work)
    proc = cli("report", str(results), "-o", str(spec), cwd=work, timeout=300)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.strip() == (f"--output {spec}: refusing to write here: it is the spec file that made the "
                                   f"sweep ({spec.resolve()}; give another path)")
    assert _tree(work) == before


def test_regenerable_outputs_and_new_files_are_written(sweep, capsys):
    """export -o RESULTS/best.yaml, a new file in a subfolder of RESULTS and report -o RESULTS/report.html (with
    its tables) are written; every record stays byte-identical."""
    work, _, results = sweep
    records = {k: v for k, v in _tree(results).items() if k not in {"best.yaml", "report.html", "trials.csv"}}
    assert main(["export", str(results), "-o", str(results / "best.yaml")]) == 0
    assert "# Best trial tr00 of sweep 'rec'" in (results / "best.yaml").read_text()
    assert main(["export", str(results), "-o", f"results/{NAME}/picked/best.yaml", "--epochs", "9"]) == 0
    assert "epochs: 9" in (results / "picked" / "best.yaml").read_text()
    assert main(["report", str(results), "-o", str(results / "report.html")]) == 0
    assert (results / "report.html").stat().st_size > 3e6 and (results / "trials.csv").read_bytes() != \
        RECORDS["trials.csv"] and (results / "trials.parquet").is_file()
    capsys.readouterr()
    after = _tree(results)
    assert {k: after[k] for k in records} == records
    # --packed may replace best.tern there (writing it needs a checkpoint: tests/test_sweep.py)
    (results / "best.tern").write_bytes(b"old")
    assert check_output(results / "best.tern", results, REGENERABLE["packed"]) == (results / "best.tern").resolve()
    (results / "best.onnx").write_bytes(b"old")  # and --onnx best.onnx (writing one: tests/test_onnx_export.py)
    assert check_output(results / "best.onnx", results, REGENERABLE["onnx"]) == (results / "best.onnx").resolve()
