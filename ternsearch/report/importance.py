"""The report's parameter importance (Optuna, from the trial table) and the trials' MLflow runs."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pandas as pd

from ternsearch.report.data import _FINISHED, PARAM_PREFIX, Results, infer_param
from ternsearch.spec.sweepfile import Param

__all__ = ["Importance", "importances", "RunLinks", "mlflow_links", "METHODS"]

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


def _distribution(p: Param):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "choice":
        return CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
    return FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.kind == "loguniform" or p.log)


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
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator

    name = METHODS[method]
    col = f"final_{results.metric}"
    done = table[table["status"].isin(_FINISHED) & table[col].notna()]
    n = len(done)
    if n < 2:
        return Importance(name, {}, n, message=f"needs at least 2 finished trials with {results.metric} "
                                               f"(this sweep has {n})")
    rows = [{p.name: _value(r[PARAM_PREFIX + p.name]) for p in results.params} for _, r in done.iterrows()]
    excluded, assessed, dists = {}, [], {}
    for p in results.params:
        seen = [r[p.name] for r in rows if r[p.name] is not None]
        dist = _distribution(p)
        if not all(_contains(dist, v) for v in seen):  # the spec changed since the sweep: use what was seen
            dist = _distribution(infer_param(p.name, seen))
        dists[p.name] = dist
        if len(seen) < n:
            excluded[p.name] = f"conditional: set in {len(seen)} of {n} trials"
        elif len({repr(v) for v in seen}) < 2:
            excluded[p.name] = "one value in every trial"
        else:
            assessed.append(p.name)
    if not assessed:
        return Importance(name, {}, n, excluded, "no parameter varies across all finished trials")
    values = done[col].astype(float).tolist()
    if max(values) == min(values):
        return Importance(name, {}, n, excluded, f"every finished trial has the same {results.metric}")
    direction = "maximize" if results.maximize else "minimize"
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


# ------------------------------------------------------------------------------------------------ MLflow runs
@dataclass(frozen=True)
class RunLinks:
    """The sweep's MLflow runs: ``runs`` maps trial id to run id; ``base`` is the UI's address (the server
    itself for an http store, ``mlflow ui``'s default address for a SQLite one, which ``command`` starts)."""

    uri: Optional[str] = None
    experiment_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    runs: dict = field(default_factory=dict)
    base: Optional[str] = None
    command: Optional[str] = None
    error: Optional[str] = None

    def url(self, run_id: Optional[str]) -> Optional[str]:
        if not (self.base and self.experiment_id and run_id):
            return None
        return f"{self.base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"


UI_PORT = 5000


def _store(results: Results) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(uri to query, UI base address, command that opens the UI); a SQLite store moved with its results
    directory is found there."""
    from ternsearch.tracking.store import _sqlite_path, _sqlite_uri

    uri = results.meta.get("tracking_uri")
    if not uri:
        return None, None, None
    path = _sqlite_path(uri)
    if path is not None:
        if not path.expanduser().is_file() and (results.path / "mlflow.db").is_file():
            uri = _sqlite_uri((results.path / "mlflow.db").resolve())
            path = _sqlite_path(uri)
        if not path.expanduser().is_file():
            return None, None, None
        cmd = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"
        return uri, f"http://127.0.0.1:{UI_PORT}", cmd
    if uri.startswith(("http://", "https://")):
        return uri, uri, None
    return uri, None, None


def mlflow_links(results: Results) -> RunLinks:
    """Find each trial's child run (tag ``ternsearch.trial_id`` under the sweep's parent run). Never raises:
    an unreachable or missing store gives a RunLinks without runs and the reason in ``error``."""
    from ternsearch.tracking.store import TAG, _one_line, _quote, _redact, _search_all, brief_http, check_reachable

    parent = results.meta.get("parent_run_id")
    uri, base, command = _store(results)
    if not uri or not parent:
        return RunLinks(uri=uri, parent_run_id=parent, error="no MLflow store recorded for this sweep")
    try:
        check_reachable(uri)  # an http store that is down fails here within seconds
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        with brief_http():
            exp_id = client.get_run(parent).info.experiment_id
            runs = _search_all(client, exp_id, f"tags.`{TAG['parent']}` = {_quote(parent)}")
        by_trial = {}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
            tid = run.data.tags.get(TAG["trial_id"])
            if tid:
                by_trial[tid] = run.info.run_id  # the earliest run of a trial wins, as in tracking
    except Exception as exc:  # noqa: BLE001 - the report still renders without links
        return RunLinks(uri=uri, parent_run_id=parent, base=base, command=command,
                        error=f"{_redact(uri)}: {type(exc).__name__}: {_one_line(exc)}")
    return RunLinks(uri=uri, experiment_id=exp_id, parent_run_id=parent, runs=by_trial, base=base, command=command)
