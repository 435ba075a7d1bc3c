"""The ``search:`` parameters: each parsed and checked on its own, then their ``when:`` conditions and the
values the searcher may propose, against the rest of the file."""

from __future__ import annotations

from typing import Any, NoReturn, Optional, Sequence

from pydantic import ValidationError

from ternsearch.numbers import is_int, is_number
from ternsearch.spec.models import DIST_KINDS, Param
from ternsearch.spec.yamlsrc import Located, did_you_mean, explain_first, show
from trainables.config import DataConfig, ModelConfig, TrainConfig, TrainParams

__all__ = ["EXAMPLE", "ConditionCycle", "ordered", "parse_param", "check_conditions", "check_values",
           "searchable_keys"]

_PARAM_KEYS = (*DIST_KINDS, "step", "log", "when")
EXAMPLE = "e.g. lr: {loguniform: [0.01, 0.5]}"


class ConditionCycle(ValueError):
    """Parameters whose ``when:`` conditions depend on each other in a circle (``pending``: those left over)."""

    def __init__(self, pending: list[Param]):
        super().__init__("conditional parameters form a cycle: " + ", ".join(p.name for p in pending))
        self.pending = pending


def ordered(params: Sequence[Param]) -> list[Param]:
    """Parents before the parameters that depend on them (conditions only name choice parameters), otherwise in
    the file's order: each round takes every parameter whose parents all came in earlier rounds.

    Raises:
        ConditionCycle: no order exists (load_spec reports it as the file's error).
    """
    done: list[Param] = []
    pending = list(params)
    while pending:
        names = {d.name for d in done}
        ready = [p for p in pending if set(p.when) <= names]
        if not ready:
            raise ConditionCycle(pending)
        done.extend(ready)
        pending = [p for p in pending if p not in ready]
    return done


# Keys no search can take: a list (a choice value is one number, word or true/false) and weight sources (paths
# a trial could not resolve against the directory the sweep started in).
_NOT_SEARCHABLE = {"model.full_precision_layers": "a list of layers", "model.init_from": "a weight source",
                   "distill_from": "a weight source", "step_milestones": "a list of epochs"}


def _searchable() -> dict[str, Any]:
    """Searchable key -> its field's annotation."""
    names = {k: f.annotation for k, f in TrainParams.model_fields.items()}
    names.update({f"model.{k}": f.annotation for k, f in ModelConfig.model_fields.items()})
    names.update({f"data.{k}": DataConfig.model_fields[k].annotation for k in ("val_fraction", "subset")})
    return {k: v for k, v in names.items() if k not in _NOT_SEARCHABLE}


def searchable_keys() -> tuple[str, ...]:
    """Every key a ``search:`` section may name: the train keys, ``model.KEY`` and two data keys (not the list and
    weight-source keys of ``_NOT_SEARCHABLE``). tests/test_searchable.py checks that each reaches the loop."""
    return tuple(_searchable())


def parse_param(loc: Located, name: str, raw: Any, fixed: set[str]) -> Param:
    at = ("search", name)
    searchable = _searchable()
    if name in _NOT_SEARCHABLE:
        raise loc.error(at, f"cannot be searched ({name} is {_NOT_SEARCHABLE[name]}: fix it under "
                            f"{'model' if name.startswith('model.') else 'train'}:, and search the other keys)")
    if name not in searchable:
        raise loc.error(at, f"not a searchable key ({did_you_mean(name, list(searchable))}search keys are the "
                            "train keys except distill_from, or " + ", ".join(k for k in searchable if "." in k) + ")")
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
        raise loc.error(at, f"no distribution (add one of: {', '.join(DIST_KINDS)}; {EXAMPLE})")
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
    if not isinstance(value, list) or len(value) != 2 or not all(is_number(v) for v in value):
        raise loc.error(at + (kind,), f"{show(value)} is not [low, high] (give two numbers, e.g. [0.01, 0.5])")
    low, high = value
    if kind == "int" and not (is_int(low) and is_int(high)):
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
        if not is_number(step) or step <= 0 or (kind == "int" and not is_int(step)):
            raise loc.error(at + ("step",), f"{show(step)} is not a positive "
                                            f"{'whole number' if kind == 'int' else 'number'} (step must be > 0)")
        _check_step(loc, at, low, high, step)
    return Param(at[1], kind, low=low, high=high, step=step, log=log, when=when)


def _check_step(loc: Located, at: tuple, low: Any, high: Any, step: Any) -> None:
    """A step must split [low, high] into whole steps: Optuna would otherwise quietly move high (or, for a step
    larger than the range, sample only low)."""
    span = high - low
    if span == 0:
        return
    if step > span:
        raise loc.error(at + ("step",), f"{show(step)} is larger than the range {show(low)} to {show(high)} (use a "
                                        f"step of at most {show(span)}: with this one only low is ever sampled)")
    count = span / step
    if abs(count - round(count)) > 1e-9 * max(1.0, count):
        last = low + int(count) * step
        shown = show(round(last, 12) if isinstance(last, float) else last)
        raise loc.error(at + ("step",), f"{show(step)} does not divide the range {show(low)} to {show(high)} "
                                        f"(high - low must be a whole number of steps: e.g. high {shown})")


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


def check_conditions(loc: Located, params: list[Param]) -> None:
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
    try:  # parents must come before children in some order: no cycles (the search space relies on it)
        ordered(params)
    except ConditionCycle as exc:
        raise loc.error(("search", exc.pending[0].name, "when"), "conditions form a cycle among " + ", ".join(
            q.name for q in exc.pending) + " (a parameter must not depend, even indirectly, on itself)") from None


def check_values(loc: Located, params: list[Param], base: TrainConfig) -> None:
    """Every value the searcher may propose must make a valid config: both bounds of a range, every choice, and
    every pair of those across two parameters (cross-field rules such as warmup_epochs < epochs)."""
    cands = {p.name: list(p.choices) if p.kind == "choice" else [p.low, p.high] for p in params}

    def fail(p: Param, i: int, exc: ValidationError, other: str = "") -> NoReturn:
        sub = (p.kind, i) if p.kind == "choice" else (p.kind,)
        raise loc.error(("search", p.name) + sub, explain_first(TrainConfig, exc) + other) from None

    for p in params:
        seen: list = []
        for i, v in enumerate(cands[p.name]):
            try:
                value = _field(base.with_overrides({p.name: v}), p.name)
            except ValidationError as exc:
                fail(p, i, exc)
            if p.kind == "choice" and value in seen:
                first = p.choices[seen.index(value)]
                raise loc.error(("search", p.name, "choice", i), f"{show(v)} is the same value as {show(first)} "
                                f"once read as {p.name} takes it ({show(value)}) (each choice value may appear once)")
            seen.append(value)
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


def _field(config: TrainConfig, name: str) -> Any:
    """The value of key ``name`` (``lr``, ``model.quantizer``) in ``config``."""
    section, _, leaf = name.rpartition(".")
    return getattr(getattr(config, section or "train"), leaf)


def _enabled(p: Param, values: dict) -> bool:
    """False when ``values`` sets a parent of ``p`` to a value that disables it."""
    return all(values[k] in allowed for k, allowed in p.when.items() if k in values)

