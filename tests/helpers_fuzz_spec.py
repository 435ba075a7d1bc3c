"""Hypothesis strategies for the fuzzing pass: mutations of the shipped sweep and train files, emitted as YAML text
(some with raw-byte damage on top), and damage to a results directory's records.

A mutation is a short list of operations on the parsed file (drop, set, rename, add a key; bend a distribution),
each described in words, so a finding's reproducer reads as "search_spaces/cifar10-cpu.yaml, then train.epochs :=
'abc'". Values come from a fixed pool of edge cases, some written as raw YAML tokens (``yes``, ``010``, ``0x10``,
``.nan``, ``!!binary ...``) to get YAML 1.1's own conversions.
"""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
import yaml
from hypothesis import strategies as st
from pydantic import BaseModel

from helpers_fuzz_rules import strip_optional
from ternsearch.spec.models import TrainFile, _SweepModel
from ternsearch.spec.yaml12 import CoreLoader

REPO = Path(__file__).resolve().parents[1]
BASES = {str(p.relative_to(REPO)): yaml.load(p.read_text(), Loader=CoreLoader)  # noqa: S506 (a SafeLoader)
         for folder in ("search_spaces", "configs") for p in sorted((REPO / folder).glob("*.yaml"))}
# Valid files that reach other paths than the shipped ones (the sweep ones pass `sweep --dry-run` here).
_SMALL = {"data": {"subset": 600, "val_fraction": 0.2}, "model": {"arch": "tinynet"}}
BASES.update({
    "inline:multi": {"name": "multi", "metric": [{"name": "val_acc", "mode": "max"},
                                                 {"name": "ternary_zero_frac", "mode": "max"}], **_SMALL,
                     "train": {"epochs": 3}, "search": {"lr": {"loguniform": [0.01, 0.1]},
                                                        "model.quantizer": {"choice": ["twn", "ttq"]}},
                     "searcher": {"algorithm": "nsga2", "num_samples": 4}, "scheduler": {"algorithm": "fifo"},
                     "storage": {"path": "results2"}, "tracking": {"enabled": False}},
    "inline:grid": {"name": "grid", "data": {"subset": 600}, "model": {"arch": "tinynet"},
                    "train": {"epochs": 2, "batch_size": 32},
                    "search": {"optimizer": {"choice": ["sgd", "adam"]}, "data.val_fraction": {"choice": [0.1, 0.2]},
                               "schedule": {"choice": ["step", "cyclic", "plateau"]}},
                    "searcher": {"algorithm": "grid", "num_samples": 1}, "scheduler": {"algorithm": "asha",
                                                                                       "grace_period": 1},
                    "storage": {"path": "results2"}, "resources": {"cpus_per_worker": 0.5, "use_gpu": False}},
    "inline:ttq": {"name": "ttq", **_SMALL, "model": {"arch": "tinynet", "quantizer": "ttq"},
                   "train": {"schedule": "cosine_restarts", "restart_epochs": 1},
                   "search": {"model.ttq_threshold": {"uniform": [0.02, 0.1], "step": 0.01},
                              "warmup_epochs": {"int": [0, 2], "log": False}, "epochs": {"choice": [3, 4]}},
                   "searcher": {"algorithm": "random", "seed": 7, "num_samples": 3, "max_concurrent_trials": 1},
                   "tracking": {"uri": "sqlite:///t.db", "experiment": "ttq"}},
    "inline:train-tiny": {"name": "tiny", **_SMALL, "train": {"epochs": 1, "batch_size": 32, "lr": 0.01},
                          "output": "runs/{name}-x", "tracking": {"enabled": False}},
})
SWEEP_BASES = sorted(k for k, v in BASES.items() if "search" in v)
TRAIN_BASES = sorted(k for k, v in BASES.items() if "search" not in v)


class Raw(str):
    """A YAML token written into the file as it is (not quoted)."""


