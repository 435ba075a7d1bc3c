"""The numbers behind the sweep report, computed from a results directory; ``ternsearch.report.render`` only
draws them.

Everything here reads the sweep's own records (``sweep.json``, ``trials.json``, ``history.jsonl`` through
``ternsearch.results.recorder``), never Tune's internal files, and is tested on its own (Optuna's visualization
keeps the same split: an info layer that tests target, then plotly). Parameter importance is in
``ternsearch.report.importance``, the trials' MLflow runs in ``ternsearch.tracking.links``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pandas as pd
from trainables.failures import failure_reason

from ternsearch.errors import SpecError
from ternsearch.numbers import fmt_number, is_number
from ternsearch.results.best import pareto_front
from ternsearch.results.export import load_results_meta, read_trials_or_rebuild
from ternsearch.results.files import read_history
from ternsearch.spec import Param, load_spec
from ternsearch.spec.space import ordered

__all__ = ["Results", "Curve", "load_results", "trial_table", "best_so_far", "optimization_history",
           "learning_curves", "pareto_front", "sparsity_tradeoff", "layer_sparsity", "parallel_dimensions",
           "trial_label", "print_warning", "PARAM_PREFIX", "FINISHED"]

PARAM_PREFIX = "params_"  # trial-table columns of searched values, as in Optuna's study.trials_dataframe()
FINISHED = ("completed", "stopped")  # trials whose last metric is a real result (failed ones may hold a sentinel)


@dataclass(frozen=True)
class Results:
    """One sweep's records: ``meta`` (sweep.json), ``trials`` (trials.json), ``history`` (one row per epoch)."""

    path: Path
    meta: dict
    trials: dict
    history: list
    params: tuple  # Param of every searched parameter, parents first

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def maximize(self) -> bool:
        return self.meta.get("mode", "max") == "max"


def print_warning(message: str) -> None:
    print(message, file=sys.stderr)


def infer_param(name: str, seen: Sequence[Any]) -> Param:
    """A Param guessed from the values a parameter took (when spec.yaml is gone, unreadable or changed)."""
    seen = [v for v in seen if v is not None]
    if seen and all(is_number(v) for v in seen):
        return Param(name, "uniform", low=min(seen), high=max(seen))
    return Param(name, "choice", choices=tuple(dict.fromkeys(seen)))


def load_results(results_dir: str | Path, warn: Optional[Callable[[str], None]] = print_warning) -> Results:
    """Read a results directory (``ResultsError`` if it is not one, ``RecordError`` naming a record that is torn
    or hand-edited). A torn trials.json is rebuilt from history.jsonl and Tune's state (one warning line on
    stderr), a torn last line of history.jsonl skipped (``warn`` told); any other history line that is not a record
    is an error naming its file and line."""
    path = Path(results_dir)
    meta = load_results_meta(path)
    trials = read_trials_or_rebuild(path)
    history = [r for r in read_history(path, warn=warn) if r.get("trial_id") in trials]
    names = list(meta.get("params") or [])
    try:
        params = tuple(ordered(load_spec(path / "spec.yaml").params))
    except (SpecError, OSError):
        params = tuple(infer_param(n, [t.get("config", {}).get(n) for t in trials.values()]) for n in names)
    return Results(path=path, meta=meta, trials=trials, history=history, params=params)


def trial_label(number: Any) -> str:
    """``t003``: the trial's number (order of start, from 0)."""
    return f"t{int(number):03d}" if is_number(number) else "t?"


def _epochs_of(results: Results) -> dict[str, list[dict]]:
    """Each trial's per-epoch rows, without the marker row a failed trial reports (its metric is a
    sentinel worst value, not a measurement)."""
    rows: dict[str, list[dict]] = {tid: [] for tid in results.trials}
    for row in results.history:
        if not failure_reason(row):
            rows[row["trial_id"]].append(row)
    for tid in rows:
        rows[tid].sort(key=lambda r: r.get("epoch", 0))
    return rows


