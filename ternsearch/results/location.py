"""Where a sweep's results live (its storage path and records directory), and whether a spec file made them:
the sweep's checks before Ray starts and ``export SPEC`` find and check a results directory the same way."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from ternsearch.errors import ResultsError
from ternsearch.spec import SweepSpec

__all__ = ["resolve_storage", "records_dir", "spec_digest", "check_same_spec"]


def resolve_storage(spec: SweepSpec, override: Optional[str]) -> str:
    """Absolute local path, or a URI (s3://, gs://...) left as it is."""
    raw = override or spec.storage.path
    if raw.startswith("file:///"):  # a local path written as a URI (the spec checks it is absolute)
        raw = raw[len("file://"):]
    if "://" in raw:
        return raw
    return str(Path(raw).expanduser().resolve())


def records_dir(name: str, storage_path: str) -> Path:
    """Where the sweep's own records (sweep.json, trials.json, history.jsonl, best.yaml, report) live.

    Beside Tune's experiment for local and shared-filesystem storage; for object storage (s3://, gs://),
    on the driver's disk under ~/.ternsearch/sweeps/NAME, since the records are appended to as results come.
    """
    if "://" in storage_path:
        return Path("~/.ternsearch/sweeps").expanduser() / name
    return Path(storage_path) / name


def spec_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_same_spec(results_dir: Path, meta: dict, spec_file, hint: str) -> None:
    """Refuse a results directory (its sweep.json: ``meta``) that another spec file, or another version of this
    one, made: one line ending in ``hint`` (what to do instead)."""
    if meta.get("spec_sha256") != spec_digest(spec_file):
        raise ResultsError(f"{results_dir}: made by another spec ({meta.get('spec_file')}), not by {spec_file} as it "
                           f"is now; {hint}")
