"""trials.json rebuilt from the other records when it is torn or hand-edited: ``report``, ``export`` and
``sweep --resume`` go on from what is left instead of stopping (each says so in one warning line).

The sources, none of them unpickled: ``history.jsonl`` (every epoch of every trial: the last metrics, epochs, times,
node) and Tune's saved experiment state ``RESULTS/tune/experiment_state-*.json``, read as plain JSON (each trial's
id, searched values, status, start time, failures and error file; Tune's pickled fields are left alone), or, where
that state is gone, each trial directory's ``params.json``. A trial's status follows the rule the sweep's own
records use (``ternsearch.results.trials.trial_status``); a trial Tune's state does not hold and whose history does
not say it ended is ``running`` (a resumed sweep then moves it to trials_lost.json, as any such trial).

What cannot be rebuilt: a trial's searched values when neither Tune's state nor its ``params.json`` has them (its
entry gets ``config_unknown``: the report shows it without them, ``export`` refuses to export it), and nothing at
all when there is no history and no Tune state.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from ternsearch.errors import RecordError
from ternsearch.results.files import HISTORY, TRIALS, TUNE_DIR, read_history, read_trials
from ternsearch.results.trials import error_text, run_complete, trial_status
from trainables.failures import failure_reason

__all__ = ["recover_trials", "rebuild_trials", "tune_trials", "has_tune_state"]

_COPIED = ("node_id", "hostname", "world_size", "rank_node_ids")  # what the recorder copies from a result too


def _state_files(results_dir: Path) -> list[Path]:
    return sorted((Path(results_dir) / TUNE_DIR).glob("experiment_state-*.json"), reverse=True)


def has_tune_state(results_dir: Path) -> bool:
    """Whether Tune's saved experiment state (what ``--resume`` restores) is in the results directory."""
    return bool(_state_files(results_dir))


def _plain(text: Any) -> Optional[dict]:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tune_trials(results_dir: Path) -> list[dict]:
    """The trials of Tune's newest readable experiment state, in the order Tune created them: ``trial_id``,
    ``config``, ``status`` (Tune's: TERMINATED, ERROR, RUNNING...), ``start_time``, ``num_failures``,
    ``last_result``, ``error_file``, ``dir``; [] without a readable state."""
    for path in _state_files(results_dir):
        try:
            data = json.loads(path.read_bytes())
            pairs = data["trial_data"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # torn or not Tune's: an older session's state may still be whole
        out = []
        for pair in pairs if isinstance(pairs, list) else []:
            state, run = (_plain(pair[0]), _plain(pair[1])) if isinstance(pair, list) and len(pair) == 2 else (
                None, None)
            if state is None or not isinstance(state.get("trial_id"), str):
                continue
            run = run or {}
            trial_dir = Path(results_dir) / TUNE_DIR / str(state.get("relative_logdir") or f"trial_{state['trial_id']}")
            error = run.get("error_filename")
            out.append({"trial_id": state["trial_id"], "config": _plain(state.get("config")),
                        "status": state.get("status"), "start_time": run.get("start_time"),
                        "num_failures": run.get("num_failures") or 0, "last_result": _plain(run.get("last_result")),
                        "error_file": str(trial_dir / error) if isinstance(error, str) else None, "dir": trial_dir})
        return out
    return []


def _params_json(trial_dir: Path) -> Optional[dict]:
    try:
        return _plain((trial_dir / "params.json").read_text())
    except (OSError, ValueError):
        return None


def _newest_checkpoint(trial_dir: Path) -> Optional[str]:
    found = sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir())
    return str(found[-1]) if found else None


