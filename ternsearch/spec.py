"""Sweep and train files: strict, typed, and every error names ``FILE:LINE: key``.

One format serves both jobs: a file without ``search:`` (and without searcher/scheduler) is a single training
run for ``ternsearch train``; a sweep file adds ``search:`` distributions and the search machinery.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ternsearch.errors import SpecError
from ternsearch.yamlsrc import Located, load_located
from trainables.config import DataConfig, MetricConfig, ModelConfig, TrainConfig, TrainParams

__all__ = ["Param", "SweepSpec", "TrainFile", "load_spec", "load_train_file", "DIST_KINDS"]

DIST_KINDS = ("loguniform", "uniform", "int", "choice")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearcherConfig(_Strict):
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    num_samples: int = Field(8, ge=1, le=1_000_000)
    max_concurrent_trials: Optional[int] = Field(None, ge=1, le=10_000)


class SchedulerConfig(_Strict):
    algorithm: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    brackets: int = Field(1, ge=1, le=10)


class ResourcesConfig(_Strict):
    workers_per_trial: int = Field(1, ge=1, le=4096)
    use_gpu: Union[bool, Literal["auto"]] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=16)
    # "auto": single-worker trials run the loop in the Tune trial itself (measured much faster to start),
    # multi-worker trials build a Ray Train TorchTrainer. "torchtrainer" forces Train for every trial.
    trainer: Literal["auto", "torchtrainer", "function"] = "auto"
    driver_resources: dict[str, float] = Field(default_factory=dict)


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

    def base_config(self) -> TrainConfig:
        return TrainConfig(name=self.name, metric=self.metric, data=self.data, model=self.model, train=self.train)


class TrainFile(_Common):
    """A single training run (``ternsearch train``)."""

    output: str = "runs/{name}"
    origin: OriginConfig = OriginConfig()


class _SweepModel(_Common):
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
    model: _SweepModel
    params: tuple[Param, ...]
    located: Located = field(repr=False, compare=False)

    def __getattr__(self, item):  # name, metric, data, train, searcher, ... come from the model
        return getattr(self.__dict__["model"], item)

    def base_config(self) -> TrainConfig:
        return self.model.base_config()


# ---------------------------------------------------------------------------------------------- pydantic errors
def _allowed(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    cls: Any = model_cls
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        ann = cls.model_fields[part].annotation
        cls = next((a for a in (get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _message(model_cls: type[BaseModel], err: dict) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed(model_cls, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key ({hint}allowed: {', '.join(allowed)})"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{got!r} is not allowed (choose from: {ctx.get('expected', '').replace(' or ', ', ')})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{got!r} is out of range (must be {bounds[kind]} {limit})"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = kind.split("_")[0].replace("dict", "mapping").replace("model", "mapping")
        expected = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
                    "mapping": "a mapping", "list": "a list", "tuple": "a list"}.get(expected, expected)
        return f"{got!r} has the wrong type (expected {expected})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {got!r})"


def _raise_first(located: Located, model_cls: type[BaseModel], exc: ValidationError, prefix: tuple = ()) -> None:
    errors = exc.errors()
    # Prefer errors that point at a concrete key; a union of types reports one error per branch.
    err = errors[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("literal",))))
    raise located.error(loc, _message(model_cls, err)) from None


def _validate_model(located: Located, cls: type[BaseModel], data: dict) -> BaseModel:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        _raise_first(located, cls, exc)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- search params
_PARAM_KEYS = set(DIST_KINDS) | {"step", "log", "when"}


def _searchable() -> dict[str, type[BaseModel]]:
    names: dict[str, type[BaseModel]] = {k: TrainParams for k in TrainParams.model_fields}
    names.update({f"model.{k}": ModelConfig for k in ModelConfig.model_fields})
    names.update({f"data.{k}": DataConfig for k in ("val_fraction", "subset")})
    return names


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _parse_param(loc: Located, name: str, raw: Any, fixed: set[str]) -> Param:
    at = ("search", name)
    searchable = _searchable()
    if name not in searchable:
        close = difflib.get_close_matches(name, list(searchable), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise loc.error(at, f"not a searchable key ({hint}search keys are train keys, or model.KEY / data.KEY)")
    if name in fixed:
        where = name if "." in name else f"train.{name}"
        raise loc.error(at, f"is both fixed ({where}) and searched (keep it in one place)")
    if not isinstance(raw, dict):
        raise loc.error(at, f"expected a distribution mapping like {{loguniform: [0.01, 0.5]}} (one of: "
                            f"{', '.join(DIST_KINDS)}), got {raw!r}")
    unknown = [k for k in raw if k not in _PARAM_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(_PARAM_KEYS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise loc.error(at + (unknown[0],), f"unknown key ({hint}allowed: {', '.join(DIST_KINDS)}, step, log, when)")
    kinds = [k for k in DIST_KINDS if k in raw]
    if len(kinds) != 1:
        raise loc.error(at, f"needs exactly one distribution (one of: {', '.join(DIST_KINDS)}), got {kinds or 'none'}")
    kind = kinds[0]
    value = raw[kind]
    when = _parse_when(loc, at, raw.get("when"))
    if kind == "choice":
        for extra in ("step", "log"):
            if extra in raw:
                raise loc.error(at + (extra,), f"does not apply to choice (only to uniform/int)")
        if not isinstance(value, list) or not value:
            raise loc.error(at + ("choice",), "must be a non-empty list of values")
        for i, v in enumerate(value):
            if isinstance(v, (dict, list)):
                raise loc.error(at + ("choice", i), f"choice values must be scalars, got {v!r}")
            if v in value[:i]:
                raise loc.error(at + ("choice", i), f"duplicate choice value {v!r} (each value once)")
        return Param(name, kind, choices=tuple(value), when=when)
    if not isinstance(value, list) or len(value) != 2 or not all(_is_num(v) for v in value):
        raise loc.error(at + (kind,), f"must be [low, high] with two numbers, got {value!r}")
    low, high = value
    if kind == "int" and not (_is_int(low) and _is_int(high)):
        raise loc.error(at + (kind,), f"int range needs integer bounds, got {value!r} (write e.g. [0, 5])")
    if low > high:
        raise loc.error(at + (kind,), f"low {low} > high {high} (low must be <= high)")
    log = kind == "loguniform" or bool(raw.get("log", False))
    if "log" in raw and (kind != "int" or not isinstance(raw["log"], bool)):
        raise loc.error(at + ("log",), "log: true|false applies to int only (use loguniform for floats)")
    if log and low <= 0:
        raise loc.error(at + (kind,), f"log scale needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None:
        if kind == "loguniform" or log:
            raise loc.error(at + ("step",), "step and log scale are exclusive (Optuna's rule)")
        if not _is_num(step) or step <= 0 or (kind == "int" and not _is_int(step)):
            raise loc.error(at + ("step",), f"step must be a positive {'integer' if kind == 'int' else 'number'}, "
                                            f"got {step!r}")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when)


def _parse_when(loc: Located, at: tuple, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise loc.error(at + ("when",), "must map a searched choice parameter to the values that enable this one, "
                                        "e.g. {augment: [mixup]}")
    out = {}
    for parent, values in raw.items():
        vals = values if isinstance(values, list) else [values]
        out[str(parent)] = tuple(vals)
    return out


def _check_params(loc: Located, params: list[Param], base: TrainConfig) -> None:
    by_name = {p.name: p for p in params}
    for p in params:
        at = ("search", p.name)
        for parent, values in p.when.items():
            src = by_name.get(parent)
            if src is None or src.kind != "choice":
                raise loc.error(at + ("when", parent), f"conditions must name a searched choice parameter "
                                f"(searched choices: {', '.join(q.name for q in params if q.kind == 'choice') or 'none'})")
            if parent == p.name:
                raise loc.error(at + ("when", parent), "a parameter cannot depend on itself")
            for v in values:
                if v not in src.choices:
                    raise loc.error(at + ("when", parent), f"{v!r} is never chosen for {parent} "
                                    f"(its choices: {list(src.choices)})")
        # Every value the searcher may propose must be a valid config: check both bounds, or every choice.
        candidates = list(p.choices) if p.kind == "choice" else [p.low, p.high]
        for i, v in enumerate(candidates):
            try:
                base.with_overrides({p.name: v})
            except ValidationError as exc:
                sub = (p.kind, i) if p.kind == "choice" else (p.kind,)
                err = exc.errors()[0]
                raise loc.error(at + sub, _message(TrainConfig, err)) from None


def _fixed_keys(model: _SweepModel) -> set[str]:
    fixed = set(model.train.model_fields_set)
    fixed |= {f"model.{k}" for k in model.model.model_fields_set}
    fixed |= {f"data.{k}" for k in model.data.model_fields_set}
    return fixed


def _check_name(loc: Located, name: str) -> None:
    if not _NAME_RE.match(name):
        raise loc.error(("name",), f"{name!r} is not a valid name (letters, digits, '.', '_', '-'; no '/' or spaces)")


def load_spec(path: str | Path) -> SweepSpec:
    """Load and validate a sweep file (file-only checks: no Ray, no MLflow, no data access).

    Raises:
        SpecError: the first problem found, as ``FILE:LINE: key: what is wrong (what is allowed)``.
    """
    loc = load_located(path)
    model: _SweepModel = _validate_model(loc, _SweepModel, loc.data)  # type: ignore[assignment]
    _check_name(loc, model.name)
    if not model.search:
        raise loc.error(("search",) if "search" in loc.data else (), "a sweep needs a search: section with at "
                        "least one distribution (a file without one is a train config: use `ternsearch train`)")
    fixed = _fixed_keys(model)
    params = [_parse_param(loc, str(name), raw, fixed) for name, raw in model.search.items()]
    base = model.base_config()
    _check_params(loc, params, base)
    _check_sweep(loc, model, params)
    return SweepSpec(file=str(path), model=model, params=tuple(params), located=loc)


def _values(params: list[Param], name: str, fixed: Any) -> list:
    p = next((q for q in params if q.name == name), None)
    if p is None:
        return [fixed]
    return list(p.choices) if p.kind == "choice" else [p.low, p.high]


def _check_sweep(loc: Located, model: _SweepModel, params: list[Param]) -> None:
    epochs = _values(params, "epochs", model.train.epochs)
    max_epochs = max(epochs)
    if model.scheduler.algorithm == "asha" and model.scheduler.grace_period > max_epochs:
        raise loc.error(("scheduler", "grace_period"), f"{model.scheduler.grace_period} is more than the "
                        f"{max_epochs} epochs a trial runs (must be <= train.epochs)")
    workers = model.resources.workers_per_trial
    for bs in _values(params, "batch_size", model.train.batch_size):
        if bs % workers:
            where = ("search", "batch_size") if any(p.name == "batch_size" for p in params) else ("train", "batch_size")
            raise loc.error(where, f"{bs} is not divisible by resources.workers_per_trial={workers} "
                            "(each worker takes batch_size / workers_per_trial images)")
    if model.searcher.algorithm == "grid":
        bad = [p.name for p in params if p.kind != "choice"]
        if bad:
            raise loc.error(("search", bad[0]), "the grid searcher takes choice distributions only "
                            "(use searcher.algorithm: tpe or random for ranges)")
    if model.resources.workers_per_trial > 1 and model.resources.gpus_per_worker % 1:
        raise loc.error(("resources", "gpus_per_worker"), "fractional GPUs are for single-worker trials only "
                        "(NCCL needs a whole GPU per DDP rank)")
    if model.resources.workers_per_trial > 1 and model.resources.trainer == "function":
        raise loc.error(("resources", "trainer"), "'function' runs one worker; DDP trials need 'torchtrainer' or 'auto'")
    _check_tracking_uri(loc, model.tracking)


_URI_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def _check_tracking_uri(loc: Located, tracking: TrackingConfig) -> None:
    uri = tracking.uri
    if uri is None:
        return
    scheme, sep, rest = uri.partition("://")
    if not sep:
        if ":" in uri.split("/")[0]:
            raise loc.error(("tracking", "uri"), f"{uri!r} is not a tracking URI (use sqlite:///FILE.db, "
                            "http://HOST:PORT, file:///DIR or a local directory path)")
        return  # a plain local path: MLflow's file store
    base = scheme.split("+")[0]
    if base not in _URI_SCHEMES or (base in ("http", "https") and not rest.strip("/")) or (
        base == "sqlite" and not rest.startswith("/")
    ):
        raise loc.error(("tracking", "uri"), f"{uri!r} is not a tracking URI (use sqlite:///FILE.db, "
                        "http://HOST:PORT, file:///DIR or a local directory path)")


def load_train_file(path: str | Path) -> TrainFile:
    """Load and validate a single-run file for ``ternsearch train``."""
    loc = load_located(path)
    sweep_only = [k for k in ("search", "searcher", "scheduler", "resources", "storage", "failure") if k in loc.data]
    if sweep_only:
        raise loc.error((sweep_only[0],), "belongs to sweep files (this is `ternsearch train`; run a sweep with "
                        "`ternsearch sweep FILE`, or export a trial with `ternsearch export`)")
    model: TrainFile = _validate_model(loc, TrainFile, loc.data)  # type: ignore[assignment]
    _check_name(loc, model.name)
    _check_tracking_uri(loc, model.tracking)
    return model