RAW = [Raw(t) for t in ("yes", "no", "on", "off", "010", "0x10", "0o17", "1_000", "12:30:00", "1e3", ".inf", "-.inf",
                        ".nan", "~", "null", "''", "!!binary aGVsbG8=", "!!python/name:os.system", "!!set {a, b}",
                        "!!timestamp 2026-01-01T00:00:00Z", "!!float '1'", "*undefined_alias", "&anchor 1",
                        "\"\\ud800\"", "\"\\x00\"", "\"\\t\"", "[" * 1200 + "]" * 1200, "{a: 1, a: 2}",
                        "!!str", "|\n  two\n  lines", "- 1", "{<<: {epochs: 3}}", "{<<: [{lr: 0.1}, {lr: 0.2}]}",
                        "{<<: 1}", "{<<: {name: x}, name: y}", "&a {subset: 600}", "*a")]
SCALARS = [0, -1, 1, 2, 3, 0.5, -0.5, 1e308, -1e308, 1e-320, 2 ** 63, 10 ** 30, float("nan"), float("inf"),
           float("-inf"), "", " ", "abc", "x" * 100_000, True, False, None, datetime.date(2026, 1, 1),
           "ünïcødé ☃", "\x00", "../../etc", "/", "~", "{name}", "{0}", "{name.__class__}", "%s", "None",
           "s3://bucket/x", "http://127.0.0.1:9", "sqlite:///x.db", "val_acc", "max", "tinynet", "twn", "cosine",
           "auto", "true", b"\x00\xff"]
NESTED = [[], {}, [1, [2, [3]]], {"a": {"b": 1}}, [{"x": 1}], ["a", "b"], [0.01, 0.5], [0.5, 0.01],
          {"loguniform": [0.01, 0.5]}, {"choice": []}]
EXTRA_KEYS = ["foo", "Name", "lr", "epochs", "search", "searcher", "trainn", "model.arch", "storage", "origin",
              "output", "failure", "metric", "data", Raw("1"), Raw("true"), Raw("null"), Raw("[a, b]"), ""]
SEARCH_NAMES = ["lr", "epochs", "batch_size", "warmup_epochs", "momentum", "augment", "optimizer", "schedule",
                "model.quantizer", "model.arch", "model.ttq_threshold", "data.val_fraction", "data.subset",
                "distill_weight", "seed", "precision", "nope", "model.nope", "data.root", "train.lr"]
NUMBERS = [0, -1, 1, 5, 0.5, 1e308, -1e308, float("nan"), float("inf"), 1e-320, 10 ** 30, Raw(".nan"), Raw("1e3"),
           "0.1", True, None]

# copies: a drawn list or mapping is mutated by later operations, and the pools must stay as they are
values = st.one_of(st.sampled_from(SCALARS), st.sampled_from(RAW), st.sampled_from(NESTED)).map(copy.deepcopy)


# ------------------------------------------------------------------------------------------------- YAML text
def dump(doc: Any) -> bytes:
    """``doc`` as YAML, each ``Raw`` token written verbatim."""
    raws: list[str] = []

    def swap(node):
        if isinstance(node, Raw):
            raws.append(str(node))
            return f"zzraw{len(raws) - 1}zz"
        if isinstance(node, dict):
            return {swap(k): swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    text = yaml.safe_dump(swap(doc), sort_keys=False, allow_unicode=True, width=1000, default_flow_style=None)
    for i in reversed(range(len(raws))):
        text = text.replace(f"zzraw{i}zz", raws[i])
    return text.encode("utf-8", "surrogatepass")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += _paths(v, prefix + (k,))
    return out


def _maps(doc: dict) -> list[tuple]:
    return [()] + [p for p in _paths(doc) if isinstance(_get(doc, p), dict)]


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _kp(path: tuple) -> str:
    return ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in path) or "(top)"


def show(v: Any) -> str:
    text = repr(v) if not isinstance(v, Raw) else f"raw `{v}`"
    return text if len(text) <= 60 else text[:40] + f"...({len(text)} chars)"


