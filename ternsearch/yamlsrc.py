"""YAML loading that remembers where every key stood, so errors can name ``FILE:LINE``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ternsearch.errors import SpecError

__all__ = ["Located", "load_located"]

Path_ = tuple  # a key path: ("train", "lr") or ("search", "augment", "choice", 2)


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
        key = ".".join(str(p) for p in path)
        return SpecError(self.file, self.line(path), key, message)


def _walk(node: yaml.Node, path: Path_, lines: dict, file: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise SpecError(file, key_node.start_mark.line + 1, ".".join(map(str, path + (key,))),
                                "duplicate key (each key may appear once)")
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, file)


def load_located(path: str | Path) -> Located:
    """Read a YAML mapping with ``yaml.safe_load`` semantics and the line of every key.

    Raises:
        SpecError: unreadable file, YAML syntax error, duplicate key, empty file, top level not a mapping.
    """
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise SpecError(file, None, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, None, "", f"cannot read file ({exc.__class__.__name__})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = mark.line + 1 if mark is not None else None
        raise SpecError(file, line, "", f"YAML syntax error: {problem} (fix the YAML at this line)") from None
    if node is None or data is None:
        raise SpecError(file, 1, "", "empty file (expected a mapping with at least name:)")
    if not isinstance(data, dict):
        raise SpecError(file, node.start_mark.line + 1, "",
                        f"top level is a {type(data).__name__}, expected a mapping of keys")
    lines: dict = {}
    _walk(node, (), lines, file)
    return Located(file, data, lines)
