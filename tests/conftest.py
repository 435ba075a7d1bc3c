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


# The suite runs in 2 pytest-xdist workers (pyproject's addopts: -n 2 --dist loadgroup): its Ray tests leave ~40% of
# 2 cores idle one at a time (start-up waits), and 2 workers took the suite from 54 to 40 min here. Each file is a
# group, kept on one worker (its module-scoped fixtures, a Ray cluster or an MLflow server, start once); the files
# sharing the cached report sweep (helpers_report.real_sweep) are one group, so the sweep runs once. Groups with the
# most slow tests go first, so that no long file starts last and runs alone.
REPORT_SWEEP = {"test_browser", "test_outputs", "test_report", "test_sweep", "test_tensorboard",
                "test_tensorboard_server"}


def pytest_collection_modifyitems(config, items):
    def group(item) -> str:
        stem = item.path.stem
        return "report-sweep" if stem in REPORT_SWEEP else stem

    slow: dict[str, int] = {}
    for item in items:
        slow[group(item)] = slow.get(group(item), 0) + (item.get_closest_marker("slow") is not None)
        item.add_marker(pytest.mark.xdist_group(group(item)))
    first_seen = {g: i for i, g in reversed(list(enumerate(group(it) for it in items)))}
    items.sort(key=lambda it: (-slow[group(it)], first_seen[group(it)]))
