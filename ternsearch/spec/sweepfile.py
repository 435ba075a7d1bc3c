"""Sweep and train files: strict, typed, and every error names ``FILE:LINE: key``.

One format serves both jobs: a file without ``search:`` (and without searcher/scheduler) is a single training
run for ``ternsearch train``; a sweep file adds ``search:`` distributions and the search machinery.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ternsearch.spec.yamlsrc import Located, did_you_mean, explain_first, load_located, show
from trainables.config import DataConfig, MetricConfig, ModelConfig, TrainConfig, TrainParams

__all__ = ["Param", "SweepSpec", "TrainFile", "load_spec", "load_train_file", "DIST_KINDS"]

DIST_KINDS = ("loguniform", "uniform", "int", "choice")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearcherConfig(_Strict):
    algorithm: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int = 0
    num_samples: int = Field(8, ge=1, le=1_000_000)
    max_concurrent_trials: Optional[int] = Field(None, ge=1, le=10_000)


class SchedulerConfig(_Strict):
    algorithm: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    brackets: int = Field(1, ge=1, le=10)
    # The one metric ASHA compares trials on; needed when metric: lists several objectives.
    metric: Optional[str] = None


class ResourcesConfig(_Strict):
    workers_per_trial: int = Field(1, ge=1, le=4096)
    use_gpu: Union[bool, Literal["auto"]] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=16)
    # "auto": single-worker trials run the loop in the Tune trial itself (measured much faster to start),
    # multi-worker trials build a Ray Train TorchTrainer. "torchtrainer" forces Train for every trial.
    trainer: Literal["auto", "torchtrainer", "function"] = "auto"
    driver_resources: dict[str, float] = Field(default_factory=dict)

    @property
    def trial_mode(self) -> str:
        """"function" (the loop runs in the Tune trial's own process) or "torchtrainer" (Ray Train per trial)."""
        return "function" if self.workers_per_trial == 1 and self.trainer != "torchtrainer" else "torchtrainer"


class StorageConfig(_Strict):
    path: str = "~/ternsearch-results"
    shared: bool = False


class TrackingConfig(_Strict):
    uri: Optional[str] = None
    experiment: Optional[str] = None
    enabled: bool = True


class FailureConfig(_Strict):
    max_failures: int = Field(2, ge=0, le=1000)
    keep_checkpoints: int = Field(2, ge=1, le=1000)


class OriginConfig(_Strict):
    """Where an exported train file came from (written by ``ternsearch export``)."""

    sweep: Optional[str] = None
    results: Optional[str] = None
    trial_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    metric_value: Optional[float] = None


class _Common(_Strict):
    name: str
    metric: MetricConfig = MetricConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainParams = TrainParams()
    tracking: TrackingConfig = TrackingConfig()

    def objectives(self) -> tuple[MetricConfig, ...]:
        return tuple(self.metric) if isinstance(self.metric, list) else (self.metric,)

    def base_config(self) -> TrainConfig:
        """The run's config with every local path made absolute against the current directory.

        Paths a user gives are relative to where the command runs, as in every CLI; trials run elsewhere (Ray
        gives each Tune trial its own working directory), so they only ever see absolute paths. The data
        folder is pinned too when it comes from ``$TERNSEARCH_DATA``: the preflight check and every trial then
        read the same folder."""
        data = self.data
        root = data.root or os.environ.get("TERNSEARCH_DATA") or None
        if root:
            data = data.model_copy(update={"root": str(Path(root).expanduser().resolve())})
        model, train = self.model, self.train
        if _local_relative(model.init_from):  # the same for weight sources
            model = model.model_copy(update={"init_from": str(Path(model.init_from).expanduser().resolve())})
        if _local_relative(train.distill_from):
            train = train.model_copy(update={"distill_from": str(Path(train.distill_from).expanduser().resolve())})
        return TrainConfig(name=self.name, metric=self.objectives()[0], data=data, model=model, train=train)


def _local_relative(source: Optional[str]) -> bool:
    return bool(source) and ":/" not in source and not Path(source).expanduser().is_absolute()


class TrainFile(_Common):
    """A single training run (``ternsearch train``)."""

    output: str = "runs/{name}"
    origin: OriginConfig = OriginConfig()


class _SweepModel(_Common):
    # One objective, or a list of 2-3 (multi-objective search: the first one drives early stopping, the best
    # checkpoint and the default pick; the searcher looks for the Pareto front).
    metric: Annotated[Union[Annotated[MetricConfig, Tag("one")], Annotated[list[MetricConfig], Tag("list")]],
                      Discriminator(lambda v: "list" if isinstance(v, list) else "one")] = MetricConfig()
    search: dict[str, Any] = Field(default_factory=dict)
    searcher: SearcherConfig = SearcherConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()
    failure: FailureConfig = FailureConfig()


@dataclass(frozen=True)
class Param:
    """One searched parameter: ``name`` is a train key (``lr``) or dotted (``model.quantizer``)."""

    name: str
    kind: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple = ()
    when: dict = field(default_factory=dict)  # parent name -> tuple of parent values enabling this param

    def describe(self) -> str:
        if self.kind == "choice":
            body = f"choice {list(self.choices)}"
        else:
            body = f"{self.kind} [{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")
            body += " log" if self.log and self.kind == "int" else ""
        cond = " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when.items()) if self.when else ""
        return body + cond


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    file: str
    doc: _SweepModel
    params: tuple[Param, ...]
    located: Located = field(repr=False, compare=False)

    def __getattr__(self, item):  # name, data, model, train, searcher, ... come from the document
        if item.startswith("__"):
            raise AttributeError(item)
        return getattr(self.__dict__["doc"], item)

    @property
    def objectives(self) -> tuple[MetricConfig, ...]:
        """Every objective, the primary first."""
        return self.doc.objectives()

    @property
    def metric(self) -> MetricConfig:
        """The primary objective: early stopping, best checkpoint, ASHA (unless scheduler.metric says otherwise)."""
        return self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def asha_metric(self) -> MetricConfig:
        """The objective ASHA compares trials on."""
        name = self.doc.scheduler.metric
        return next((m for m in self.objectives if m.name == name), self.metric)

    def base_config(self) -> TrainConfig:
        return self.doc.base_config()


