"""The fuzzing pass's 'must refuse' rules: when is a generated sweep or train file *certainly* invalid?

``spec_violation(raw_bytes)`` reads the bytes as the CLI does (UTF-8, YAML 1.2 core scalars: ``spec.yaml12``) and
returns the first rule the file breaks, or None. The rules are conservative on purpose: each one is a documented
rule of the file format (README "Files", ``tests/bad_specs/``, the strict models' own types, choices and bounds),
checked on the parsed data only, so a ``None`` never means "valid", only "not certainly invalid". ``ternsearch
validate``, ``sweep --dry-run`` or ``train`` exiting 0 on a file with a violation is a finding. Nothing here imports
torch.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Literal, Optional, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel

from ternsearch.spec.models import TrainFile, _SweepModel
from ternsearch.spec.yaml12 import CoreLoader
from trainables.config import DataConfig, MetricConfig, ModelConfig, TrainParams
from trainables.registry import known_models

__all__ = ["spec_violation", "parse_spec_bytes", "NotParsed", "strip_optional"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SWEEP_ONLY = ("search", "searcher", "scheduler", "resources", "storage", "failure")
_DIST = ("loguniform", "uniform", "int", "choice")
_PARAM_KEYS = (*_DIST, "step", "log", "when")
_BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}  # what pydantic takes


class NotParsed(Exception):
    """The bytes are not one UTF-8 YAML mapping with unique keys (the CLI must refuse them)."""


def _unique_keys(node: yaml.Node) -> Optional[str]:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                if k.value in seen:
                    return f"duplicate key {k.value!r}"
                seen.add(k.value)
            found = _unique_keys(k) or _unique_keys(v)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _unique_keys(item)
            if found:
                return found
    return None


def parse_spec_bytes(raw: bytes) -> dict:
    """The file's mapping, or NotParsed with the reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotParsed("not UTF-8") from None
    try:
        nodes = list(yaml.compose_all(text, Loader=CoreLoader))  # YAML 1.2 core scalars, as the CLI reads them
        if len(nodes) != 1 or nodes[0] is None:
            raise NotParsed(f"{len(nodes)} YAML documents")
        dup = _unique_keys(nodes[0])
        if dup:
            raise NotParsed(dup)
        data = yaml.load(text, Loader=CoreLoader)  # noqa: S506 (CoreLoader is a yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:  # TypeError: unhashable keys
        raise NotParsed(f"YAML error ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise NotParsed("top level is not a mapping")
    return data


# ------------------------------------------------------------------------------------------------ field rules
def strip_optional(ann: Any) -> tuple[Any, bool]:
    if get_origin(ann) is Union:
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) < len(get_args(ann)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True
    return ann, False


def _bounds(info) -> list:
    return [m for m in info.metadata if isinstance(m, (at.Gt, at.Ge, at.Lt, at.Le))]


def _out_of_bounds(value: float, info) -> Optional[str]:
    for m in _bounds(info):
        if isinstance(value, float) and math.isnan(value):
            return "nan where the field has bounds"
        if isinstance(m, at.Gt) and not value > m.gt:
            return f"not > {m.gt}"
        if isinstance(m, at.Ge) and not value >= m.ge:
            return f"not >= {m.ge}"
        if isinstance(m, at.Lt) and not value < m.lt:
            return f"not < {m.lt}"
        if isinstance(m, at.Le) and not value <= m.le:
            return f"not <= {m.le}"
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parses_as_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


_STRUCT = (dict, list, datetime.date)  # never a number, a word or a flag


def field_violation(info, value: Any) -> Optional[str]:
    """Why ``value`` can certainly not be this pydantic field's value, or None."""
    ann, optional = strip_optional(info.annotation)
    if value is None:
        return None if optional else "null for a field that is not optional"
    if get_origin(ann) is Literal:
        allowed = get_args(ann)
        hashable = not isinstance(value, (dict, list))
        return None if hashable and value in allowed and type(value) is type(allowed[0]) else \
            f"{value!r} not one of {allowed}"
    if ann is int:
        if isinstance(value, _STRUCT) or (isinstance(value, str) and not _parses_as_number(value)):
            return f"{type(value).__name__} for an integer field"
        if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
            return "not a whole number"
        return _out_of_bounds(value, info) if _is_num(value) else None
    if ann is float:
        if isinstance(value, _STRUCT) or (isinstance(value, str) and not _parses_as_number(value)):
            return f"{type(value).__name__} for a number field"
        return _out_of_bounds(value, info) if _is_num(value) else None
    if ann is bool:
        if isinstance(value, _STRUCT) or (isinstance(value, str) and value.strip().lower() not in _BOOL_WORDS):
            return f"{value!r} for a true/false field"
        return "a number other than 0/1 for a true/false field" if _is_num(value) and value not in (0, 1) else None
    if ann is str:
        return None if isinstance(value, (str, bytes)) else f"{type(value).__name__} for a text field"
    if get_origin(ann) is tuple:
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return "nested collection in a list of names"
        return None
    if get_origin(ann) is dict:
        return None if isinstance(value, dict) else "not a mapping"
    return None


def section_violation(model: type[BaseModel], path: str, value: Any) -> Optional[str]:
    if not isinstance(value, dict):
        return f"{path}: {type(value).__name__}, not a mapping"
    for key, v in value.items():
        if key not in model.model_fields:
            return f"{path}: unknown key {key!r}"
        why = field_violation(model.model_fields[key], v)
        if why:
            return f"{path}.{key}: {why}"
    if model is ModelConfig and "arch" in value and value["arch"] not in known_models():
        return f"{path}.arch: unknown model"
    return None


# ---------------------------------------------------------------------------------------------------- search:
def _searchable() -> dict:
    out = dict(TrainParams.model_fields)
    out.update({f"model.{k}": f for k, f in ModelConfig.model_fields.items()})
    out.update({f"data.{k}": DataConfig.model_fields[k] for k in ("val_fraction", "subset")})
    return out


def _fixed(data: dict) -> set:
    fixed = set()
    for section, prefix in (("train", ""), ("model", "model."), ("data", "data.")):
        if isinstance(data.get(section), dict):
            fixed |= {prefix + str(k) for k in data[section]}
    return fixed


def _range_violation(name: str, kind: str, raw: dict, info) -> Optional[str]:
    bounds = raw[kind]
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(_is_num(b) for b in bounds):
        return f"search.{name}.{kind}: not two numbers"
    low, high = bounds
    if not all(math.isfinite(b) for b in bounds):
        return f"search.{name}.{kind}: a bound is nan or infinite"
    if low > high:
        return f"search.{name}.{kind}: low > high"
    log = kind == "loguniform" or raw.get("log") is True
    if log and low <= 0:
        return f"search.{name}.{kind}: log scale with low <= 0"
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        return f"search.{name}.int: bounds not whole"
    if kind != "int" and strip_optional(info.annotation)[0] is int:
        return f"search.{name}: {kind} for an integer key"
    if "log" in raw and (kind != "int" or not isinstance(raw["log"], bool)):
        return f"search.{name}.log: not with {kind} / not true or false"
    if "step" in raw:
        step = raw["step"]
        if log or not _is_num(step) or not step > 0 or (kind == "int" and not float(step).is_integer()):
            return f"search.{name}.step: invalid step"
    for b in bounds:
        why = field_violation(info, int(b) if kind == "int" else b)
        if why:
            return f"search.{name}.{kind}: bound {b!r}: {why}"
    return None


def _param_violation(name: str, raw: Any, info, choices_of: dict) -> Optional[str]:
    if not isinstance(raw, dict):
        return f"search.{name}: not a distribution mapping"
    extra = [k for k in raw if k not in _PARAM_KEYS]
    if extra:
        return f"search.{name}: unknown key {extra[0]!r}"
    kinds = [k for k in _DIST if k in raw]
    if len(kinds) != 1:
        return f"search.{name}: {len(kinds)} distributions"
    kind = kinds[0]
    if "when" in raw:
        cond = raw["when"]
        if not isinstance(cond, dict) or not cond:
            return f"search.{name}.when: not a condition mapping"
        for parent, values in cond.items():
            vals = values if isinstance(values, list) else [values]
            if parent == name or parent not in choices_of or not vals:
                return f"search.{name}.when: {parent!r} is not another searched choice"
            if any(not any(v == c and type(v) is type(c) for c in choices_of[parent]) for v in vals):
                return f"search.{name}.when: a value {parent} never takes"
    if kind != "choice":
        return _range_violation(name, kind, raw, info)
    if "step" in raw or "log" in raw:
        return f"search.{name}: step/log with choice"
    values = raw["choice"]
    if not isinstance(values, list) or not values:
        return f"search.{name}.choice: not a non-empty list"
    for i, v in enumerate(values):
        if isinstance(v, (dict, list)) or v is None:
            return f"search.{name}.choice: a value is not a single value"
        if any(v == w and type(v) is type(w) for w in values[:i]):
            return f"search.{name}.choice: a value listed twice"
        why = field_violation(info, v)
        if why:
            return f"search.{name}.choice: {v!r}: {why}"
    return None


def search_violation(data: dict) -> Optional[str]:
    search = data["search"]
    if not isinstance(search, dict) or not search:
        return "search: empty or not a mapping"
    searchable, fixed = _searchable(), _fixed(data)
    choices_of = {str(k): v["choice"] for k, v in search.items()
                  if isinstance(v, dict) and isinstance(v.get("choice"), list)}
    for name, raw in search.items():
        if not isinstance(name, str) or name not in searchable:
            return f"search: {name!r} is not a searchable key"
        if name in fixed:
            return f"search.{name}: also fixed"
        why = _param_violation(name, raw, searchable[name], choices_of)
        if why:
            return why
    return None


# ---------------------------------------------------------------------------------------------- the whole file
def _metric_violation(value: Any, sweep: bool) -> Optional[str]:
    if sweep and isinstance(value, list):
        if not 2 <= len(value) <= 3:
            return f"metric: a list of {len(value)} objectives"
        for i, m in enumerate(value):
            why = section_violation(MetricConfig, f"metric[{i}]", m)
            if why:
                return why
        names = [m.get("name", "val_acc") for m in value]
        return "metric: an objective listed twice" if len(set(map(str, names))) < len(names) else None
    return section_violation(MetricConfig, "metric", value)


def _top_violation(data: dict, sweep: bool) -> Optional[str]:
    model = _SweepModel if sweep else TrainFile
    keys = [k for k in _SWEEP_ONLY if k in data]
    if keys and not sweep:
        return f"{keys[0]}: a sweep setting in a file without search:"
    for key in data:
        if not isinstance(key, str):
            return f"top level: key {key!r} is not a name"
        if key not in model.model_fields:
            return f"top level: unknown key {key!r}"
    if "name" not in data:
        return "name: missing"
    name = data["name"]
    if isinstance(name, bytes):  # !!binary: pydantic takes UTF-8 bytes for a string
        name = name.decode("utf-8", "replace")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return "name: not a valid name"
    return None


def spec_violation(raw: bytes) -> Optional[str]:
    """The first 'must refuse' rule the file breaks (for any command that reads it), or None."""
    try:
        data = parse_spec_bytes(raw)
    except NotParsed as exc:
        return f"unreadable: {exc}"
    sweep = "search" in data
    why = _top_violation(data, sweep)
    if why:
        return why
    model = _SweepModel if sweep else TrainFile
    for key, value in data.items():
        if key == "metric":
            why = _metric_violation(value, sweep)
        elif key in ("name", "search"):
            continue
        else:
            info = model.model_fields[key]
            section = info.annotation if isinstance(info.annotation, type) else None
            if section is not None and issubclass(section, BaseModel):
                why = section_violation(section, key, value)
            else:
                why = field_violation(info, value)
        if why:
            return why
    if sweep:
        return search_violation(data) or _sweep_violation(data)
    return None


def _sweep_violation(data: dict) -> Optional[str]:
    """A few whole-sweep rules of the corpus that need no arithmetic across sections."""
    searcher = data.get("searcher") or {}
    metric = data.get("metric")
    if searcher.get("algorithm") == "grid" and any("choice" not in p for p in data["search"].values()):
        return "searcher.algorithm: grid with a range distribution"
    if searcher.get("algorithm") == "nsga2" and not isinstance(metric, list):
        return "searcher.algorithm: nsga2 with one objective"
    fraction = (data.get("data") or {}).get("val_fraction", 0.1)
    if _is_num(fraction) and fraction == 0:
        return "data.val_fraction: 0 in a sweep"
    return None
