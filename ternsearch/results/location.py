"""Where a sweep's results live (its storage path and records directory), and whether a spec file made them:
the sweep's checks before Ray starts and ``export SPEC`` find and check a results directory the same way."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Optional

from ternsearch.errors import ResultsError
from ternsearch.spec import SweepSpec, load_spec

__all__ = ["resolve_storage", "records_dir", "spec_digest", "spec_keys", "check_same_spec", "RESUMABLE_CHANGES",
           "check_warm_start", "resume_command"]

# What a resumed sweep may change in its spec: grow it, give it more time, move its target.
RESUMABLE_CHANGES = ("searcher.num_samples", "searcher.time_budget", "searcher.stop_at")


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


def spec_keys(spec: SweepSpec) -> dict[str, str]:
    """Every key of the loaded spec, dotted (``searcher.seed``, ``search.lr.loguniform``, defaults included), with a
    digest of its value: what ``--resume`` compares. Digests, so that sweep.json holds no tracking password; the
    keys a resumed sweep may change (``RESUMABLE_CHANGES``) are left out."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if prefix in RESUMABLE_CHANGES:
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    walk("", spec.doc.model_dump(mode="json"))
    return flat


def check_warm_start(spec: SweepSpec) -> None:
    """Before Ray starts: each ``searcher.warm_start`` entry is an earlier sweep's results directory with its study
    (``FILE:LINE: searcher.warm_start[I]: ...``, one line)."""
    for i, source in enumerate(spec.searcher.warm_start):
        folder = Path(source).expanduser()
        missing = [name for name in ("sweep.json", "optuna.db") if not (folder / name).is_file()]
        if missing:
            raise spec.located.error(("searcher", "warm_start", i), f"{folder} holds no {' and no '.join(missing)} "
                                     "(give the results directory of an earlier sweep, one that kept its Optuna study)")


def check_same_spec(results_dir: Path, meta: dict, spec_file, hint: str) -> None:
    """Refuse a results directory (its sweep.json: ``meta``) that another spec file made, or another version of
    this one that differs in more than ``RESUMABLE_CHANGES``: one line naming the first changed key and ending in
    ``hint`` (what to do instead). A sweep.json from before ``spec_keys`` is compared byte for byte."""
    if meta.get("spec_sha256") == spec_digest(spec_file):
        return
    if isinstance(meta.get("spec_keys"), dict):
        before, now = meta["spec_keys"], spec_keys(load_spec(spec_file))
        changed = next((k for k in [*now, *before] if before.get(k) != now.get(k)), None)
        if changed is None:
            return
        raise ResultsError(f"{results_dir}: {spec_file} changes {changed} of the sweep {meta.get('spec_file')} "
                           f"started (only {', '.join(RESUMABLE_CHANGES)} may change); {hint}")
    raise ResultsError(f"{results_dir}: made by another spec ({meta.get('spec_file')}), not by {spec_file} as it "
                       f"is now; {hint}")


def resume_command(spec: SweepSpec, meta: dict) -> str:
    """The command that resumes this sweep: with ``--storage`` when the sweep's storage (``meta``, as the run
    resolved it) is not the spec file's own, or ``--resume`` alone would look for the sweep elsewhere."""
    command = f"ternsearch sweep {shlex.quote(str(spec.file))} --resume"
    storage = meta.get("storage_path")
    if storage and storage != resolve_storage(spec, None):
        command += f" --storage {shlex.quote(storage)}"
    return command