# ---------------------------------------------------------------------------------------------- search params
_PARAM_KEYS = (*DIST_KINDS, "step", "log", "when")
_SWEEP_ONLY = ("search", "searcher", "scheduler", "resources", "storage", "failure")
_EXAMPLE = "e.g. lr: {loguniform: [0.01, 0.5]}"


def _searchable() -> dict[str, Any]:
    """Searchable key -> its field's annotation."""
    names = {k: f.annotation for k, f in TrainParams.model_fields.items()}
    names.update({f"model.{k}": f.annotation for k, f in ModelConfig.model_fields.items()})
    names.update({f"data.{k}": DataConfig.model_fields[k].annotation for k in ("val_fraction", "subset")})
    return names


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_param(loc: Located, name: str, raw: Any, fixed: set[str]) -> Param:
    at = ("search", name)
    searchable = _searchable()
    if name not in searchable:
        raise loc.error(at, f"not a searchable key ({did_you_mean(name, list(searchable))}search keys are the "
                            "train keys, or " + ", ".join(k for k in searchable if "." in k) + ")")
    if name in fixed:
        where = ("model", "data")[name.startswith("data.")] if "." in name else "train"
        path = (where, name.split(".", 1)[-1])
        raise loc.error(at, f"is also fixed as {'.'.join(path)} on line {loc.line(path)} (a key is either fixed "
                            "or searched: remove one of them)")
    if not isinstance(raw, dict):
        raise loc.error(at, f"{show(raw)} is not a distribution (write a mapping such as {{loguniform: [0.01, 0.5]}}"
                            f"; distributions: {', '.join(DIST_KINDS)})")
    for key in raw:
        if key not in _PARAM_KEYS:
            raise loc.error(at + (key,), f"unknown key ({did_you_mean(key, list(_PARAM_KEYS))}allowed: "
                                         f"{', '.join(_PARAM_KEYS)})")
    kinds = [k for k in DIST_KINDS if k in raw]
    if not kinds:
        raise loc.error(at, f"no distribution (add one of: {', '.join(DIST_KINDS)}; {_EXAMPLE})")
    if len(kinds) > 1:
        raise loc.error(at + (kinds[1],), f"a second distribution after {kinds[0]} (give exactly one of: "
                                          f"{', '.join(DIST_KINDS)})")
    kind = kinds[0]
    when = _parse_when(loc, at, raw)
    if kind == "choice":
        return _parse_choice(loc, at, raw, when)
    return _parse_range(loc, at, kind, raw, when, searchable[name])


