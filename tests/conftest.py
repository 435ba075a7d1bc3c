"""Shared fixtures. The CIFAR-10 copy comes from TERNSEARCH_DATA (set by .ci/run); when unset, the repo's
sibling ../shared/data is used if it exists, so a developer checkout runs the tests without setup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if not os.environ.get("TERNSEARCH_DATA"):
    _sibling = REPO.parent / "shared" / "data"
    if (_sibling / "cifar-10-batches-bin").is_dir():
        os.environ["TERNSEARCH_DATA"] = str(_sibling)
else:
    # The README's test command gives a relative path (../shared/data), meant from where pytest started; tests
    # that change directory (and the commands they run there) must still find it.
    os.environ["TERNSEARCH_DATA"] = str(Path(os.environ["TERNSEARCH_DATA"]).expanduser().resolve())


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = os.environ.get("TERNSEARCH_DATA")
    if not root or not Path(root).is_dir():
        pytest.fail("TERNSEARCH_DATA must name the folder holding cifar-10-batches-bin/ (see README)")
    return Path(root)


@pytest.fixture(autouse=True)
def _isolated_mlflow_uri(monkeypatch):
    """No test sees another's MLflow tracking URI (``mlflow.set_tracking_uri`` also sets the environment)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
