"""The one compiler from a spec's ``search:`` distributions to what Optuna (through Ray Tune) samples."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from ternsearch.spec.models import Param
from ternsearch.spec.params import ordered

__all__ = ["DefineByRun", "distribution", "make_sampler", "ordered", "grid_size"]


def distribution(p: Param):
    """The Optuna distribution ``p`` samples from (a loguniform is on a log scale whether or not ``p.log`` says
    so: a Param inferred by the report may not)."""
    # optuna takes ~1 s to import: only when a sweep builds its searcher or the report assesses importance, never
    # when a spec loads (ternsearch validate, the sweep's checks before ray.init)
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "choice":
        return CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
    return FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.kind == "loguniform" or p.log)


class DefineByRun:
    """Optuna define-by-run space: suggests each parameter whose conditions hold, in dependency order.

    A plain class (not a closure) so that Tune can pickle the searcher state for ``--resume``.
    """

    def __init__(self, params: tuple[Param, ...] | list[Param]):
        self.params = ordered(params)

    def __call__(self, trial) -> Optional[dict[str, Any]]:
        values: dict[str, Any] = {}
        for p in self.params:
            if any(values.get(parent, object()) not in allowed for parent, allowed in p.when.items()):
                continue
            d = distribution(p)
            if p.kind == "choice":
                values[p.name] = trial.suggest_categorical(p.name, d.choices)
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
            else:
                values[p.name] = trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
        return None


def grid_size(params) -> int:
    size = 1
    for p in params:
        size *= len(p.choices)
    return size


def make_sampler(algorithm: str, params, seed: int, num_samples: int, *, n_startup_trials: Optional[int] = None,
                 multivariate: bool = True, constant_liar: bool = True):
    """TPE (multivariate unless told otherwise, constant liar for parallel trials; multi-objective TPE when the study
    has several objectives), a Gaussian process (GP: categorical keys included; conditional ones, outside the
    space every trial shares, sampled at random), NSGA-II, random, or grid; always seeded."""
    # optuna takes ~1 s to import: only when a sweep builds its searcher, never when a spec loads
    import optuna

    # multivariate/group/constant_liar are marked experimental in Optuna; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "grid":
        return optuna.samplers.GridSampler({p.name: list(p.choices) for p in params}, seed=seed)
    if algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))
    startup = n_startup_trials or min(10, max(2, num_samples // 4))
    if algorithm == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)
    conditional = any(p.when for p in params)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=multivariate,
        group=multivariate and conditional,  # multivariate TPE over conditional spaces needs group decomposition
        constant_liar=constant_liar,  # running trials count as pending, so parallel proposals spread out
        n_startup_trials=startup,
    )
