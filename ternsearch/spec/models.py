"""The typed models of sweep and train files: each section a strict, frozen pydantic model (unknown keys
rejected), the documents they make up, and what loading makes of a sweep file (``SweepSpec``, ``Param``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

from pydantic import Discriminator, Field, Tag

from ternsearch.spec.yamlsrc import Located
from trainables.config import DataConfig, MetricConfig, ModelConfig, Strict, TrainConfig, TrainParams

__all__ = ["DIST_KINDS", "Param", "SweepSpec", "TrainFile", "largest_epochs", "SearcherConfig", "SchedulerConfig",
           "ResourcesConfig", "StorageConfig", "duration_seconds", "TrackingConfig", "FailureConfig", "OriginConfig"]

DIST_KINDS = ("loguniform", "uniform", "int", "choice")


SEED_MAX = 2**32 - 1  # Optuna's samplers seed numpy, which takes 0 to 2**32 - 1


class SearcherConfig(Strict):
    algorithm: Literal["tpe", "random", "grid", "nsga2", "gp"] = "tpe"
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # Default 8; a grid searcher runs each point of its grid once, and without num_samples that many trials.
    num_samples: int = Field(8, ge=1, le=1_000_000)
    max_concurrent_trials: Optional[int] = Field(None, ge=1, le=10_000)
    # Stopping rules (checked by ternsearch.spec.load): wall time of one run of the driver (90s, 30m, 2h, 1d, or
    # seconds), and objective values that end the sweep once one trial reaches them ({val_acc: 0.9}).
    time_budget: Optional[Union[float, str]] = None
    stop_at: dict[str, float] = Field(default_factory=dict)
    # Earlier sweeps' results directories whose finished trials seed a new sweep's study, and configurations (of
    # searched parameters) to run first, in order.
    warm_start: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    points: list[dict[str, Any]] = Field(default_factory=list)
    # TPE and GP: random trials before the model proposes (default min(10, max(2, num_samples // 4))); TPE: one
    # joint density over the parameters (grouped when the space is conditional), running trials counted as pending.
    n_startup_trials: Optional[int] = Field(None, ge=1, le=1_000_000)
    multivariate: bool = True
    constant_liar: bool = True

    @property
    def time_budget_s(self) -> Optional[float]:
        return duration_seconds(self.time_budget)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: Any) -> Optional[float]:
    """``90s``, ``30m``, ``2h``, ``1.5d`` or a number of seconds, in seconds; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if 0 < value < float("inf") else None
    text = str(value).strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


class SchedulerConfig(Strict):
    algorithm: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    brackets: int = Field(1, ge=1, le=10)
    # The one metric ASHA compares trials on; needed when metric: lists several objectives.
    metric: Optional[str] = None


class ResourcesConfig(Strict):
    workers_per_trial: int = Field(1, ge=1, le=4096)
    use_gpu: Union[bool, Literal["auto"]] = "auto"
    cpus_per_worker: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_worker: float = Field(1.0, gt=0.0, le=16)
    # "auto": single-worker trials run the loop in the Tune trial itself (measured much faster to start),
    # multi-worker trials build a Ray Train TorchTrainer. "torchtrainer" forces Train for every trial.
    trainer: Literal["auto", "torchtrainer", "function"] = "auto"
    driver_resources: dict[Annotated[str, Field(min_length=1)],
                           Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)]] = Field(default_factory=dict)

    @property
    def trial_mode(self) -> str:
        """"function" (the loop runs in the Tune trial's own process) or "torchtrainer" (Ray Train per trial)."""
        return "function" if self.workers_per_trial == 1 and self.trainer != "torchtrainer" else "torchtrainer"


class StorageConfig(Strict):
    path: str = "~/ternsearch-results"  # checked by ternsearch.spec.uris.check_storage_path
    shared: bool = False


class TrackingConfig(Strict):
    uri: Optional[str] = None
    experiment: Optional[str] = None
    enabled: bool = True


class FailureConfig(Strict):
    max_failures: int = Field(2, ge=0, le=1000)
    keep_checkpoints: int = Field(2, ge=1, le=1000)


class OriginConfig(Strict):
    """Where an exported train file came from (written by ``ternsearch export``)."""

    sweep: Optional[str] = None
    results: Optional[str] = None
    trial_id: Optional[str] = None
    parent_run_id: Optional[str] = None
    metric_value: Optional[float] = None


class _Common(Strict):
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
        # Built unchecked: each section is already valid, and the rules across sections (batch_size within the
        # split, quantize_from_epoch within epochs) hold for the values a trial runs, where searched values
        # replace these; loading checks them (ternsearch.spec.load) and every trial's config is validated again.
        return TrainConfig.model_construct(name=self.name, metric=self.objectives()[0], data=data, model=model,
                                           train=train)


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

    @property
    def max_epochs(self) -> int:
        """The most epochs a trial runs (a searched choice may hold ``3.0``: an int all the same)."""
        return int(largest_epochs(self.doc.train.epochs, self.params))

    def base_config(self) -> TrainConfig:
        return self.doc.base_config()


def largest_epochs(epochs: Any, params: Sequence[Param]) -> Any:
    """The most epochs a trial runs: ``epochs`` (train.epochs), or the largest searched ``epochs``, as written."""
    p = next((q for q in params if q.name == "epochs"), None)
    return epochs if p is None else max(p.choices) if p.kind == "choice" else p.high