def _parse_choice(loc: Located, at: tuple, raw: dict, when: dict) -> Param:
    for extra in ("step", "log"):
        if extra in raw:
            raise loc.error(at + (extra,), "does not apply to choice (step and log go with uniform or int)")
    value = raw["choice"]
    if not isinstance(value, list):
        raise loc.error(at + ("choice",), f"{show(value)} is not a list (choice takes a list of values, "
                                          "e.g. [sgd, adam])")
    if not value:
        raise loc.error(at + ("choice",), "is an empty list (choice needs at least one value)")
    for i, v in enumerate(value):
        if isinstance(v, (dict, list)) or v is None:
            raise loc.error(at + ("choice", i), f"{show(v)} is not a single value (choice values are numbers, "
                                                "words or true/false)")
        if any(v == w and type(v) is type(w) for w in value[:i]):
            raise loc.error(at + ("choice", i), f"{show(v)} is listed twice (each choice value may appear once)")
    return Param(at[1], "choice", choices=tuple(value), when=when)


def _parse_range(loc: Located, at: tuple, kind: str, raw: dict, when: dict, annotation: Any) -> Param:
    value = raw[kind]
    if not isinstance(value, list) or len(value) != 2 or not all(_is_num(v) for v in value):
        raise loc.error(at + (kind,), f"{show(value)} is not [low, high] (give two numbers, e.g. [0.01, 0.5])")
    low, high = value
    if kind == "int" and not (_is_int(low) and _is_int(high)):
        raise loc.error(at + (kind,), f"{show(value)} has a bound that is not a whole number (int takes integer "
                                      "bounds such as [0, 5]; use uniform for real numbers)")
    if kind != "int" and annotation in (int, Optional[int]):
        raise loc.error(at + (kind,), f"{at[1]} takes whole numbers ({kind} draws real numbers: use "
                                      f"int: {show(value)}" + (", log: true)" if kind == "loguniform" else ")"))
    if low > high:
        raise loc.error(at + (kind,), f"low {show(low)} is greater than high {show(high)} (low must be <= high)")
    if "log" in raw:
        if kind != "int":
            raise loc.error(at + ("log",), f"does not apply to {kind} (log goes with int; for real numbers on "
                                           "a log scale use loguniform)")
        if not isinstance(raw["log"], bool):
            raise loc.error(at + ("log",), f"{show(raw['log'])} is not true or false (log: true samples on a log "
                                           "scale)")
    log = kind == "loguniform" or raw.get("log") is True
    if log and low <= 0:
        raise loc.error(at + (kind,), f"low {show(low)} is not positive (a log scale needs low > 0)")
    step = raw.get("step")
    if "step" in raw:
        if log:
            raise loc.error(at + ("step",), "cannot be combined with a log scale (Optuna takes step or log, not "
                                            "both)")
        if not _is_num(step) or step <= 0 or (kind == "int" and not _is_int(step)):
            raise loc.error(at + ("step",), f"{show(step)} is not a positive "
                                            f"{'whole number' if kind == 'int' else 'number'} (step must be > 0)")
    return Param(at[1], kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(loc: Located, at: tuple, raw: dict) -> dict:
    if "when" not in raw:
        return {}
    cond = raw["when"]
    if not isinstance(cond, dict) or not cond:
        raise loc.error(at + ("when",), f"{show(cond)} is not a condition (map a searched choice parameter to "
                                        "the values that enable this one, e.g. {augment: [mixup]})")
    out = {}
    for parent, values in cond.items():
        vals = values if isinstance(values, list) else [values]
        if not vals:
            raise loc.error(at + ("when", parent), f"is an empty list (list the values of {parent} that enable "
                                                   f"{at[1]})")
        out[str(parent)] = tuple(vals)
    return out


def _check_conditions(loc: Located, params: list[Param]) -> None:
    by_name = {p.name: p for p in params}
    choices = [q.name for q in params if q.kind == "choice"]
    for p in params:
        for parent, values in p.when.items():
            at = ("search", p.name, "when", parent)
            src = by_name.get(parent)
            allowed = (f"conditions name one of: {', '.join(choices)}" if choices
                       else "only a parameter searched with choice can enable others, and there is none")
            if parent == p.name:
                raise loc.error(at, f"a parameter cannot depend on itself ({allowed})")
            if src is None:
                raise loc.error(at, f"not a searched parameter ({did_you_mean(parent, choices)}{allowed})")
            if src.kind != "choice":
                raise loc.error(at, f"is searched with {src.kind}, not choice ({allowed})")
            for v in values:
                if not any(v == c and type(v) is type(c) for c in src.choices):
                    raise loc.error(at, f"{show(v)} is never chosen for {parent} (its choices: "
                                        f"{', '.join(show(c).strip(chr(39)) for c in src.choices)})")
    # Parents must come before children in some order: no cycles (space.ordered relies on it).
    done: set[str] = set()
    pending = list(params)
    while pending:
        ready = [p for p in pending if set(p.when) <= done]
        if not ready:
            p = pending[0]
            raise loc.error(("search", p.name, "when"), "conditions form a cycle among " + ", ".join(
                q.name for q in pending) + " (a parameter must not depend, even indirectly, on itself)")
        done |= {p.name for p in ready}
        pending = [p for p in pending if p not in ready]


def _check_values(loc: Located, params: list[Param], base: TrainConfig) -> None:
    """Every value the searcher may propose must make a valid config: both bounds of a range, every choice, and
    every pair of those across two parameters (cross-field rules such as warmup_epochs < epochs)."""
    cands = {p.name: list(p.choices) if p.kind == "choice" else [p.low, p.high] for p in params}

    def fail(p: Param, i: int, exc: ValidationError, other: str = "") -> NoReturn:
        sub = (p.kind, i) if p.kind == "choice" else (p.kind,)
        raise loc.error(("search", p.name) + sub, explain_first(TrainConfig, exc) + other) from None

    for p in params:
        for i, v in enumerate(cands[p.name]):
            try:
                base.with_overrides({p.name: v})
            except ValidationError as exc:
                fail(p, i, exc)
    for a, p in enumerate(params):
        for q in params[a + 1:]:
            for i, v in enumerate(cands[p.name]):
                for w in cands[q.name]:
                    if not (_enabled(p, {q.name: w}) and _enabled(q, {p.name: v})):
                        continue
                    try:
                        base.with_overrides({p.name: v, q.name: w})
                    except ValidationError as exc:
                        fail(p, i, exc, f", with {q.name} {show(w)} from search.{q.name} (every combination the "
                                        "searcher may propose must be a valid config)")


def _enabled(p: Param, values: dict) -> bool:
    """False when ``values`` sets a parent of ``p`` to a value that disables it."""
    return all(values[k] in allowed for k, allowed in p.when.items() if k in values)


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
                                    f"one distribution, {_EXAMPLE}; or remove {keys[0]}: to make a train file)")


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
                                     f"{_EXAMPLE}; a file without search: is a train file for `ternsearch train`)")
    if not doc.search:
        raise loc.error(("search",), f"is empty (add at least one distribution, {_EXAMPLE})")
    fixed = _fixed_keys(doc)
    params = [_parse_param(loc, str(name), raw, fixed) for name, raw in doc.search.items()]
    _check_conditions(loc, params)
    _check_values(loc, params, doc.base_config())
    _check_sweep(loc, doc, params)
    return SweepSpec(file=str(path), doc=doc, params=tuple(params), located=loc)


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


