"""Loading sweep and train files: the YAML checked against the models, the ``search:`` parameters, then the
checks that span the whole file (objectives, scheduler, resources, tracking). File-only: no Ray, no MLflow, no
data access."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from ternsearch.numbers import is_int, is_number
from ternsearch.spec.models import Param, SweepSpec, TrackingConfig, TrainFile, _SweepModel, largest_epochs
from ternsearch.spec.params import EXAMPLE, check_conditions, check_values, parse_param
from ternsearch.spec.runcheck import check_full_precision, check_run
from ternsearch.spec.uris import check_storage_path, check_tracking_uri
from ternsearch.spec.yamlsrc import Located, did_you_mean, load_located, show

__all__ = ["load_spec", "load_train_file"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SWEEP_ONLY = ("search", "searcher", "scheduler", "resources", "storage", "failure")


def _fixed_keys(doc: _SweepModel) -> set[str]:
    fixed = set(doc.train.model_fields_set)
    fixed |= {f"model.{k}" for k in doc.model.model_fields_set}
    fixed |= {f"data.{k}" for k in doc.data.model_fields_set}
    return fixed


def _check_name(loc: Located, name: str) -> None:
    if not _NAME_RE.match(name):
        raise loc.error(("name",), f"{show(name)} is not a valid name (up to 100 letters, digits, '.', '_' and "
                                   "'-', starting with a letter or digit: it names directories and runs)")


def _check_sweep_keys_need_search(loc: Located) -> None:
    """A file with searcher:/scheduler:/... but no search: is a broken sweep, whichever command reads it."""
    keys = [k for k in _SWEEP_ONLY if k in loc.data]
    typo = any(did_you_mean(k, ["search"]) for k in loc.data if k not in _SweepModel.model_fields)
    if keys and "search" not in loc.data and not typo:  # a misspelt search: is reported as an unknown key
        raise loc.error((keys[0],), f"is a sweep setting, but the file has no search: (add search: with at least "
                                    f"one distribution, {EXAMPLE}; or remove {keys[0]}: to make a train file)")


def load_spec(path: str | Path) -> SweepSpec:
    """Load and validate a sweep file (file-only checks: no Ray, no MLflow, no data access).

    Raises:
        SpecError: the first problem found, as ``FILE:LINE: key: what is wrong (what is allowed)``.
    """
    loc = load_located(path)
    _check_sweep_keys_need_search(loc)
    doc: _SweepModel = loc.validate(_SweepModel)  # type: ignore[assignment]
    _check_name(loc, doc.name)
    if "search" not in loc.data:
        raise loc.error(("search",), f"required key is missing (a sweep searches at least one distribution, "
                                     f"{EXAMPLE}; a file without search: is a train file for `ternsearch train`)")
    if not doc.search:
        raise loc.error(("search",), f"is empty (add at least one distribution, {EXAMPLE})")
    _check_objectives(loc, doc)  # before anything reads the primary objective
    fixed = _fixed_keys(doc)
    params = [parse_param(loc, str(name), raw, fixed) for name, raw in doc.search.items()]
    check_conditions(loc, params)
    reference = check_run(loc, doc.base_config(), params)
    check_values(loc, params, reference)
    _check_sweep(loc, doc, params)
    check_full_precision(loc, doc.model.arch, doc.model.full_precision_layers)
    doc = _grid_samples(loc, doc, params)
    return SweepSpec(file=str(path), doc=doc, params=tuple(params), located=loc)


def _grid_samples(loc: Located, doc: _SweepModel, params: list[Param]) -> _SweepModel:
    """A grid searcher runs each point of its grid once: num_samples, when given, must say how many there are."""
    if doc.searcher.algorithm != "grid":
        return doc
    if any(p.when for p in params):
        p = next(p for p in params if p.when)
        raise loc.error(("search", p.name, "when"), "the grid searcher runs every combination of the choices, so "
                        "conditions do not apply (use searcher.algorithm: tpe or random, or remove when:)")
    points = math.prod(len(p.choices) for p in params)
    if "num_samples" not in doc.searcher.model_fields_set:
        return doc.model_copy(update={"searcher": doc.searcher.model_copy(update={"num_samples": points})})
    if doc.searcher.num_samples != points:
        raise loc.error(("searcher", "num_samples"), f"{doc.searcher.num_samples} trials, but the grid has {points} "
                        f"points (the grid searcher runs each point once: set num_samples: {points} or leave it out)")
    return doc


def _check_objectives(loc: Located, doc: _SweepModel) -> None:
    objectives = doc.objectives()
    names = [m.name for m in objectives]
    if isinstance(doc.metric, list):
        if not 2 <= len(names) <= 3:
            raise loc.error(("metric",), f"lists {len(names)} objectives (a list takes 2 or 3; give one "
                            "objective as a mapping: {name: val_acc, mode: max})")
        for i, name in enumerate(names):
            if name in names[:i]:
                raise loc.error(("metric", i, "name"), f"'{name}' is listed twice (each objective once)")
    sched = doc.scheduler
    allowed = ", ".join(names)
    if sched.metric is not None and sched.metric not in names:
        raise loc.error(("scheduler", "metric"), f"'{sched.metric}' is not an objective (choose from: {allowed})")
    if len(names) > 1 and sched.algorithm == "asha" and sched.metric is None:
        raise loc.error(("scheduler", "algorithm"), f"asha stops trials on one metric, but metric: lists "
                        f"{len(names)} objectives (set scheduler.metric to one of: {allowed}; or use "
                        "scheduler.algorithm: fifo)")
    if len(names) == 1 and doc.searcher.algorithm == "nsga2":
        raise loc.error(("searcher", "algorithm"), "nsga2 is a multi-objective searcher, but metric: names one "
                        "objective (list 2 or 3 under metric:, or use tpe)")


def _check_stopping(loc: Located, doc: _SweepModel) -> None:
    searcher = doc.searcher
    if searcher.time_budget is not None and searcher.time_budget_s is None:
        raise loc.error(("searcher", "time_budget"), f"{show(searcher.time_budget)} is not a duration (a positive "
                        "number of seconds, or one with s, m, h or d: 90s, 30m, 2h, 1d)")
    names = [m.name for m in doc.objectives()]
    for key in searcher.stop_at:
        if key not in names:
            raise loc.error(("searcher", "stop_at", key), f"'{key}' is not an objective (stop_at takes objectives "
                            f"and the value one trial must reach: {names[0]}: 0.9; choose from: {', '.join(names)})")


def _in_distribution(p: Param, v) -> bool:
    if p.kind == "choice":
        return any(v == c and type(v) is type(c) or (is_number(v) and is_number(c) and v == c) for c in p.choices)
    if not is_number(v) or (p.kind == "int" and not is_int(v)):
        return False
    return p.low <= v <= p.high


def _check_points(loc: Located, doc: _SweepModel, params: list[Param]) -> None:
    """searcher.points: searched parameters only, each value one its distribution can propose."""
    by_name = {p.name: p for p in params}
    points = doc.searcher.points
    if len(points) > doc.searcher.num_samples:
        raise loc.error(("searcher", "points"), f"{len(points)} points, but num_samples is "
                        f"{doc.searcher.num_samples} (the points run as the first trials)")
    for i, point in enumerate(points):
        for key, value in point.items():
            p = by_name.get(str(key))
            if p is None:
                raise loc.error(("searcher", "points", i, key), f"'{key}' is not a searched parameter (choose from: "
                                f"{', '.join(by_name)})")
            if not _in_distribution(p, value):
                raise loc.error(("searcher", "points", i, key), f"{show(value)} is not a value {key} is searched "
                                f"over ({p.describe()})")


def _check_sweep(loc: Located, doc: _SweepModel, params: list[Param]) -> None:
    _check_stopping(loc, doc)
    _check_points(loc, doc, params)
    by_name = {p.name: p for p in params}
    max_epochs = largest_epochs(doc.train.epochs, params)
    if doc.scheduler.algorithm == "asha" and doc.scheduler.grace_period > max_epochs:
        what = "train.epochs" if "epochs" not in by_name else "the largest searched epochs"
        raise loc.error(("scheduler", "grace_period"), f"{doc.scheduler.grace_period} is more than the "
                        f"{max_epochs} epochs a trial runs (grace_period must be <= {what})")
    _check_batch_split(loc, doc, by_name.get("batch_size"))
    _check_val_split(loc, doc, by_name.get("data.val_fraction"))
    if doc.searcher.algorithm == "grid":
        for p in params:
            if p.kind != "choice":
                raise loc.error(("search", p.name, p.kind), f"{p.kind} is not a list of values (the grid searcher "
                                "takes choice distributions only; use searcher.algorithm: tpe or random for ranges)")
    res = doc.resources
    if res.gpus_per_worker > 1:
        # The loop trains one model replica on one device; a worker holding 2 GPUs would use one (or, picking
        # cuda:LOCAL_RANK from a shared device list, collide with its neighbour's). DDP is one worker per GPU.
        raise loc.error(("resources", "gpus_per_worker"), f"{res.gpus_per_worker:g} GPUs per worker, but a worker "
                        f"trains on one GPU (for DDP over {res.gpus_per_worker:g} GPUs use workers_per_trial: "
                        f"{math.ceil(res.gpus_per_worker)} with gpus_per_worker: 1)")
    if res.workers_per_trial > 1 and res.gpus_per_worker % 1:
        raise loc.error(("resources", "gpus_per_worker"), f"{res.gpus_per_worker:g} is a fraction of a GPU, but "
                        f"workers_per_trial is {res.workers_per_trial} (DDP ranks need whole GPUs: 1, 2, ...)")
    if res.workers_per_trial > 1 and res.trainer == "function":
        raise loc.error(("resources", "trainer"), f"'function' runs one worker, but workers_per_trial is "
                        f"{res.workers_per_trial} (use auto or torchtrainer)")
    _check_tracking_uri(loc, doc.tracking)
    problem = check_storage_path(doc.storage.path)
    if problem:
        raise loc.error(("storage", "path"), f"{show(doc.storage.path)} {problem}")


def _check_batch_split(loc: Located, doc: _SweepModel, searched: Optional[Param]) -> None:
    """Each of the DDP workers takes batch_size / workers_per_trial images: every batch size must divide."""
    w = doc.resources.workers_per_trial
    allowed = f"use a multiple of {w}: each worker takes batch_size / workers_per_trial images"
    if searched is None:
        if doc.train.batch_size % w:
            raise loc.error(("train", "batch_size"), f"{doc.train.batch_size} is not divisible by "
                                                     f"resources.workers_per_trial ({w}) ({allowed})")
    elif searched.kind == "choice":
        for i, bs in enumerate(searched.choices):
            if bs % w:
                raise loc.error(("search", "batch_size", "choice", i), f"{bs} is not divisible by "
                                f"resources.workers_per_trial ({w}) ({allowed})")
    elif w > 1 and (searched.low % w or (searched.step or 1) % w):
        raise loc.error(("search", "batch_size", searched.kind), f"the range holds batch sizes not divisible by "
                        f"resources.workers_per_trial ({w}) (low and step must be multiples of {w}, or use a choice)")


def _check_val_split(loc: Located, doc: _SweepModel, searched: Optional[Param]) -> None:
    """A sweep compares trials on held-out images: val_fraction 0 (a train file's full retraining) is refused."""
    allowed = ("a sweep compares trials on a validation split: use a value > 0 and < 1; val_fraction 0 is for "
               "train files, such as the full retraining `ternsearch export` writes")
    if searched is None:
        if doc.data.val_fraction == 0:
            raise loc.error(("data", "val_fraction"), f"0 holds out no validation images ({allowed})")
    elif searched.kind == "choice":
        for i, value in enumerate(searched.choices):
            if value == 0:
                raise loc.error(("search", "data.val_fraction", "choice", i),
                                f"{show(value)} holds out no validation images ({allowed})")
    elif searched.low == 0:
        raise loc.error(("search", "data.val_fraction", searched.kind),
                        f"low {show(searched.low)} holds out no validation images ({allowed})")


def _check_tracking_uri(loc: Located, tracking: TrackingConfig) -> None:
    problem = None if tracking.uri is None else check_tracking_uri(tracking.uri)
    if problem:
        raise loc.error(("tracking", "uri"), f"{show(tracking.uri)} {problem}")


def load_train_file(path: str | Path) -> TrainFile:
    """Load and validate a single-run file for ``ternsearch train``.

    Raises:
        SpecError: the first problem found, as ``FILE:LINE: key: what is wrong (what is allowed)``.
    """
    loc = load_located(path)
    if "search" in loc.data:
        raise loc.error(("search",), "belongs to sweep files (this is `ternsearch train`: run a sweep with "
                                     "`ternsearch sweep FILE`, or export a trial with `ternsearch export`)")
    _check_sweep_keys_need_search(loc)
    unknown = [k for k in loc.data if k not in TrainFile.model_fields]
    if any(did_you_mean(k, list(_SWEEP_ONLY)) for k in unknown):
        load_spec(path)  # a sweep file with a typo: report it as `sweep` and `validate` of a sweep do
    doc: TrainFile = loc.validate(TrainFile)  # type: ignore[assignment]
    _check_name(loc, doc.name)
    check_run(loc, doc.base_config(), [])
    check_full_precision(loc, doc.model.arch, doc.model.full_precision_layers)
    _check_tracking_uri(loc, doc.tracking)
    return doc
