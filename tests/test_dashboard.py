"""``ternsearch dashboard`` in a real headless Chromium: the real optuna-dashboard package (the test extra installs
it) on a real tiny sweep's study. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers_cluster import free_ports, kill_tree
from helpers_report import cli
from test_browser import ARTIFACTS, _chromium, _page, browser  # noqa: F401 - the browser fixture
from test_study import write_spec

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.ray]


def test_dashboard_lists_the_study_with_every_trial(tmp_path, data_root, browser):  # noqa: F811
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        pytest.fail("the dashboard test needs optuna-dashboard: pip install -e '.[test]' installs it")
    spec = write_spec(tmp_path, "dash", 3)
    swept = cli("sweep", str(spec), "-q", cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    results = tmp_path / "results" / "dash"
    sweep_id = json.loads((results / "sweep.json").read_text())["sweep_id"]
    n_trials = len(json.loads((results / "trials.json").read_text()))

    port = free_ports(1)[0]
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", "dashboard", str(results), "--port",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ), cwd=tmp_path, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert f"{base}/dashboard/" in log.read_text().splitlines()[0]
        problems: list = []
        page = _page(browser, problems)
        page.goto(f"{base}/dashboard/")
        page.get_by_text(sweep_id).first.wait_for(timeout=30_000)
        page.goto(f"{base}/dashboard/studies/1")
        page.wait_for_function("() => !!document.querySelector('#plot-history .main-svg')", timeout=30_000)
        page.screenshot(path=ARTIFACTS / "dashboard-history.png", full_page=True)
        page.goto(f"{base}/dashboard/studies/1/trials")
        page.get_by_text(f"{n_trials} Trials", exact=True).wait_for(timeout=30_000)
        assert page.get_by_text(f"tune_trial_id").count() >= 1
        assert problems == []
    finally:
        kill_tree(proc.pid)
