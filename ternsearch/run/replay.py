"""``ternsearch sweep FILE --replay TABLE``: the sweep runs as usual (spec, space compiler, searcher, scheduler,
Tune, records, MLflow), but every trial replays the nearest recorded trial of TABLE instead of training
(``trainables.replay``). A tool for choosing scheduler and searcher settings in seconds, not hours.

Checked here, before Ray starts (one line each, exit code 1): the table reads, it has a column for every searched
key of FILE and for the sweep's objectives, its numeric keys are numbers, and it holds as many epochs as a trial
of FILE runs.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from trainables.replay import ReplayError, ReplayParam, ReplaySetup, ReplayTable, read_table

from ternsearch.errors import ResultsError, UsageError
from ternsearch.spec import SweepSpec

__all__ = ["load_replay", "replay_params", "replay_setup", "check_replay_resume"]


def _error(path: str, detail: str) -> UsageError:
    return UsageError(f"--replay {shlex.quote(path)}: {detail}")


def replay_params(spec: SweepSpec) -> tuple[ReplayParam, ...]:
    """The spec's searched keys as the replay's distance sees them."""
    return tuple(ReplayParam(p.name, p.kind, None if p.kind == "choice" else float(p.low),
                             None if p.kind == "choice" else float(p.high), bool(p.log)) for p in spec.params)


def _check_numbers(path: str, spec: SweepSpec, table: ReplayTable) -> None:
    for p in replay_params(spec):
        if p.kind == "choice":
            continue
        for tid, values in table.values.items():
            text = values.get(p.name, "")
            try:
                value = float(text) if text else None
            except ValueError:
                raise _error(path, f"trial {tid}: {p.name} is '{text}', not a number ({p.name} is {p.kind} in "
                                   f"{spec.file})") from None
            if value is not None and value <= 0 and (p.log or p.kind == "loguniform"):
                raise _error(path, f"trial {tid}: {p.name} is {text}, but {spec.file} searches it on a log scale "
                                   "(values above 0)")


def load_replay(spec: SweepSpec, path: str) -> ReplayTable:
    """The replay table at ``path``, checked against ``spec``.

    Raises:
        UsageError: ``--replay PATH: what is wrong``, e.g. the searched keys it has no column for.
    """
    if not Path(path).is_file():
        raise _error(path, "no such file (give a table benchmarks/replay_table.py wrote, e.g. "
                           "benchmarks/data/curves-cpu.csv)")
    names = tuple(p.name for p in spec.params)
    try:
        table = read_table(path, names)
    except ReplayError as exc:
        raise _error(path, str(exc)) from None
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise _error(path, f"no column for the searched key{'s' * (len(missing) > 1)} {', '.join(missing)} of "
                           f"{spec.file} (the table has {', '.join(c for c in table.columns)})")
    objectives = [m.name for m in spec.objectives]
    absent = [m for m in objectives if m not in table.metrics]
    if absent:
        raise _error(path, f"no column for the objective {', '.join(absent)} of {spec.file} (its metrics: "
                           f"{', '.join(table.metrics)})")
    if table.epochs < spec.max_epochs:
        raise _error(path, f"its trials have {table.epochs} epochs, but a trial of {spec.file} runs up to "
                           f"{spec.max_epochs} (lower train.epochs to {table.epochs} or less)")
    _check_numbers(path, spec, table)
    return table


def replay_setup(spec: SweepSpec, table: ReplayTable, trial_dir_root: str) -> ReplaySetup:
    """What every replayed trial of ``spec`` is handed."""
    return ReplaySetup(table=table, params=replay_params(spec), epochs=int(spec.train.epochs),
                       metric=spec.metric.name, mode=spec.metric.mode, trial_dir_root=trial_dir_root)


def check_replay_resume(results_dir: Path, meta: dict, replay: Optional[str]) -> None:
    """``--resume`` goes on as the sweep started: replaying the same table (sweep.json's ``replay``), or training."""
    before = meta.get("replay")
    if before and not replay:
        raise ResultsError(f"{results_dir}: this sweep replays {before} "
                           f"(resume it with --replay {shlex.quote(before)})")
    if replay and not before:
        raise _error(replay, f"{results_dir} is a sweep that trains (resume it without --replay)")
    if replay and Path(replay).resolve() != Path(before):
        raise _error(replay, f"{results_dir} replays another table, {before} (resume it with that one)")