def _status(tune: Optional[dict], last: dict) -> tuple[str, str]:
    """(status, reason) as the recorder would have written them when the trial ended."""
    kind = (tune or {}).get("status")
    if kind == "TERMINATED":
        return trial_status(last, errored=False)
    if kind == "ERROR":
        stand_in = SimpleNamespace(error_file=tune.get("error_file"), get_pickled_error=lambda: None)
        return trial_status(last, errored=True, error=error_text(stand_in))
    if tune is None and "epoch" in last and (failure_reason(last) or run_complete(last)):
        return trial_status(last, errored=False)
    return "running", ""


def _entry(tid: str, number: int, rows: list[dict], tune: Optional[dict], trial_dir: Path) -> dict:
    last = {k: v for k, v in rows[-1].items() if "/" not in k and k not in ("trial_id", "time")} if rows else {}
    if not last and tune and tune.get("last_result"):
        last = {k: v for k, v in tune["last_result"].items()
                if "/" not in k and isinstance(v, (int, float, str, bool)) and k != "trial_id"}
    config = (tune or {}).get("config")
    config = config if config is not None else _params_json(trial_dir)
    status, reason = _status(tune, last)
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    started = (tune or {}).get("start_time") or (min(times) if times else None)
    entry = {"trial_id": tid, "number": number, "config": config or {}, "status": status, "reason": reason,
             "epochs": int(last["epoch"]) if isinstance(last.get("epoch"), int) else 0, "started": started,
             "restarts": int((tune or {}).get("num_failures") or 0), "last": last, "rebuilt": True}
    if config is None:
        entry["config_unknown"] = True
    checkpoint = _newest_checkpoint(trial_dir)
    if checkpoint:
        entry["checkpoint"] = checkpoint
    entry.update({k: last[k] for k in _COPIED if k in last})
    if status != "running" and times:
        entry["ended"] = max(times)
        if isinstance(started, (int, float)):
            entry["wall_seconds"] = entry["ended"] - started
    return entry


def rebuild_trials(results_dir: Path) -> dict:
    """trials.json's entries from history.jsonl and Tune's state (see the module's docstring), each marked
    ``rebuilt``; numbered in Tune's order of creation, then the trials only history.jsonl holds by first result."""
    results_dir = Path(results_dir)
    per_trial: dict[str, list[dict]] = {}
    for row in read_history(results_dir, strict=False):
        if isinstance(row.get("trial_id"), str):
            per_trial.setdefault(row["trial_id"], []).append(row)
    tune = {t["trial_id"]: t for t in tune_trials(results_dir)}
    first = {tid: min((r.get("time") for r in rows if isinstance(r.get("time"), (int, float))), default=0.0)
             for tid, rows in per_trial.items()}
    order = list(tune) + sorted((tid for tid in per_trial if tid not in tune), key=lambda tid: first[tid])
    return {tid: _entry(tid, n, per_trial.get(tid, []), tune.get(tid),
                        tune[tid]["dir"] if tid in tune else results_dir / TUNE_DIR / f"trial_{tid}")
            for n, tid in enumerate(order)}


def recover_trials(results_dir: Path) -> tuple[dict, Optional[str]]:
    """``(trials.json's entries, None)``, or, trials.json being torn, ``(the rebuilt entries, one line saying
    so)``. Raises the ``RecordError`` itself when there is nothing to rebuild from."""
    try:
        return read_trials(results_dir), None
    except RecordError as exc:
        error = exc
    trials = rebuild_trials(results_dir)
    sources = [name for name, present in ((HISTORY, (Path(results_dir) / HISTORY).is_file()),
                                          (f"Tune's state in {TUNE_DIR}/", has_tune_state(results_dir))) if present]
    if not trials:
        raise error.with_hint(f"nothing to rebuild it from ({HISTORY} and Tune's state in {TUNE_DIR}/ hold no "
                              f"trial): restore {TRIALS} from a copy") from None
    unknown = sum(bool(t.get("config_unknown")) for t in trials.values())
    note = f"{len(trials)} trials rebuilt from {' and '.join(sources)}" + (
        f", {unknown} of them without their searched values" if unknown else "")
    return trials, str(error.with_hint(note))
