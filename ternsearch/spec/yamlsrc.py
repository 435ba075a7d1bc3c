"""YAML loading that remembers where every key stood, so errors can name ``FILE:LINE: key``.

``Located.validate`` checks the data against a pydantic model and turns the first problem (in file order) into
one ``SpecError`` line: what is wrong, then in parentheses what is allowed. The formatting is generic: it reads
the allowed keys, literal choices and numeric bounds from the model's fields, never from per-field tables.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ternsearch.errors import SpecError
from ternsearch.spec.yaml12 import StructureProblem, check_structure, compose, construct
from ternsearch.numbers import is_int

__all__ = ["Located", "load_located", "key_path", "show", "did_you_mean", "explain", "explain_first"]

Path_ = tuple  # a key path: ("train", "lr") or ("search", "augment", "choice", 2)


def key_path(path: Path_) -> str:
    """``("search", "lr", "choice", 2)`` -> ``search.lr.choice[2]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if is_int(part) else f".{part}" if out else str(part)
    return out


def show(value: Any) -> str:
    """A value as the user wrote it in YAML (``true``, ``null``, ``'text'``, ``0.5``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return {"inf": ".inf", "-inf": "-.inf"}.get(str(value), ".nan")
    if isinstance(value, str) and len(value) > 200:  # an error line stays a line: a pasted blob is cut
        return repr(value[:80]) + f"... ({len(value):,} characters)"
    return repr(value)


def did_you_mean(word: Any, allowed: list) -> str:
    """``"did you mean 'optimizer'? "`` when ``word`` is close to one of ``allowed``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


class Located:
    """Parsed YAML data plus the line of every key path."""

    def __init__(self, file: str, data: Any, lines: dict[Path_, int]):
        self.file, self.data, self.lines = file, data, lines

    def line(self, path: Path_) -> int | None:
        """Line of the longest prefix of ``path`` that the file has (1-based)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)

    def error(self, path: Path_, message: str) -> SpecError:
        return SpecError(self.file, self.line(path), key_path(path), message)

    def validate(self, cls: type[BaseModel], data: Any = None) -> BaseModel:
        """``cls.model_validate(data)`` (default: the whole file), the first problem in file order raised as a
        ``SpecError`` naming its key and line."""
        data = self.data if data is None else data
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            groups: dict[tuple, list[dict]] = {}
            for err in exc.errors():
                loc = _file_loc(data, tuple(err["loc"]), keep_last=err["type"] == "missing")
                groups.setdefault(loc, []).append(err)
            loc = min(groups, key=lambda k: (self.line(k) or 0, list(groups).index(k)))
            loc, message = explain(cls, loc, groups[loc])
            raise self.error(loc, message) from None


# ----------------------------------------------------------------------------------------- pydantic messages
def _file_loc(data: Any, loc: tuple, keep_last: bool) -> tuple:
    """The part of a pydantic ``loc`` that names keys of the file: union-branch tags such as ``bool`` or
    ``literal['auto']`` are dropped (they are not in the data)."""
    out, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (keep_last and i == len(loc) - 1):
            continue
        out.append(part)
    return tuple(out)


def _is_model(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _resolve(cls: Any, loc: tuple) -> tuple[Optional[FieldInfo], Any]:
    """Follow ``loc`` through nested models: the field of its last key (None at the top), and the model the key
    holds (None where it is not a model). Union-branch tags and keys inside a plain dict or list are skipped."""
    info = None
    for part in loc:
        if not _is_model(cls):
            return info, None
        if part not in cls.model_fields:
            continue
        info = cls.model_fields[part]
        cls = _model_in(info.annotation) or info.annotation
    return info, (cls if _is_model(cls) else None)


def _model_in(ann: Any) -> Any:
    """The first pydantic model inside an annotation (through Optional, Union, Annotated and list), or None."""
    if _is_model(ann):
        return ann
    for arg in get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _literals(ann: Any) -> list:
    if get_origin(ann) is Literal:
        return list(get_args(ann))
    if ann is bool:
        return [True, False]
    if get_origin(ann) is Union:
        return [v for a in get_args(ann) for v in _literals(a)]
    return []


def _bounds(info: Optional[FieldInfo]) -> str:
    ops = {at.Gt: ("gt", ">"), at.Ge: ("ge", ">="), at.Lt: ("lt", "<"), at.Le: ("le", "<=")}
    parts = [f"{sym} {getattr(m, attr)}" for m in (info.metadata if info else ()) for t, (attr, sym) in ops.items()
             if isinstance(m, t)]
    return " and ".join(parts)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
               "dict": "a mapping", "model": "a mapping", "list": "a list", "tuple": "a list", "none": "null"}


def explain(cls: type[BaseModel], loc: tuple, errors: list[dict]) -> tuple[tuple, str]:
    """``(key path, "what is wrong (what is allowed)")`` for the pydantic errors of one key (several when the
    field is a union: one per branch)."""
    err = errors[0]
    kind, got = err["type"], err.get("input")
    info, holds = _resolve(cls, loc)
    if kind == "extra_forbidden":
        parent = _resolve(cls, loc[:-1])[1]
        allowed = list(parent.model_fields) if parent else []
        return loc, f"unknown key ({did_you_mean(loc[-1], allowed)}allowed: {', '.join(allowed)})"
    if kind == "missing":
        where = f"under {key_path(loc[:-1])}:" if loc[:-1] else "at the top level"
        return loc, f"required key is missing (add {loc[-1]}: {where})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ctx = err.get("ctx", {})
        inner = " and ".join(f"{sym} {show(ctx[k])}" for k, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"),
                                                                     ("le", "<=")) if k in ctx)
        return loc, f"{show(got)} is out of range (must be {_bounds(info) or inner or err['msg'].lower()})"
    if kind == "string_too_short":
        return loc, f"{show(got)} is empty (give a value)"
    if kind == "finite_number":
        return loc, f"{show(got)} is not a finite number (give a number such as 1 or 0.5)"
    if kind == "int_from_float":
        return loc, f"{show(got)} is not a whole number (expected an integer)"
    if kind in ("value_error", "assertion_error"):
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        # A model-level check names the field it is about first ("warmup_epochs (5) must be ..."): point there.
        first = message.split(" ", 1)[0]
        if holds is not None and first in holds.model_fields:
            loc = loc + (first,)
        return loc, message
    choices = _literals(info.annotation) if info else []
    if any(e["type"] == "literal_error" for e in errors) and choices:
        names = [show(c).strip("'") for c in choices]
        return loc, f"{show(got)} is not allowed ({did_you_mean(got, names)}choose from: {', '.join(names)})"
    expected = [_TYPE_NAMES.get(e["type"].split("_")[0], e["type"]) for e in errors
                if e["type"].endswith(("_type", "_parsing"))]
    if expected:
        return loc, f"{show(got)} has the wrong type (expected {' or '.join(dict.fromkeys(expected))})"
    return loc, f"{err['msg']} (got {show(got)})"


def explain_first(cls: type[BaseModel], exc: ValidationError) -> str:
    """The message of ``exc``'s first problem (the errors of a union field taken together), without its key."""
    errors = exc.errors()
    loc = tuple(errors[0]["loc"])
    field = _resolve(cls, loc)[0]
    same = [e for e in errors if _resolve(cls, tuple(e["loc"]))[0] is field] if field else errors[:1]
    return explain(cls, loc, same)[1]


