"""A Tune trial that replays a recorded learning curve instead of training (``ternsearch sweep FILE --replay
TABLE``): the searcher, the scheduler, Tune, the sweep's records and MLflow run as in a real sweep, in seconds.

The table (``benchmarks/replay_table.py`` writes it from recorded sweeps) has one row per (trial, epoch): the
trial's id, its searched values (named as the spec's ``search:`` keys, an empty cell where a conditional key was
inactive), the epoch and its metrics. A replayed trial takes the curve of the recorded trial NEAREST to its config:

- each searched key is a coordinate in [0, 1] on the spec's own scale: ``(f(x) - f(low)) / (f(high) - f(low))``
  with f = log for ``loguniform`` (and ``int`` with ``log: true``), else the value itself. That is the scale the
  searcher samples on, so "near" means what it means to the searcher, and each key's search range weighs the
  same: a learning rate 2x off counts like a weight decay 2x off, and neither is drowned by the other's units;
- a categorical key is 0 when equal, else 1 (the width of a whole numeric range: augment=mixup against cutmix is
  as far as the two ends of the lr range, with no order among choices to exploit);
- a key inactive in either config (a conditional key whose parent does not enable it) is left out: the parent's
  own mismatch already counts;
- the distance is the Euclidean norm over those keys; ties go to the trial recorded first.

Not an exact lookup: a continuous sampler (TPE, GP, random) never proposes a recorded value exactly, and confining
the searcher to the table's points (a grid of ~100 configurations) would replace the searcher's behaviour with
that of a finite choice. Nearest neighbour keeps the searcher's own space and makes the table a piecewise-constant
surrogate: the curve a proposal gets is that of the closest configuration actually trained, never an invented one
(no interpolation between curves), so "best so far" can only be a value that was really measured. Its limit:
with ~100 recorded points in 8 dimensions a proposal's neighbour may be far, so a searcher's fine steps within a
cell change nothing (see BENCHMARKS.md).

Each epoch is reported at once with a tiny checkpoint (the epoch and the recorded trial id), so ``--resume`` and
ASHA behave as with a training trial: a resumed trial re-reports its checkpoint's epoch (``replayed``), then goes on.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainables.errors import TrainablesError

__all__ = ["ReplayError", "ReplayParam", "ReplayTable", "ReplaySetup", "read_table", "distance", "nearest",
           "replay_fn", "ID", "EPOCH"]

ID, EPOCH = "trial_id", "epoch"
_STATE = "replay.json"


class ReplayError(TrainablesError, ValueError):
    """A replay table that cannot be read or does not fit the sweep (one line naming the file and what is wrong)."""


@dataclass(frozen=True)
class ReplayParam:
    """A searched key as the distance sees it: ``kind`` loguniform | uniform | int | choice."""

    name: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False

    def coordinate(self, value: Any) -> float:
        """``value`` on [0, 1] over the search range, on the spec's own scale (log for log-scaled keys)."""
        x, lo, hi = float(value), float(self.low), float(self.high)
        if self.log or self.kind == "loguniform":
            x, lo, hi = math.log(x), math.log(lo), math.log(hi)
        return 0.0 if hi == lo else (x - lo) / (hi - lo)


@dataclass(frozen=True)
class ReplayTable:
    """Recorded curves: ``values[trial]`` the searched values as written (text; "" inactive), ``curves[trial]`` the
    epochs' metrics (epoch 1 first), in the order the table lists the trials."""

    path: str
    columns: tuple[str, ...]
    metrics: tuple[str, ...]
    values: dict[str, dict[str, str]] = field(repr=False)
    curves: dict[str, list[dict[str, float]]] = field(repr=False)

    @property
    def epochs(self) -> int:
        """The epochs every recorded trial has."""
        return min(len(c) for c in self.curves.values())


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ReplayError(f"{where}: '{text}' is not a number") from None


