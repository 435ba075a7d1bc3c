"""Where ``export`` and ``report`` may write: never onto a sweep's records or the spec file that made it.

The rule, checked for every output before the command writes anything (``export -o``, ``export --packed``,
``export --onnx``, ``report -o`` and the report's ``trials.csv``/``trials.parquet``; a sweep's own ``best.yaml`` and
``report.html`` go through the same writers). An output path, relative ones taken from the current directory and
symlinks followed, is refused when

1. it is a directory;
2. it is the spec file that made the sweep (``spec_file`` in the results' ``sweep.json``) or a spec file named
   on the command line;
3. it is an existing file inside a results directory (the command's RESULTS, or any folder above the path that
   holds a ``sweep.json``, with all its subfolders: Tune's state, checkpoints, ``mlflow.db``...), unless it lies
   directly in that folder and carries one of the output's own regenerable names (``REGENERABLE``): the file a
   later run of the same command would write there anyway. New files may be written anywhere;
4. its folder cannot be created or written (a parent is a file, a read-only place).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from ternsearch.errors import OutputError
from ternsearch.results.files import SWEEP

__all__ = ["REGENERABLE", "check_output", "same_file", "unwritable"]

# The names each output may replace directly in a results directory (what the sweep or the same command wrote
# there): export -o writes best.yaml like the sweep's end does, --packed the packed model, --onnx the ONNX graph,
# report its HTML and its two tables.
REGENERABLE = {
    "export": frozenset({"best.yaml"}),
    "packed": frozenset({"best.tern"}),
    "onnx": frozenset({"best.onnx"}),
    "report": frozenset({"report.html"}),
    "tables": frozenset({"trials.csv", "trials.parquet"}),
}


def unwritable(path: Path) -> Optional[str]:
    """Why directory ``path`` (which may not exist yet) cannot be created and written in, or None when it can."""
    probe = path
    while not _exists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    longest = os.pathconf(probe, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for part in path.relative_to(probe).parts:
        if len(os.fsencode(part)) > longest:
            return f"the name {part[:40]}... is longer than the file system allows ({longest} bytes)"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".ternsearch-probe-"):
            return None
    except OSError as exc:
        return f"cannot write in {probe}: {exc.strerror or exc.__class__.__name__}"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name longer than the file system allows
        return False


def same_file(a: Path, b: Path) -> bool:
    """The same file, by path once resolved or, both existing, by device and inode (hard links)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))


def _results_root(target: Path, results_dir: Path) -> Optional[Path]:
    """The nearest folder above ``target`` that is ``results_dir`` or holds a sweep.json."""
    for folder in target.parents:
        if folder == results_dir or (folder / SWEEP).is_file():
            return folder
    return None


def _spec_file(results_dir: Optional[Path]) -> Optional[Path]:
    try:
        spec = json.loads((results_dir / SWEEP).read_text()).get("spec_file") if results_dir else None
    except (OSError, ValueError, AttributeError):
        return None
    return Path(spec) if isinstance(spec, str) and spec else None


def _why_refused(target: Path, results_dir: Path, allowed: frozenset, spec_files: Iterable[Path]) -> Optional[str]:
    if target.is_dir():
        return "it is a directory (give a file path)"
    root = _results_root(target, results_dir)
    for spec in (_spec_file(results_dir), _spec_file(root), *spec_files):
        if spec is not None and same_file(target, spec):
            return f"it is the spec file that made the sweep ({spec}; give another path)"
    if root is not None and target.exists() and not (target.parent == root and target.name in allowed):
        may = f"; there it may replace only {', '.join(sorted(allowed))}" if allowed else ""
        return f"it is a record of the sweep in {root}, which this command does not write{may}"
    why = unwritable(target.parent)
    if why:
        return f"its folder cannot be created or written ({why}; give a path in a folder you can write)"
    if target.exists() and not os.access(target, os.W_OK):
        return "the file is not writable (give a path you can write)"
    return None


def check_output(path: str | Path, results_dir: str | Path, allowed_names: Iterable[str] = (),
                 spec_files: Iterable[str | Path] = (), arg: Optional[str] = None) -> Path:
    """``path`` resolved, when the rule above lets a command reading ``results_dir`` write it; ``allowed_names``
    are the output's regenerable names (see ``REGENERABLE``), ``spec_files`` spec files named on the command line,
    ``arg`` the command-line argument that gave ``path`` (``--output``), named in the message.

    Raises:
        OutputError: one line naming ``path`` as given (after ``arg``) and why it is refused.
    """
    target = Path(path).resolve()
    why = _why_refused(target, Path(results_dir).resolve(), frozenset(allowed_names),
                       [Path(s) for s in spec_files])
    if why:
        raise OutputError(f"{arg + ' ' if arg else ''}{path}: refusing to write here: {why}")
    return target
