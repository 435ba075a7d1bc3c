"""``tensorboard --logdir RESULTS`` on a real sweep's results, as the README says: its HTTP API lists one run per
trial with the scalar tags, it listens on 127.0.0.1 only, and headless Chromium shows the runs and a scalar card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers_cluster import free_ports, kill_tree, listening_addresses
from helpers_report import real_sweep
from test_browser import ARTIFACTS, _page, browser  # noqa: F401 - the browser fixture

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.ray]

LOOPBACK = "127.0.0.1"


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_root):
    """The shared real sweep's results (tests/helpers_report.py), and the trials that trained an epoch."""
    _, _, path = real_sweep(tmp_path_factory)
    trials = json.loads((path / "trials.json").read_text())
    return path, sorted(tid for tid, t in trials.items() if t["status"] != "failed")


@pytest.fixture(scope="module")
def tensorboard(results):
    """The real ``tensorboard`` server on the sweep's results (its own CLI, as a user starts it), stopped (its whole
    process tree, the data server included) at teardown; yields its base URL once every run is loaded."""
    path, trained = results
    port = free_ports(1)[0]
    log = path.parent / "tensorboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(path), "--host", LOOPBACK,
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ), start_new_session=True)
    base = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if len(_get(f"{base}/data/runs")) >= len(trained):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield base, proc
    finally:
        kill_tree(proc.pid)


def test_api_lists_one_run_per_trial_with_its_scalars(results, tensorboard):
    _, trained = results
    base, proc = tensorboard
    # Trials that failed inside their first epoch wrote no event; every other one is a run named by its trial id.
    assert sorted(_get(f"{base}/data/runs")) == [f"tune/trial_{tid}" for tid in trained]
    tags = _get(f"{base}/data/plugin/scalars/tags")
    for tid in trained:
        run = tags[f"tune/trial_{tid}"]
        assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr/lr", "ternary/zero_frac"} <= set(run)
        assert any(tag.startswith("ternary_scale/") for tag in run)
    binds = listening_addresses(proc.pid)  # the server and its data server
    assert binds and {ip for ip, _ in binds} == {LOOPBACK}, binds


def test_browser_shows_the_runs_and_a_scalar_card(results, tensorboard, browser):  # noqa: F811
    _, trained = results
    base, _ = tensorboard
    problems: list = []
    page = _page(browser, problems)
    page.goto(f"{base}/#timeseries")
    try:
        for tid in trained:
            page.get_by_text(f"tune/trial_{tid}", exact=True).first.wait_for(timeout=60_000)
        card = page.locator("card-view").filter(has=page.get_by_text("accuracy/val", exact=True)).first
        card.wait_for(timeout=60_000)
        card.locator("canvas, svg").first.wait_for(timeout=30_000)  # its chart is drawn
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "tensorboard-timeseries.png")
    assert problems == []