def read_table(path: str, value_columns: tuple[str, ...] = ()) -> ReplayTable:
    """The table at ``path``: columns ``trial_id``, ``epoch``, the metrics (numbers), and ``value_columns`` (the
    searched keys, kept as text); every other column is a metric. Each trial's epochs must run 1, 2, ... N.

    Raises:
        ReplayError: unreadable file, missing ``trial_id``/``epoch`` column, a metric that is not a number.
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = tuple(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReplayError(f"{path}: cannot be read as a CSV table ({exc})") from None
    missing = [c for c in (ID, EPOCH) if c not in columns]
    if missing or not rows:
        raise ReplayError(f"{path}: not a replay table (" + (f"no {', '.join(missing)} column" if missing else
                                                               "no rows") + "; benchmarks/replay_table.py writes one)")
    metrics = tuple(c for c in columns if c not in (ID, EPOCH, *value_columns))
    values: dict[str, dict[str, str]] = {}
    curves: dict[str, list[dict[str, float]]] = {}
    for line, row in enumerate(rows, 2):
        tid = row[ID]
        values.setdefault(tid, {c: row.get(c) or "" for c in value_columns if c in row})
        curve = curves.setdefault(tid, [])
        epoch = _number(row[EPOCH], f"{path}:{line}: epoch")
        if epoch != len(curve) + 1:
            raise ReplayError(f"{path}:{line}: trial {tid} epoch {row[EPOCH]} follows epoch {len(curve)} "
                              "(each trial's rows must run epoch 1, 2, ...)")
        curve.append({m: _number(row[m], f"{path}:{line}: {m}") for m in metrics})
    return ReplayTable(str(path), columns, metrics, values, curves)


def distance(params: tuple[ReplayParam, ...], config: dict[str, Any], recorded: dict[str, str]) -> float:
    """How far a trial's ``config`` is from a recorded trial's values (see the module's docstring)."""
    total = 0.0
    for p in params:
        mine, theirs = config.get(p.name), recorded.get(p.name, "")
        if mine is None or theirs == "":
            continue  # inactive in one of them: the parent's mismatch counts instead
        if p.kind == "choice":
            total += 0.0 if str(mine) == theirs else 1.0
        else:
            total += (p.coordinate(mine) - p.coordinate(theirs)) ** 2
    return math.sqrt(total)


def nearest(table: ReplayTable, params: tuple[ReplayParam, ...], config: dict[str, Any]) -> tuple[str, float]:
    """``(recorded trial id, its distance)`` of the recorded trial nearest to ``config`` (the first on a tie)."""
    best, best_d = "", math.inf
    for tid, recorded in table.values.items():
        d = distance(params, config, recorded)
        if d < best_d:
            best, best_d = tid, d
    return best, best_d


@dataclass(frozen=True)
class ReplaySetup:
    """What every replayed trial is handed (pickled once through Ray's object store)."""

    table: ReplayTable
    params: tuple[ReplayParam, ...]
    epochs: int  # train.epochs of the sweep (a searched ``epochs`` overrides it per trial)
    metric: str
    mode: str  # max | min
    trial_dir_root: str  # Tune's experiment directory (trial_<id>/checkpoint_* under it)


def epoch_result(setup: ReplaySetup, source: str, d: float, epoch: int, epochs: int) -> dict[str, Any]:
    """What the replayed trial reports for ``epoch``: the recorded epoch's metrics and the keys a training trial
    adds (``run_complete``, best so far), with where they came from."""
    curve = setup.table.curves[source][:epoch]
    values = [row[setup.metric] for row in curve]
    best = values.index(max(values) if setup.mode == "max" else min(values))  # the first best epoch
    return {**curve[-1], "epoch": epoch, "run_complete": epoch == epochs, "early_stopped": False,
            "best_metric": values[best], "best_epoch": best + 1, "replay_of": source,
            "replay_distance": d}


def _saved_epoch(directory: str) -> int:
    try:
        return int(json.loads((Path(directory) / _STATE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _resume_epoch(setup: ReplaySetup, trial_id: str) -> int:
    """The newest epoch this trial checkpointed: Tune's checkpoint, or a newer one beside it in the trial's
    directory (Tune's saved state may be a few seconds older than the trial's files after a driver kill)."""
    from ray import tune  # in the trial only: the sweep driver imports this module without starting a trial

    found = [_saved_epoch(str(p)) for p in Path(f"{setup.trial_dir_root}/trial_{trial_id}").glob("checkpoint_*")]
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as directory:
            found.append(_saved_epoch(directory))
    return max(found, default=0)


def replay_fn(config: dict, setup: ReplaySetup) -> None:
    """The Tune trial: report the nearest recorded trial's epochs, one per step, each with a tiny checkpoint."""
    from ray import tune  # in the trial only (see _resume_epoch)

    epochs = int(config.get("epochs", setup.epochs))
    source, d = nearest(setup.table, setup.params, config)
    done = _resume_epoch(setup, tune.get_context().get_trial_id())
    if done:  # a driver killed after this checkpoint may never have recorded the epoch: report it again
        tune.report(dict(epoch_result(setup, source, d, done, epochs), replayed=True))
    for epoch in range(done + 1, epochs + 1):
        state = tempfile.mkdtemp(prefix=f"ternsearch-replay-e{epoch}-")
        try:
            (Path(state) / _STATE).write_text(json.dumps({"epoch": epoch, "replay_of": source}))
            tune.report(epoch_result(setup, source, d, epoch, epochs),
                        checkpoint=tune.Checkpoint.from_directory(state))
        finally:
            shutil.rmtree(state, ignore_errors=True)
