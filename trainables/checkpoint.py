"""Checkpoint files: one directory per checkpoint, a tensor state file plus a JSON manifest with its checksum.

Loading always uses ``torch.load(weights_only=True)``: a checkpoint is data, never code. A truncated or
corrupted state file fails its checksum and is reported as ``CheckpointError`` so callers can fall back to
an older checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from trainables.errors import TrainablesError

__all__ = ["CheckpointError", "STATE_FILE", "MANIFEST_FILE", "RUN_CHECKPOINTS", "save_checkpoint", "load_checkpoint",
           "read_manifest", "latest_checkpoint"]

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
RUN_CHECKPOINTS = "checkpoints"  # a `ternsearch train` run directory keeps its epoch_NNNN checkpoints here


class CheckpointError(TrainablesError):
    """A checkpoint directory is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder: its entries) to disk; a folder that cannot be opened is left as is."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, state: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain Python values only) and a manifest holding its sha256.

    The manifest is written last and atomically (a temporary file, fsynced, renamed, the folder fsynced), after
    the state file is on disk: a directory with a manifest has a complete state file, even after a power cut.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / STATE_FILE
    torch.save(state, state_path)
    _fsync(state_path)
    full = dict(manifest, state_sha256=_sha256(state_path), state_bytes=state_path.stat().st_size)
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(full, indent=1, sort_keys=True, default=str))
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST_FILE)
    _fsync(directory)
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory, or CheckpointError."""
    path = Path(directory) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint manifest ({exc})") from None


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load and verify a checkpoint: returns ``(state, manifest)``.

    Raises:
        CheckpointError: the manifest is missing, the checksum does not match, or the file is not loadable
            as plain tensors (e.g. a crafted pickle).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    state_path = directory / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: missing")
    digest = _sha256(state_path)
    if digest != manifest.get("state_sha256"):
        raise CheckpointError(f"{state_path}: checksum mismatch (truncated or corrupted)")
    try:
        state = torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{state_path}: refused to load ({type(exc).__name__}: {exc})") from None
    return state, manifest


def latest_checkpoint(run_dir: str | Path, warn=None) -> Optional[Path]:
    """The newest checkpoint of a run directory (``epoch_NNNN`` directories under ``run_dir/checkpoints``, or
    under ``run_dir`` itself) that passes ``load_checkpoint``'s integrity check, or None. A corrupted or truncated
    newer one is skipped (``warn(message)`` is told why) and the previous one is used."""
    run_dir = Path(run_dir)
    root = run_dir / RUN_CHECKPOINTS if (run_dir / RUN_CHECKPOINTS).is_dir() else run_dir
    for ckpt in sorted((p for p in root.glob("epoch_*") if p.is_dir()), reverse=True):
        try:
            load_checkpoint(ckpt)
            return ckpt
        except CheckpointError as exc:
            if warn is not None:
                warn(f"warning: skipping checkpoint {ckpt.name}: {exc}")
    return None
