"""The one compiler from a spec's ``search:`` distributions to what Optuna (through Ray Tune) samples."""

from __future__ import annotations

from typing import Any, Optional

from ternsearch.spec.sweepfile import Param

__all__ = ["DefineByRun", "make_sampler", "ordered", "grid_size"]


def ordered(params: tuple[Param, ...] | list[Param]) -> list[Param]:
    """Parents before the parameters that depend on them (conditions only name choice parameters)."""
    done: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(parent in {d.name for d in done} for parent in p.when)]
        if not ready:  # a cycle; spec validation names the parents, so this is a bug if reached
            raise ValueError("conditional parameters form a cycle: " + ", ".join(p.name for p in pending))
        done.extend(ready)
        pending = [p for p in pending if p not in ready]
    return done


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
            if p.kind == "choice":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return None


def grid_size(params) -> int:
    size = 1
    for p in params:
        size *= len(p.choices)
    return size


def make_sampler(algorithm: str, params, seed: int, num_samples: int):
    """TPE (multivariate, constant liar for parallel trials; multi-objective TPE when the study has several
    objectives), NSGA-II, random, or grid; always seeded."""
    import warnings

    import optuna

    # multivariate/group/constant_liar are marked experimental in Optuna; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "grid":
        return optuna.samplers.GridSampler({p.name: list(p.choices) for p in params}, seed=seed)
    if algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, num_samples // 3)))
    conditional = any(p.when for p in params)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        group=conditional,  # multivariate TPE over conditional spaces needs group decomposition
        constant_liar=True,  # running trials count as pending, so parallel proposals spread out
        n_startup_trials=min(10, max(2, num_samples // 4)),
    )