# ---------------------------------------------------------------------------------------------------- loading
def _walk(node: yaml.Node, path: Path_, lines: dict, file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor`: the merged keys keep their anchor's lines
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a list or mapping"
                raise SpecError(file, line, key_path(path), f"key {shown} is not a name (keys are words such as "
                                "lr or model.quantizer; quote it if it must be a number or true/false)")
            key = key_node.value
            if key in seen:
                raise SpecError(file, line, key_path(path + (key,)),
                                f"duplicate key, first set on line {seen[key]} (each key may appear once)")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, file)


def load_located(path: str | Path) -> Located:
    """Read a YAML mapping (``yaml.safe_load`` with YAML 1.2 core-schema scalars, see :mod:`.yaml12`) and the line
    of every key.

    Raises:
        SpecError: unreadable file, not UTF-8, YAML syntax error, an alias bomb or a structure that contains
            itself, duplicate key, empty file, top level not a mapping.
    """
    file = str(path)
    text = _read_text(file)
    try:
        node = compose(text)
        if node is not None:
            check_structure(node)
        data = None if node is None else construct(node)
    except StructureProblem as exc:
        raise SpecError(file, exc.line, "", exc.message) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(file, line, "", f"YAML syntax error: {problem}" + (f" {context}" if context else "")
                        + " (fix the YAML at this line)") from None
    if node is None or data is None:
        raise SpecError(file, 1, "", "the file has no YAML content (expected a mapping of keys: name:, then "
                                     "search:, train:, ...)")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {show(data)}"
        raise SpecError(file, node.start_mark.line + 1, "",
                        f"the top level is {kind} (expected a mapping of keys: name:, then search:, train:, ...)")
    lines: dict = {}
    _walk(node, (), lines, file)
    return Located(file, data, lines)


def _read_text(file: str) -> str:
    """The file's text: UTF-8 (a byte-order mark is dropped); anything else is refused naming the line."""
    try:
        raw = Path(file).read_bytes()
    except FileNotFoundError:
        raise SpecError(file, None, "", "no such file (give the path of a sweep or train YAML file)") from None
    except IsADirectoryError:
        raise SpecError(file, None, "", "is a directory (give the path of a sweep or train YAML file)") from None
    except OSError as exc:
        raise SpecError(file, None, "", f"cannot read the file: {exc.strerror or exc.__class__.__name__} (give a "
                                        "readable sweep or train YAML file)") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(file, 1, "", "the file is UTF-16 (save it as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        guess = ", probably Latin-1 or Windows-1252" if _decodes_as_latin(raw) else ""
        raise SpecError(file, line, "", f"byte 0x{bad} is not UTF-8: the file is in another encoding{guess} "
                                        "(save it as UTF-8)") from None


def _decodes_as_latin(raw: bytes) -> bool:
    """Bytes that read as Windows-1252 text: no undefined bytes and no C0 controls other than whitespace."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 32 and c not in "\t\n\r" for c in text)
