"""Where CIFAR-10 lies on disk and whether it is all there: file names and sizes, nothing read, no torch.

The sweep driver checks the data before it starts Ray; importing torch for that would cost it 1.3 s that it
can otherwise spend while Ray starts. :mod:`trainables.data` re-exports all of this.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from trainables.config import DataConfig
from trainables.errors import TrainablesError

PathLike = Union[str, "os.PathLike[str]"]

BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
BIN_TEST = "test_batch.bin"
PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PY_TEST = "test_batch"
PY_META = "batches.meta"  # torchvision's CIFAR10 refuses to load without it

_RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes, each 32x32 row-major
_PER_FILE = 10_000
BIN_FILE_BYTES = _RECORD * _PER_FILE  # 30,730,000

DEFAULT_DOWNLOAD_ROOT = "~/.cache/ternsearch"

_HOW_TO_GET = (
    "set TERNSEARCH_DATA (or data.root) to a folder containing cifar-10-batches-bin/ or cifar-10-batches-py/, "
    "or set data.download: true to let torchvision download CIFAR-10 (~170 MB)"
)


class DataError(TrainablesError):
    """The data is missing, incomplete, corrupt, or cannot be split as asked. The message is one line, for users."""


def resolve_root(root: Optional[PathLike]) -> Optional[Path]:
    """Return the data folder: ``root`` if given, else ``$TERNSEARCH_DATA``, else None.

    Args:
        root: A folder path (``~`` is expanded), or None/empty to fall back to the environment.

    Returns:
        The expanded path (not checked for existence), or None when neither is set.
    """
    chosen = os.fspath(root) if root is not None else ""
    chosen = chosen or os.environ.get("TERNSEARCH_DATA", "")
    return Path(chosen).expanduser() if chosen else None


def _data_dir(root: Optional[PathLike], download: bool) -> Optional[Path]:
    """The folder to read (and download into): the resolved root, or the cache folder when downloading."""
    resolved = resolve_root(root)
    if resolved is None and download:
        return Path(DEFAULT_DOWNLOAD_ROOT).expanduser()
    return resolved


def _missing(folder: Path, layout: str) -> list[str]:
    """Names (relative to ``folder``) of the files of ``layout`` that are absent or have the wrong size."""
    if layout == BIN_DIR:
        bad = []
        for name in (*BIN_TRAIN, BIN_TEST):
            path = folder / BIN_DIR / name
            if not path.is_file():
                bad.append(f"{BIN_DIR}/{name}")
            elif path.stat().st_size != BIN_FILE_BYTES:
                bad.append(f"{BIN_DIR}/{name} ({path.stat().st_size} bytes, expected {BIN_FILE_BYTES})")
        return bad
    # Pickle sizes vary with the pickle protocol; torchvision checks their md5 when it reads them.
    return [
        f"{PY_DIR}/{name}"
        for name in (*PY_TRAIN, PY_TEST, PY_META)
        if not (folder / PY_DIR / name).is_file() or (folder / PY_DIR / name).stat().st_size == 0
    ]


def _layout(folder: Path) -> Optional[str]:
    """The first complete layout in ``folder`` (``BIN_DIR`` or ``PY_DIR``), or None."""
    for layout in (BIN_DIR, PY_DIR):
        if (folder / layout).is_dir() and not _missing(folder, layout):
            return layout
    return None


def _not_found_message(folder: Optional[Path]) -> str:
    if folder is None:
        return f"no CIFAR-10 data folder is configured: {_HOW_TO_GET}"
    if not folder.is_dir():
        return f"CIFAR-10 data folder {folder} does not exist: {_HOW_TO_GET}"
    if folder.name in (BIN_DIR, PY_DIR):
        return (
            f"CIFAR-10 data folder {folder} is the {folder.name}/ folder itself; "
            f"point TERNSEARCH_DATA / data.root at its parent {folder.parent}"
        )
    # Report the layout the user evidently tried to provide; the binary one when there is neither.
    layout = PY_DIR if (folder / PY_DIR).is_dir() and not (folder / BIN_DIR).is_dir() else BIN_DIR
    if not (folder / layout).is_dir():
        return (
            f"CIFAR-10 data folder {folder} holds neither {BIN_DIR}/ (data_batch_1..5.bin, test_batch.bin) "
            f"nor {PY_DIR}/: {_HOW_TO_GET}"
        )
    missing = _missing(folder, layout)
    return f"CIFAR-10 data folder {folder} is incomplete, missing or bad: {', '.join(missing)}; {_HOW_TO_GET}"


def check_data(cfg: DataConfig) -> None:
    """Cheaply check that the configured CIFAR-10 copy is present (file names and sizes only; nothing is read).

    Used by the spec validator before anything starts, and by the loop before loading.

    Args:
        cfg: The data section of a run.

    Raises:
        DataError: The folder is not configured, does not exist, or lacks files of both layouts, and
            ``cfg.download`` is false. The message names the folder, the missing files and how to get CIFAR-10.
    """
    if cfg.download:
        return  # whatever is missing will be downloaded on first load
    folder = _data_dir(cfg.root, download=False)
    if folder is None or _layout(folder) is None:
        raise DataError(_not_found_message(folder))
