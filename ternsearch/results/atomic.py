"""Writing records so that a crash cannot tear them: every JSON and YAML record of ternsearch (``sweep.json``,
``trials.json``, ``trials_lost.json``, ``best.yaml``, ``final_metrics.json``, ``tracking_unwritten.json``, the
copied spec, the report's files) is replaced whole, and ``history.jsonl`` is only ever appended a whole line.

``write_atomic`` and ``replace_with`` write a temporary file in the target's folder, flush and fsync it, and
``os.replace`` it onto the target: a reader (or a driver killed at any point, or a power cut) sees the old file or
the new one, never a mix. The temporary file is created with mode 0666 less the umask, and takes the mode of the
file it replaces; it is removed when the write fails. ``sync_dir`` also fsyncs the folder, so that the rename
itself survives a power cut (needed for a file that says something exists, like ``sweep.json``; the records
rewritten many times a second pass False: a lost rename leaves the previous, whole, version).

``append_line`` appends one record line to a ``.jsonl`` file, first cutting off a torn last line (a crash in the
middle of an earlier append, which never ended with its newline) so that the new record starts on a line of
its own; a last line that is whole but lacks only its newline gets the newline.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Callable, Optional

__all__ = ["write_atomic", "replace_with", "append_line", "torn_tail"]

_TAIL_BYTES = 1 << 16  # how far back append_line looks for a torn last line


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform or file system without directory handles: the rename is all there is
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_with(path: str | Path, write: Callable[[Path], None], *, sync_dir: bool = True) -> Path:
    """Replace ``path`` by what ``write(tmp)`` writes to a temporary path beside it (e.g. ``table.to_csv``).

    Raises whatever ``write`` raises, ``path`` untouched and the temporary file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as to any new file
    try:
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    return path


def write_atomic(path: str | Path, data: str | bytes, *, sync_dir: bool = True) -> Path:
    """Replace ``path`` by ``data`` (text is written as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return replace_with(path, lambda tmp: tmp.write_bytes(raw), sync_dir=sync_dir)


def _whole_record(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def torn_tail(data: bytes) -> Optional[int]:
    """Where a ``.jsonl`` file's torn last line starts (its bytes after the last newline, not a whole JSON value,
    NUL padding included), or None when the file ends in a newline or in a whole record."""
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if not tail.strip(b"\0 \t\r"):
        return start if tail else None
    return None if _whole_record(tail) else start


def append_line(path: str | Path, line: str, *, sync: bool = True) -> None:
    """Append ``line`` (one JSON record, without its newline) to ``path`` as a line of its own."""
    with open(path, "ab+") as f:  # appends go to the end whatever the position; reads may seek
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(max(0, end - _TAIL_BYTES))  # a record line is a few kB
            chunk = f.read()
            start = torn_tail(chunk) if b"\n" in chunk or end <= _TAIL_BYTES else None
            if start is not None:
                f.truncate(end - len(chunk) + start)
            elif not chunk.endswith(b"\n"):
                f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