def _rename(parent: dict, old: Any, new: Any) -> None:
    items = [(new if k == old else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)


@st.composite
def _op_drop(draw, doc):
    path = draw(st.sampled_from(_paths(doc)))
    del _get(doc, path[:-1])[path[-1]]
    return f"drop {_kp(path)}"


@st.composite
def _op_set(draw, doc):
    path = draw(st.sampled_from(_paths(doc)))
    value = draw(values)
    _get(doc, path[:-1])[path[-1]] = value
    return f"{_kp(path)} := {show(value)}"


@st.composite
def _op_rename(draw, doc):
    path = draw(st.sampled_from([p for p in _paths(doc) if isinstance(p[-1], str)]))
    key = path[-1]
    swapped = key[1] + key[0] + key[2:] if len(key) > 1 else key + key
    new = draw(st.sampled_from([key.upper(), key.capitalize(), key + "s", key[:-1], swapped, key.replace("_", "-"),
                                " " + key, key.replace("e", "\u0435"), "search", "train", Raw("1"), Raw("true")]))
    parent = _get(doc, path[:-1])
    if new in parent:
        return f"rename {_kp(path)} (no-op)"
    _rename(parent, key, new)
    return f"rename {_kp(path)} -> {show(new)}"


@st.composite
def _op_add(draw, doc):
    where = draw(st.sampled_from(_maps(doc)))
    key, value = draw(st.sampled_from(EXTRA_KEYS)), draw(values)
    _get(doc, where)[key] = value
    return f"add {_kp(where + (key,))} = {show(value)}"


@st.composite
def _distribution(draw):
    kind = draw(st.sampled_from(["loguniform", "uniform", "int", "choice", "normal"]))
    if kind == "choice":
        body = draw(st.lists(st.sampled_from(["sgd", "adam", 1, 2, 0.5, True, None, "cosine", "twn", 0]), max_size=4))
    else:
        body = [draw(st.sampled_from(NUMBERS)), draw(st.sampled_from(NUMBERS))]
    dist = {kind: body}
    pools = {"step": [0, -1, 0.5, 2, "x", None], "log": [True, False, "yes", 2],
             "when": [{"augment": ["mixup"]}, {"nope": [1]}, {}, "x"]}
    for extra in draw(st.lists(st.sampled_from(["step", "log", "when"]), max_size=2, unique=True)):
        dist[extra] = copy.deepcopy(draw(st.sampled_from(pools[extra])))
    return dist


@st.composite
def _op_dist(draw, doc):
    search = doc.get("search")
    if not isinstance(search, dict) or not search:
        search = doc["search"] = {}
    if not search or draw(st.booleans()):
        name, dist = draw(st.sampled_from(SEARCH_NAMES)), draw(_distribution())
        search[name] = dist
        return f"search.{name} := {show(dist)}"
    name = draw(st.sampled_from(sorted(map(str, search))))
    dist = search[name]
    if not isinstance(dist, dict) or not dist:
        return f"search.{name} (not a mapping: no-op)"
    kind = draw(st.sampled_from(sorted(map(str, dist))))
    body = dist[kind]
    how = draw(st.sampled_from(["swap", "bound", "kind", "empty", "dup", "second"]))
    if how == "swap" and isinstance(body, list):
        body.reverse()
    elif how == "bound" and isinstance(body, list) and body:
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.sampled_from(NUMBERS))
        return f"search.{name}.{kind}[{i}] := {show(body[i])}"
    elif how == "kind":
        new = draw(st.sampled_from(["loguniform", "uniform", "int", "choice", "Uniform", "normal"]))
        if new not in dist:
            _rename(dist, kind, new)
        return f"search.{name}: {kind} -> {new}"
    elif how == "empty":
        dist[kind] = []
    elif how == "dup" and isinstance(body, list) and body:
        body.append(body[0])
    elif how == "second":
        other = "choice" if kind != "choice" else "uniform"
        dist[other] = [1, 2]
        return f"search.{name}: add a second distribution {other}"
    return f"search.{name}.{kind}: {how}"