def _check_sweep(loc: Located, doc: _SweepModel, params: list[Param]) -> None:
    _check_objectives(loc, doc)
    by_name = {p.name: p for p in params}
    ep = by_name.get("epochs")
    max_epochs = doc.train.epochs if ep is None else max(ep.choices) if ep.kind == "choice" else ep.high
    if doc.scheduler.algorithm == "asha" and doc.scheduler.grace_period > max_epochs:
        what = "train.epochs" if ep is None else "the largest searched epochs"
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


_URI_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def _check_tracking_uri(loc: Located, tracking: TrackingConfig) -> None:
    uri = tracking.uri
    if uri is None:
        return
    scheme, sep, rest = uri.partition("://")
    base = scheme.split("+")[0]
    if sep:
        ok = base in _URI_SCHEMES and not (base in ("http", "https") and not rest.strip("/")) and not (
            base == "sqlite" and not rest.startswith("/"))
    else:
        ok = bool(uri.strip()) and ":" not in uri.split("/")[0]  # a plain local path: MLflow's file store
    if not ok:
        raise loc.error(("tracking", "uri"), f"{show(uri)} is not a tracking URI (use sqlite:///FILE.db, "
                        "http://HOST:PORT, file:///DIR or a local directory path)")


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
    _check_tracking_uri(loc, doc.tracking)
    return doc
