"""The report and the MLflow UI in a real headless Chromium: Debian's ``chromium`` (installed by .ci/run),
driven by playwright without ``playwright install``. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers_cluster import free_ports, kill_tree, listening_addresses
from helpers_report import NAME, real_sweep

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.ray]

LOOPBACK = "127.0.0.1"

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ALL_PLOTS_DRAWN = """() => { const divs = [...document.querySelectorAll('.plotly-graph-div')];
                          return divs.length > 0 && divs.every(d => d.querySelector('.main-svg')); }"""


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail("the browser tests need Debian's chromium: apt-get install -y chromium (.ci/run does it)")
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    return real_sweep(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _page(browser, problems: list):
    """A page that records JavaScript exceptions and console errors in ``problems``."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: problems.append(f"console.{msg.type}: {msg.text}") if msg.type == "error"
            else None)
    return page


def test_report_renders_every_plot_offline(sweep, browser):
    from ternsearch.report.render import FIGURES

    _, _, results = sweep
    problems, requests = [], []
    page = _page(browser, problems)
    page.on("request", lambda req: requests.append(req.url))
    page.goto((results / "report.html").as_uri())
    try:
        page.wait_for_function(ALL_PLOTS_DRAWN, timeout=90_000)
    finally:
        page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
    drawn = page.eval_on_selector_all(".plotly-graph-div", "ds => ds.map(d => [d.id, !!d.querySelector('.main-svg')])")
    assert drawn == [[div_id, True] for div_id, *_ in FIGURES]
    assert page.locator("#fig-parallel canvas").count() > 0  # parallel coordinates draw their lines with WebGL
    assert page.locator("#fig-curves .scatterlayer .trace").count() >= 5
    assert problems == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests  # opens offline
    rows = page.locator("table tr").count() - 1
    assert rows == 5  # completed and stopped trials are ranked; the failed one is listed below the table
    assert page.get_by_text(re.compile(r"Failed: t\d{3} \(diverged at epoch 1\)")).count() == 1


@pytest.fixture(scope="module")
def mlflow_ui(sweep):
    """``ternsearch ui`` on the sweep's results: ``mlflow server`` on its own SQLite store, shared by the tests of
    this module (its log: ``mlflow-ui.log`` beside the results). Every port its process tree listens on is on
    127.0.0.1. Always stopped (its whole process tree) at teardown."""
    _, _, results = sweep
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = results.parent / "mlflow-ui.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", "ui", str(results), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=results.parent, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not healthy after 180 s: {log}"
            time.sleep(0.5)
        assert f"http://127.0.0.1:{port}" in log.read_text()
        binds = listening_addresses(proc.pid)
        assert (LOOPBACK, port) in binds and {ip for ip, _ in binds} == {LOOPBACK}, binds
        yield base
    finally:
        kill_tree(proc.pid, signal.SIGTERM, grace=5)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def test_mlflow_ui_lists_the_sweep_and_its_trials(sweep, mlflow_ui, browser):
    from mlflow.tracking import MlflowClient

    from ternsearch.report.data import load_results
    from ternsearch.tracking.links import mlflow_links

    _, summary, results = sweep
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == summary["trials"] == 6

    problems: list = []
    page = _page(browser, problems)
    page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs")
    try:
        page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=120_000)
        page.get_by_text(f"{len(runs)} matching runs").wait_for(timeout=30_000)
        # child runs are collapsed under their parent: expand it, then every trial's run is listed by name
        page.get_by_role("gridcell").filter(has_text=parent.info.run_name).locator("button").first.click()
        for child in children:
            page.get_by_text(child.info.run_name).first.wait_for(timeout=30_000)
        close = page.get_by_role("button", name="Close")  # the assistant panel hides half the table
        if close.count():
            close.first.click()
    finally:
        page.screenshot(path=ARTIFACTS / "mlflow-runs.png")
    # the report's link to the best trial opens that run (the report points at mlflow ui's default port)
    links = mlflow_links(load_results(results))
    best_run = links.runs[summary["best_trial"]]
    page.goto(links.url(best_run).replace(links.base, mlflow_ui))
    page.get_by_text(client.get_run(best_run).info.run_name).first.wait_for(timeout=60_000)
    page.get_by_text(best_run).first.wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "mlflow-best-run.png")


def _sweep_runs(results: Path):
    """(client, experiment, parent run, child runs) of the shared sweep, from its SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, exp, parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_the_sweep_experiment_opens_on_its_training_runs(sweep, mlflow_ui, browser):
    """The address ``ternsearch ui`` prints for the sweep's runs opens the runs table (MLflow 3.17 opens an
    experiment on its GenAI overview, traces and token usage, unless asked for its model-training face)."""
    _, _, results = sweep
    _, exp, parent, _ = _sweep_runs(results)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    [line] = [ln for ln in (results.parent / "mlflow-ui.log").read_text().splitlines() if ln.startswith("its runs: ")]
    port = mlflow_ui.rsplit(":", 1)[1]
    assert line == (f"its runs: http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}"
                    "?workflowType=machine_learning")
    problems: list = []
    page = _page(browser, problems)
    page.goto(line.removeprefix("its runs: "))
    try:
        page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=120_000)
        page.get_by_text("matching runs").first.wait_for(timeout=30_000)
    finally:
        page.screenshot(path=ARTIFACTS / "mlflow-experiment.png")
    assert page.get_by_role("heading", name="Runs").count() == 1
    for genai in ("Overview", "Tool calls", "Detect Issues", "Judges"):  # the GenAI face's heading, tabs, nav
        assert page.get_by_text(genai, exact=True).count() == 0, genai


def test_two_trials_open_in_mlflows_compare_view(sweep, mlflow_ui, browser):
    """In the runs table, select two trials' runs and Compare: the compare page shows both and their metric.
    Screenshot: test-artifacts/mlflow-compare.png."""
    _, _, results = sweep
    _, exp, parent, children = _sweep_runs(results)
    two = sorted(children, key=lambda r: r.info.run_name)[:2]
    problems: list = []
    page = _page(browser, problems)
    page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}?workflowType=machine_learning")
    try:
        page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=120_000)
        page.get_by_role("gridcell").filter(has_text=parent.info.run_name).locator("button").first.click()
        for run in two:
            row = page.get_by_role("row").filter(has_text=run.info.run_name)
            row.first.wait_for(timeout=30_000)
            row.first.get_by_role("checkbox").first.check()
        page.get_by_role("button", name="Compare").first.click()
        page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
        for run in two:
            page.get_by_text(run.info.run_name, exact=True).first.wait_for(timeout=30_000)
    finally:
        page.screenshot(path=ARTIFACTS / "mlflow-compare.png", full_page=True)
    assert all(run.info.run_id in page.url for run in two)
    # The Metrics table shows its first rows only (alphabetical): best_metric, each trial's best val_acc, is one.
    page.get_by_text("best_metric", exact=True).first.wait_for(timeout=30_000)
    shown = page.inner_text("body")
    for run in two:
        assert f"{round(run.data.metrics['best_metric'], 3):g}" in shown, run.data.metrics