@st.composite
def _op_cycle(draw, doc):
    """Two choice parameters, each enabled by the other (or one by itself)."""
    if not isinstance(doc.get("search"), dict):
        doc["search"] = {}
    choices = {"augment": ["standard", "mixup"], "schedule": ["cosine", "step"], "optimizer": ["sgd", "adam"]}
    a, b = draw(st.sampled_from([("augment", "schedule"), ("optimizer", "optimizer"), ("schedule", "augment")]))
    doc["search"][a] = {"choice": choices[a], "when": {b: choices[b][:1]}}
    doc["search"][b] = {"choice": choices[b], "when": {a: choices[a][-1]}}
    return f"search: {a} and {b} conditioned on each other"


@st.composite
def _op_metric(draw, doc):
    one = {"name": draw(st.sampled_from(["val_acc", "ternary_zero_frac", "test_acc", "val_loss"])),
           "mode": draw(st.sampled_from(["max", "min", "maximize"]))}
    value = draw(st.sampled_from([[one], [one, one], [one, {"name": "val_loss", "mode": "min"}],
                                  [one, {"name": "ternary_zero_frac", "mode": "max"}] * 2, one, [], "val_acc"]))
    doc["metric"] = copy.deepcopy(value)
    return f"metric := {show(value)}"


def _sections(model: type[BaseModel]) -> dict:
    return {k: f.annotation for k, f in model.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}


_SECTIONS = {"sweep": _sections(_SweepModel), "train": _sections(TrainFile)}


def _edge_but_valid(info) -> list:
    """Values at the edges of what a field takes: its choices, its bounds, YAML spellings of its type."""
    ann, optional = strip_optional(info.annotation)
    out = [None] if optional else []
    if get_origin(ann) is Literal:
        out += list(get_args(ann))
    if ann is bool:
        out += [True, False, Raw("yes"), Raw("off"), Raw("on")]
    if ann in (int, float):
        for m in info.metadata:
            for attr, step in (("ge", 0), ("gt", 1), ("le", 0), ("lt", -1)):
                if isinstance(m, getattr(at, attr.capitalize())):
                    edge = getattr(m, attr)
                    out.append(edge + step if ann is int else edge + step * 1e-9)
        out += [Raw("010"), Raw("0x10"), Raw("1_0")] if ann is int else [Raw("1e-3"), Raw("5.0e-1")]
    if ann is str:
        out += ["x", "a" * 200, "ünï"]
    if info.default is not None and isinstance(info.default, (int, float, str, bool)):
        out.append(info.default)
    return out or ["x", 1, None]


@st.composite
def _op_valid(draw, doc):
    sections = _SECTIONS["sweep" if "search" in doc else "train"]
    section = draw(st.sampled_from(sorted(sections)))
    fields = sections[section].model_fields
    key = draw(st.sampled_from(sorted(fields)))
    value = draw(st.sampled_from(_edge_but_valid(fields[key])))
    if not isinstance(doc.get(section), dict):
        doc[section] = {}
    doc[section][key] = value
    return f"{section}.{key} := {show(value)}"


_OPS = [_op_drop, _op_set, _op_set, _op_rename, _op_add, _op_dist, _op_dist, _op_metric, _op_cycle] + [_op_valid] * 6


