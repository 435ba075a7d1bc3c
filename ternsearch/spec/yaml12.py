"""How sweep and train files' YAML is read: ``yaml.safe_load`` with YAML 1.2 core-schema scalars, and limits on
aliases and nesting.

PyYAML implements YAML 1.1, where ``010`` is the octal number 8, ``yes``/``no``/``on``/``off`` are booleans,
``2026-01-01`` is a date and ``1e-5`` is a string. YAML 1.2 (2009), which most other tools read, fixed that; its
core schema is what a user means:

- integers: ``123``, ``-5``, ``010`` (ten), ``0o17``, ``0x1F``;
- floats: ``0.5``, ``1e-5``, ``1.0e-5``, ``.5``, ``.inf``, ``-.inf``, ``.nan``;
- booleans: only ``true``/``false`` (also ``True``, ``TRUE``, ...); ``yes``, ``no``, ``on``, ``off`` are words;
- null: ``~``, ``null`` or nothing;
- everything else, dates and ``1_000`` included, is a string.

A YAML alias repeats a node; nested aliases multiply (a "billion laughs" file of a few lines expands to 10**9
values) and an alias inside its own anchor makes a structure that contains itself. Both are refused before
anything is built, as is nesting deeper than any real file needs.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import yaml

__all__ = ["CoreLoader", "MAX_DEPTH", "MAX_NODES", "StructureProblem", "compose", "check_structure", "construct"]

MAX_NODES = 100_000  # values once every alias is expanded (the shipped specs have ~100)
MAX_DEPTH = 64  # levels of nesting (the shipped specs have 4)

_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
             "tag:yaml.org,2002:null", "tag:yaml.org,2002:timestamp"}


class CoreLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the YAML 1.2 core schema's implicit scalar types (module docstring)."""


CoreLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                 ["~", "n", "N", ""])
CoreLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                 list("-+0123456789"))
CoreLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
               r"|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: CoreLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # "010" is ten, not PyYAML's octal eight


CoreLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class StructureProblem(ValueError):
    """A composed document that must not be built: ``line`` is where the problem starts (1-based)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def compose(text: str) -> Optional[yaml.Node]:
    """The document's node graph (aliases are shared nodes, nothing is built yet); None for an empty document.

    Raises:
        yaml.YAMLError: a syntax error, or more than one document.
        StructureProblem: nesting deeper than the composer can follow.
    """
    loader = CoreLoader(text)
    try:
        return loader.get_single_node()
    except RecursionError:
        raise StructureProblem(1, f"the YAML is nested too deeply (at most {MAX_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_structure(root: yaml.Node) -> None:
    """Refuse a node graph that contains itself, nests deeper than ``MAX_DEPTH`` or expands (aliases repeated)
    to more than ``MAX_NODES`` values. Linear in the distinct nodes, however far the aliases would expand.

    Raises:
        StructureProblem: naming the line of the node where it starts.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if done:
            on_path.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(c)] for c in _children(node)), MAX_NODES + 1)
            continue
        if id(node) in size:
            continue
        line = node.start_mark.line + 1
        if id(node) in on_path:
            raise StructureProblem(line, "an alias refers to the mapping or list that contains it (a structure "
                                         "that contains itself; write the values out instead)")
        if depth > MAX_DEPTH:
            raise StructureProblem(line, f"the YAML is nested more than {MAX_DEPTH} levels deep (at most "
                                         f"{MAX_DEPTH})")
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in _children(node) if id(c) not in size)
    if size[id(root)] > MAX_NODES:
        node = root
        while True:  # down to the smallest node that is too big on its own: where the aliases multiply
            big = [c for c in _children(node) if size[id(c)] > MAX_NODES]
            if not big:
                break
            node = big[0]
        raise StructureProblem(node.start_mark.line + 1, f"aliases expand this to more than {MAX_NODES:,} values "
                               "(nested aliases multiply; write the values out, or repeat fewer)")


def construct(root: yaml.Node) -> Any:
    """The Python data of a node graph that passed ``check_structure`` (``yaml.safe_load`` of the core schema)."""
    loader = CoreLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()
