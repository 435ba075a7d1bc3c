"""The report's parameter importance (Optuna, from the trial table); the trials' MLflow runs are found by
``ternsearch.tracking.links``."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from ternsearch.report.data import FINISHED, PARAM_PREFIX, Results, infer_param
from ternsearch.spec.space import distribution

__all__ = ["Importance", "importances", "METHODS"]

METHODS = {"fanova": "fANOVA", "mdi": "mean decrease impurity"}


@dataclass(frozen=True)
class Importance:
    """Normalized importances (sum 1, largest first) of the parameters assessed; ``excluded`` says why the
    others were not; ``message`` explains an empty result."""

    method: str
    values: dict
    n_trials: int
    excluded: dict = field(default_factory=dict)
    message: str = ""


def _contains(dist, v: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(v)))
    except (ValueError, TypeError):
        return False


def _value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def importances(results: Results, table: pd.DataFrame, method: Literal["fanova", "mdi"] = "fanova",
                seed: int = 0) -> Importance:
    """How much each searched parameter explains the final metric, by Optuna's fANOVA (default) or
    mean-decrease-impurity evaluator over an in-memory study of the finished trials.

    Completed and ASHA-stopped trials count, each with its last reported value (what the searcher and ASHA
    compared); failed trials do not. These evaluators only assess parameters every counted trial has, so a
    conditional parameter switched off in some trials is listed in ``excluded``, as is one with one value.
    """
    # optuna takes about a second to import: only when a report assesses importance
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    name = METHODS[method]
    col = f"final_{results.metric}"
    done = table[table["status"].isin(FINISHED) & table[col].notna()]
    n = len(done)
    if n < 2:
        return Importance(name, {}, n, message=f"needs at least 2 finished trials with {results.metric} "
                                               f"(this sweep has {n})")
    rows = [{p.name: _value(r[PARAM_PREFIX + p.name]) for p in results.params} for _, r in done.iterrows()]
    excluded, assessed, dists = _assessable(results.params, rows, n)
    if not assessed:
        return Importance(name, {}, n, excluded, "no parameter varies across all finished trials")
    values = done[col].astype(float).tolist()
    if max(values) == min(values):
        return Importance(name, {}, n, excluded, f"every finished trial has the same {results.metric}")
    study = _study("maximize" if results.maximize else "minimize", rows, values, dists)
    evaluator = (FanovaImportanceEvaluator if method == "fanova" else MeanDecreaseImpurityImportanceEvaluator)(
        seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Sorted: Optuna 5.0's MDI evaluator orders its columns by name but labels them in the order of
            # ``params``, so any other order mislabels the importances (fANOVA labels them correctly).
            result = optuna.importance.get_param_importances(study, evaluator=evaluator, params=sorted(assessed))
    except Exception as exc:  # noqa: BLE001 - a report must not fail over one figure
        return Importance(name, {}, n, excluded, f"{name} failed: {type(exc).__name__}: {exc}")
    total = sum(result.values())
    if not total or not math.isfinite(total):
        return Importance(name, {}, n, excluded, f"{name} found no effect of any parameter")
    return Importance(name, {k: float(v) / float(total) for k, v in result.items()}, n, excluded)


def _assessable(params, rows: list[dict], n: int) -> tuple[dict, list, dict]:
    """(excluded with why, the parameters to assess, each one's distribution) over ``n`` finished trials."""
    excluded, assessed, dists = {}, [], {}
    for p in params:
        seen = [r[p.name] for r in rows if r[p.name] is not None]
        dist = distribution(p)
        if not all(_contains(dist, v) for v in seen):  # the spec changed since the sweep: use what was seen
            dist = distribution(infer_param(p.name, seen))
        dists[p.name] = dist
        if len(seen) < n:
            excluded[p.name] = f"conditional: set in {len(seen)} of {n} trials"
        elif len({repr(v) for v in seen}) < 2:
            excluded[p.name] = "one value in every trial"
        else:
            assessed.append(p.name)
    return excluded, assessed, dists


def _study(direction: str, rows: list[dict], values: list[float], dists: dict):
    """An in-memory Optuna study holding the finished trials (a parameter a trial did not set is left out)."""
    import optuna  # as in importances

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials([optuna.trial.create_trial(
        params={k: v for k, v in r.items() if v is not None},
        distributions={k: dists[k] for k, v in r.items() if v is not None}, value=v)
        for r, v in zip(rows, values)])
    return study