@st.composite
def _raw_damage(draw, data: bytes):
    how = draw(st.sampled_from(["truncate", "bad-utf8", "tab", "dup-line", "del-line", "crlf", "bom", "nul",
                                "two-docs", "comments-only"]))
    lines = data.split(b"\n")
    i = draw(st.integers(0, max(len(lines) - 1, 0)))
    at = draw(st.integers(0, len(data)))
    if how == "truncate":
        return data[:at], f"truncated at byte {at}"
    if how == "bad-utf8":
        junk = draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
        return data[:at] + junk + data[at:], f"bytes {junk!r} inserted at byte {at}"
    if how == "tab":
        lines[i] = b"\t" + lines[i].lstrip(b" ")
    elif how == "dup-line":
        lines.insert(i, lines[i])
    elif how == "del-line":
        del lines[i]
    elif how == "crlf":
        return data.replace(b"\n", b"\r\n"), "CRLF line ends"
    elif how == "bom":
        return b"\xef\xbb\xbf" + data, "UTF-8 BOM first"
    elif how == "nul":
        return data[:at] + b"\x00" + data[at:], f"NUL at byte {at}"
    elif how == "two-docs":
        return data + b"---\nname: second\n", "a second YAML document"
    elif how == "comments-only":
        return b"# nothing but a comment\n", "only a comment"
    return b"\n".join(lines), f"{how} at line {i + 1}"


@st.composite
def spec_files(draw, prefer: str = "") -> tuple[bytes, tuple[str, ...]]:
    """(the file's bytes, what was done: the base file first); mostly a sweep or train file as ``prefer`` says."""
    pool = {"sweep": SWEEP_BASES, "train": TRAIN_BASES}.get(prefer, sorted(BASES))
    base = draw(st.sampled_from(pool if draw(st.integers(0, 4)) else sorted(BASES)))
    doc, ops = copy.deepcopy(BASES[base]), [base]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 2, 3]))):
        if not doc:
            break
        ops.append(draw(draw(st.sampled_from(_OPS))(doc)))
    data = dump(doc)
    if draw(st.integers(0, 7)) == 0:
        data, what = draw(_raw_damage(data))
        ops.append(what)
    return data, tuple(ops)


# --------------------------------------------------------------------------------------------- results damage
_JSON_VALUES = [None, "", "x", -1, 0, 1e308, float("nan"), [], {}, True, "../../etc/passwd", 1.5, "val_acc"]
_RECORD_PATHS = {
    "sweep.json": [["name"], ["metric"], ["mode"], ["objectives"], ["params"], ["base"], ["base", "train"],
                   ["base", "train", "epochs"], ["base", "model", "arch"], ["spec_file"], ["spec_sha256"],
                   ["tracking_uri"], ["started"], ["experiment"]],
    "trials.json": [["<first>"], ["<first>", "last"], ["<first>", "last", "val_acc"], ["<first>", "config"],
                    ["<first>", "config", "lr"], ["<first>", "status"], ["<first>", "checkpoint"],
                    ["<first>", "number"], ["<first>", "trial_id"], ["<first>", "epochs"]],
    "history.jsonl": [["<line0>", "epoch"], ["<line0>", "val_acc"], ["<line0>", "trial_id"], ["<line0>"]],
}


@st.composite
def results_damage(draw) -> dict:
    """An operation on results/mut (a copy of results/hand), applied by the worker."""
    file = draw(st.sampled_from(["sweep.json", "trials.json", "history.jsonl", "spec.yaml"]))
    kind = draw(st.sampled_from(["truncate", "replace", "drop", "set", "delete", "bad-utf8"]))
    op: dict = {"file": file, "kind": kind}
    if kind == "truncate":
        op["fraction"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.99]))
    elif kind == "replace":
        op["text"] = draw(st.sampled_from(["", "[]", "null", "{}", "1", "{\"name\": 1}", "name: [", "\x00"]))
    elif kind in ("drop", "set"):
        op["path"] = draw(st.sampled_from(_RECORD_PATHS.get(file, [["name"]])))
        if kind == "set":
            op["value"] = json.dumps(draw(st.sampled_from(_JSON_VALUES)))
    return op


def describe_results_op(op: dict) -> str:
    extra = {k: v for k, v in op.items() if k not in ("file", "kind")}
    return f"results/mut/{op['file']}: {op['kind']} {extra if extra else ''}".rstrip()