def trial_table(results: Results) -> pd.DataFrame:
    """One row per trial, ordered by trial number: searched values (``params_<name>``), status and reason,
    epochs run, final and best metric, final sparsity, wall time, node. ``rank`` orders trials like the sweep
    picks its best (completed trials first, then by the final metric); failed trials get no rank."""
    metric, rows = results.metric, []
    per_trial = _epochs_of(results)
    started = results.meta.get("started")
    for tid, t in results.trials.items():
        epochs = per_trial[tid]
        last = epochs[-1] if epochs else ({} if failure_reason(t.get("last", {})) else t.get("last", {}))
        values = [(r[metric], r.get("epoch")) for r in epochs if is_number(r.get(metric))]
        best = (max if results.maximize else min)(values, key=lambda x: x[0]) if values else (None, None)
        ended = t.get("ended") or (epochs[-1].get("time") if epochs else None)
        row = {
            "number": t.get("number"), "trial": trial_label(t.get("number")), "trial_id": tid,
            "status": t.get("status"), "reason": t.get("reason") or "", "epochs": t.get("epochs", len(epochs)),
            "stop_epoch": t.get("epochs") if t.get("status") == "stopped" else None,
            f"final_{metric}": last.get(metric) if is_number(last.get(metric)) else None,
            f"best_{metric}": best[0], "best_epoch": best[1],
            "ternary_zero_frac": last.get("ternary_zero_frac"),
            "wall_seconds": t.get("wall_seconds"),
            "ended_after_s": ended - started if is_number(ended) and is_number(started) else None,
            "node_id": t.get("node_id"), "hostname": t.get("hostname"),
        }
        for p in results.params:
            row[PARAM_PREFIX + p.name] = t.get("config", {}).get(p.name)
        rows.append(row)
    cols = ["number", "trial", "trial_id", "status", "reason", "epochs", "stop_epoch", f"final_{metric}",
            f"best_{metric}", "best_epoch", "ternary_zero_frac", "wall_seconds", "ended_after_s", "node_id",
            "hostname"] + [PARAM_PREFIX + p.name for p in results.params]
    table = pd.DataFrame(rows, columns=cols)
    for col in ("number", "epochs", "stop_epoch", "best_epoch"):
        table[col] = table[col].astype("Int64")
    for col in (f"final_{metric}", f"best_{metric}", "ternary_zero_frac", "wall_seconds", "ended_after_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    table = table.sort_values("number", kind="stable").reset_index(drop=True)
    table.insert(2, "rank", _ranks(table, f"final_{metric}", results.maximize))
    return table


def _ranks(table: pd.DataFrame, col: str, maximize: bool) -> pd.Series:
    ok = table[table["status"].isin(FINISHED) & table[col].notna()]
    order = ok.assign(_done=(ok["status"] != "completed").astype(int),
                      _v=-ok[col] if maximize else ok[col]).sort_values(["_done", "_v", "number"], kind="stable")
    ranks = pd.Series(pd.NA, index=table.index, dtype="Int64")
    ranks[order.index] = range(1, len(order) + 1)
    return ranks


def best_so_far(values: Sequence[Optional[float]], maximize: bool = True) -> list[float]:
    """The running best of ``values`` (NaN until the first finite value; NaN and None are skipped)."""
    out, best = [], math.nan
    for v in values:
        if v is not None and is_number(float(v)):
            best = v if math.isnan(best) else (max(best, v) if maximize else min(best, v))
        out.append(float(best))
    return out


def optimization_history(table: pd.DataFrame, metric: str, maximize: bool) -> pd.DataFrame:
    """Finished trials' final values with the best so far in trial order (``best_by_number``) and in the order
    their results arrived (``best_by_time``, against ``minutes`` since the sweep started)."""
    col = f"final_{metric}"
    h = table[table["status"].isin(FINISHED) & table[col].notna()]
    h = h[["number", "trial", "status", col, "ended_after_s"]].rename(columns={col: "value"}).copy()
    h["minutes"] = h["ended_after_s"] / 60.0
    h = h.sort_values("number", kind="stable")
    h["best_by_number"] = best_so_far(h["value"].tolist(), maximize)
    by_time = h.sort_values("minutes", kind="stable")
    h.loc[by_time.index, "best_by_time"] = best_so_far(by_time["value"].tolist(), maximize)
    return h.drop(columns="ended_after_s").reset_index(drop=True)


@dataclass(frozen=True)
class Curve:
    """One trial's metric per epoch; ``cut_epoch`` is where ASHA stopped it or it failed (None if it ran out)."""

    trial_id: str
    number: Optional[int]
    status: str
    reason: str
    epochs: tuple
    values: tuple
    cut_epoch: Optional[int]

    @property
    def label(self) -> str:
        return trial_label(self.number)


def learning_curves(results: Results, metric: Optional[str] = None) -> list[Curve]:
    """Every trial's ``metric`` (default: the sweep's) against epoch, in trial order."""
    metric = metric or results.metric
    per_trial = _epochs_of(results)
    curves = []
    for tid, t in sorted(results.trials.items(), key=lambda kv: (kv[1].get("number") is None, kv[1].get("number"))):
        pts = [(int(r["epoch"]), float(r[metric])) for r in per_trial[tid] if is_number(r.get(metric))
               and is_number(r.get("epoch"))]
        cut = t.get("epochs") if t.get("status") in ("stopped", "failed") else None
        curves.append(Curve(tid, t.get("number"), t.get("status", "running"), t.get("reason") or "",
                            tuple(e for e, _ in pts), tuple(v for _, v in pts), cut))
    return curves


def sparsity_tradeoff(table: pd.DataFrame, metric: str, maximize: bool) -> pd.DataFrame:
    """Finished trials' final metric against their final ternary sparsity, ``on_front`` marking the Pareto
    front (better metric, more zeros) of the completed trials. An ASHA-stopped trial's numbers are from an
    earlier epoch than the others': it is shown, never on the front."""
    col = f"final_{metric}"
    s = table[table["status"].isin(FINISHED) & table[col].notna() & table["ternary_zero_frac"].notna()]
    s = s[["number", "trial", "status", "ternary_zero_frac", col]].rename(columns={col: "value"})
    s = s.reset_index(drop=True)
    done = s[s["status"] == "completed"]
    front = pareto_front(list(zip(done["ternary_zero_frac"], done["value"])), maximize=(True, maximize))
    s["on_front"] = s.index.isin(done.index[front])
    return s


def layer_sparsity(results: Results, trial_id: str) -> pd.DataFrame:
    """The fractions of -1, 0 and +1 weights and the scale of each ternary layer (network order) at the
    trial's last epoch; empty when the trial logged no per-layer statistics."""
    rows = _epochs_of(results).get(trial_id) or []
    last = rows[-1] if rows else {}
    layers: dict[str, dict] = {}
    for key, value in last.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "ternary" and is_number(value):
            layers.setdefault(parts[1], {})[parts[2]] = float(value)
    cols = ["neg_frac", "zero_frac", "pos_frac", "scale"]
    return pd.DataFrame([{**{c: v.get(c, math.nan) for c in cols}, "layer": k} for k, v in layers.items()],
                        columns=["layer"] + cols)


def _axis(p: Param, raw: list) -> dict:
    """One parallel-coordinates axis: category codes with their names, or numbers (log10 for log params).
    A trial without the parameter (a condition switched it off) sits on an ``n/a`` tick below the others."""
    present = [v for v in raw if v is not None]
    missing = len(present) < len(raw)
    if p.kind == "choice" or not all(is_number(v) for v in present):
        cats = list(p.choices) + [v for v in dict.fromkeys(present) if v not in p.choices]
        codes = {c: i for i, c in enumerate(cats)}
        values = [codes[v] if v is not None else -1 for v in raw]
        tickvals, ticktext = list(range(len(cats))), [fmt_number(c, 3) for c in cats]
    else:
        log = p.kind == "loguniform" or p.log
        lo = float(p.low) if is_number(p.low) else min(present, default=0.0)
        hi = float(p.high) if is_number(p.high) else max(present, default=1.0)
        f = (lambda x: math.log10(x)) if log and lo > 0 else float
        a, b = f(lo), f(hi)
        values = [f(v) if v is not None else None for v in raw]
        ticks = [a + (b - a) * k / 4 for k in range(5)] if b > a else [a]
        tickvals, ticktext = ticks, [fmt_number(10 ** t if f is not float else t, 3) for t in ticks]
        na = a - 0.15 * (b - a or 1.0)
        values = [na if v is None else v for v in values]
        if missing:
            tickvals, ticktext = [na] + tickvals, ["n/a"] + ticktext
        return {"label": p.name, "values": values, "tickvals": tickvals, "ticktext": ticktext,
                "range": [na if missing else a, b if b > a else a + 1]}
    if missing:
        tickvals, ticktext = [-1] + tickvals, ["n/a"] + ticktext
    lo = -1 if missing else 0
    return {"label": p.name, "values": values, "tickvals": tickvals, "ticktext": ticktext,
            "range": [lo, max(len(cats) - 1, lo + 1)]}


def parallel_dimensions(results: Results, table: pd.DataFrame) -> dict:
    """Axes for a parallel-coordinates plot of finished trials: one per searched parameter any of them has,
    then the metric.
    Returns ``{"dimensions": [...], "color": [metric...], "trials": [label...]}``."""
    col = f"final_{results.metric}"
    done = table[table["status"].isin(FINISHED) & table[col].notna()]
    columns = [(p, [None if pd.isna(v) else v for v in done[PARAM_PREFIX + p.name].tolist()]) for p in results.params]
    # a parameter no finished trial has (its condition never held there) would be an axis of n/a only
    dims = [_axis(p, raw) for p, raw in columns if any(v is not None for v in raw)]
    values = done[col].astype(float).tolist()
    dims.append({"label": results.metric, "values": values})
    return {"dimensions": dims, "color": values, "trials": done["trial"].tolist()}
