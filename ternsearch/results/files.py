"""The names of a sweep's record files and how to read them, without Ray: export, report and the sweep's own
checks before Ray starts read them (see :mod:`ternsearch.results.recorder` for the writer,
:mod:`ternsearch.results.atomic` for how every record is written).

A record that is torn or hand-edited is a ``RecordError``, one line naming the file: ``RESULTS/trials.json: not
valid JSON (line 3 column 5: Expecting ',' delimiter)``, ``RESULTS/sweep.json: not a sweep record (a list, expected
an object)``, ``RESULTS/history.jsonl:17: not a JSON record (...)``. ``history.jsonl`` is appended to as results
come, so a crash may leave its last line torn: that line is skipped (``warn`` is told once), never an error.
Rebuilding a torn trials.json from the other records is :mod:`ternsearch.results.rebuild`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from ternsearch.errors import RecordError, ResultsError
from ternsearch.results.atomic import torn_tail

__all__ = ["HISTORY", "LOST", "STUDY", "SWEEP", "TRIALS", "TUNE_DIR", "SWEEP_HINT", "read_epochs", "read_history",
           "read_json", "read_sweep", "read_trials"]

HISTORY = "history.jsonl"
TRIALS = "trials.json"
SWEEP = "sweep.json"
LOST = "trials_lost.json"  # trials a killed driver started that Tune's last saved state did not hold
STUDY = "optuna.db"  # the sweep's Optuna study (RDB storage on SQLite; see ternsearch.run.searcher)
TUNE_DIR = "tune"  # Tune's experiment directory in the results directory (local and shared-filesystem storage)

SWEEP_HINT = ("sweep.json is written when the sweep starts and the other records cannot replace it: restore it "
              "from a copy, or start a new sweep (change name: or storage.path)")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(value), "a number")


def _why_not_json(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno} column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}"
    return str(exc)


def read_json(path: Path, what: str, default: Any = None) -> Any:
    """The JSON object in ``path`` (``default`` when there is no such file), or a ``RecordError`` naming it:
    ``PATH: not valid JSON (line L column C: ...)``, ``PATH: empty``, ``PATH: not WHAT (a list, expected an
    object)``, ``PATH: unreadable (...)``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise RecordError(path, f"unreadable ({exc.strerror or type(exc).__name__})") from None
    if not raw.strip(b"\0 \t\r\n"):
        raise RecordError(path, "empty (a write that never finished, or truncated)")
    try:
        value = json.loads(raw.decode("utf-8"))  # our writers write UTF-8 (json.loads would guess UTF-16 too)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
        raise RecordError(path, f"not valid JSON ({_why_not_json(exc)})") from None
    if not isinstance(value, dict):
        raise RecordError(path, f"not {what} ({_kind(value)}, expected an object)")
    return value


def read_sweep(results_dir: Path) -> dict[str, Any]:
    """The sweep.json of a results directory, or a one-line ResultsError (RecordError when it is torn)."""
    results_dir = Path(results_dir)
    if results_dir.exists() and not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: not a results directory (a file; give the sweep's folder, the one "
                           f"holding {SWEEP})")
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: no such results directory")
    path = results_dir / SWEEP
    if not path.exists():
        raise ResultsError(f"{results_dir}: not a ternsearch results directory (no {SWEEP})")
    try:
        meta = read_json(path, "a sweep record")
        for key in ("name", "metric", "mode"):
            if not isinstance(meta.get(key), str):
                raise RecordError(path, f"not a sweep record (no '{key}')")
        if meta["mode"] not in ("max", "min"):
            raise RecordError(path, f"not a sweep record (mode '{meta['mode']}', expected max or min)")
    except RecordError as exc:
        raise exc.with_hint(SWEEP_HINT) from None
    return meta


def read_trials(results_dir: Path) -> dict:
    """trials.json (``{}`` before the first trial started), or a ``RecordError`` when it is torn, not JSON or not
    trial entries (see ``ternsearch.results.rebuild.recover_trials`` to rebuild it instead)."""
    path = Path(results_dir) / TRIALS
    trials = read_json(path, "a trials record", {})
    for tid, entry in trials.items():
        if not isinstance(entry, dict):
            raise RecordError(path, f"trial '{tid}': not a trial entry ({_kind(entry)}, expected an object)")
        for key, kind in (("status", str), ("config", dict), ("last", dict)):
            if not isinstance(entry.get(key), kind):
                raise RecordError(path, f"trial '{tid}': not a trial entry (no '{key}')")
    return trials


def read_history(results_dir: Path, *, strict: bool = True,
                 warn: Optional[Callable[[str], None]] = None) -> list[dict]:
    """All results of a sweep's ``history.jsonl``, the last line kept per (trial_id, epoch).

    A torn last line (a crash cut its write short) is skipped, ``warn`` told once. Any other line that is not a
    JSON object is a ``RecordError`` (``PATH:LINE: not a JSON record (...)``) when ``strict``; else those lines
    are skipped too, ``warn`` told once how many and which was first."""
    path = Path(results_dir) / HISTORY
    if not path.is_file():
        return []
    data = path.read_bytes()
    torn = torn_tail(data)
    lines = (data if torn is None else data[:torn]).split(b"\n")
    if torn is not None and warn is not None:
        warn(f"warning: {path}:{len(lines)}: torn last line skipped (a write that a crash cut short)")
    rows: dict[tuple, dict] = {}
    bad: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            problem = None if isinstance(row, dict) else f"{_kind(row)}, expected an object"
            if problem is None and "epoch" in row and not _is_epoch(row["epoch"]):
                problem = f"epoch {json.dumps(row['epoch'])[:40]} is not a whole number of epochs"
        except ValueError as exc:
            problem = _why_not_json(exc).replace("line 1 column", "column")
        if problem is not None:
            if strict:
                raise RecordError(f"{path}:{number}", f"not a JSON record ({problem})", "fix or delete that line")
            bad.append(f"line {number}: {problem}")
            continue
        rows[(row.get("trial_id"), row.get("epoch"))] = row
    if bad and warn is not None:
        warn(f"warning: {path}: {len(bad)} line(s) skipped, not JSON records (first: {bad[0]})")
    return sorted(rows.values(), key=lambda r: (str(r.get("trial_id")), _epoch(r)))


def _is_epoch(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _epoch(row: dict) -> float:
    epoch = row.get("epoch", 0)
    return epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else 0


def read_epochs(run_dir: Path, warn: Optional[Callable[[str], None]] = None) -> dict[int, dict]:
    """A single run's ``history.jsonl`` (``ternsearch train``'s run directory): epoch -> row, the last line kept
    per epoch (a resumed run repeats the epochs after its checkpoint); lines that are not records are skipped
    (``warn`` told)."""
    return {int(row["epoch"]): row for row in read_history(run_dir, strict=False, warn=warn)
            if isinstance(row.get("epoch"), int)}
