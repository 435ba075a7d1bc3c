"""The README's quick start, run as README.md gives it, on a fresh clone of this repository's committed HEAD.

The commands are read from README.md itself (the first ```bash block under "## Quick start", and the one after
"**Run the tests**"), so the README and what is tested cannot drift apart. The clone goes to ``TMP/x/<repo>``
with ``TMP/x/shared`` a link to the real shared folder (the parent of ``TERNSEARCH_DATA``, which CI points at
``.../shared/data``), and HOME is a fresh folder, so ``~/ternsearch-results`` starts empty; the machine's pip
configuration (where pip finds wheels) is copied into it. The full run takes minutes (a venv, pip installing
torch, and the sweep that benchmarks/cpu_sweep.py times): it runs only with ``TERNSEARCH_QUICKSTART=1``
(``.ci/run`` sets it after the suite).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ternsearch.results.files import TRIALS, read_trials

REPO = Path(__file__).resolve().parents[1]
QUICK_START = "## Quick start"
RUN_THE_TESTS = "**Run the tests**"
TIMEOUT_S = 25 * 60
PIP_CONFIGS = (".config/pip/pip.conf", ".pip/pip.conf")  # pip's per-user files, relative to HOME


def readme_command(text: str, marker: str) -> str:
    """The first ```bash block after the first line starting with ``marker``, within that line's section (up to
    the next ``## `` heading); ValueError when there is none."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if not starts:
        raise ValueError(f"README has no line starting with {marker!r}")
    block: list[str] | None = None
    for line in lines[starts[0] + 1:]:
        if block is None and line.startswith("## "):
            break
        if block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip().startswith("```"):
            command = "\n".join(block).strip()
            if command:
                return command
            block = None
        elif block is not None:
            block.append(line)
    raise ValueError(f"README: no ```bash block under {marker!r}")


def _readme(marker: str) -> str:
    return readme_command((REPO / "README.md").read_text(encoding="utf-8"), marker)


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, text=True, capture_output=True).stdout.strip()


@dataclass
class Harness:
    clone: Path
    home: Path
    env: dict
    log: Path


def _shared_folder() -> Path:
    """The folder holding data/, found from TERNSEARCH_DATA (``.../shared/data``), or skip."""
    raw = os.environ.get("TERNSEARCH_DATA")
    if not raw:
        pytest.skip("TERNSEARCH_DATA is not set: cannot find the shared folder holding data/")
    data = Path(raw).resolve()
    if data.name != "data" or not data.is_dir():
        pytest.skip(f"TERNSEARCH_DATA={raw} is not a folder named data/ inside a shared folder")
    return data.parent


def prepare(tmp: Path) -> Harness:
    """A clone of the committed HEAD in ``tmp/x/<repo>``, ``tmp/x/shared`` linked to the shared folder, a fresh
    HOME, and the environment to run the README's command in (no TERNSEARCH_DATA: the command sets its own)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        root = Path(_git("rev-parse", "--show-toplevel", cwd=REPO))
    except subprocess.CalledProcessError:
        pytest.skip(f"{REPO} is not a git checkout")
    shared = _shared_folder()
    x = tmp / "x"
    x.mkdir(parents=True)
    (x / "shared").symlink_to(shared, target_is_directory=True)
    clone = x / root.name
    _git("clone", "--quiet", "--no-checkout", str(root), str(clone), cwd=tmp)
    _git("checkout", "--quiet", "--detach", _git("rev-parse", "HEAD", cwd=root), cwd=clone)
    home = tmp / "home"
    home.mkdir()
    for rel in PIP_CONFIGS:
        if (Path.home() / rel).is_file():
            (home / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path.home() / rel, home / rel)
    env = {k: v for k, v in os.environ.items()
           if k not in {"TERNSEARCH_DATA", "PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"}}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return Harness(clone=clone, home=home, env=env, log=tmp / "quickstart.log")


def run_in(h: Harness, command: str, timeout: float) -> tuple[int, str]:
    """(exit code, output) of ``bash -c command`` in the clone; its whole process group is killed afterwards (Ray
    daemons included), and at once when ``timeout`` passes (exit code -9)."""
    with open(h.log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=h.clone, env=h.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -9
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    return code, h.log.read_text(errors="replace")


def _results_dir(h: Harness, command: str) -> Path:
    """``<storage.path>/<name>`` of the spec the command sweeps (read from the clone), ``~`` the test's HOME."""
    words = command.split()
    spec = yaml.safe_load((h.clone / words[words.index("sweep") + 1]).read_text())
    storage = spec.get("storage", {}).get("path", "~/ternsearch-results")
    return Path(storage.replace("~", str(h.home), 1) if storage.startswith("~") else storage) / spec["name"]


# ------------------------------------------------------------------------------------------------- cheap checks
def test_readme_command_parser():
    text = "\n".join([
        "# x", "```bash", "echo before", "```", "## Quick start (fresh machine)", "Some words.",
        "```yaml", "a: 1", "```", "**Set up**:", "", "```bash", "", "```", "```bash", "first --command", "```",
        "```bash", "second", "```", "**Run the tests** (CI):", "```bash", "pytest -q", "```", "## Next", "```bash",
        "later", "```", "## Empty", "words", "## After", "```bash", "nope", "```"])
    assert readme_command(text, QUICK_START) == "first --command"  # not before the heading, not yaml, not empty
    assert readme_command(text, RUN_THE_TESTS) == "pytest -q"
    with pytest.raises(ValueError, match="no ```bash block under '## Empty'"):
        readme_command(text, "## Empty")  # never a block of a later section
    with pytest.raises(ValueError, match="no line starting with"):
        readme_command(text, "## Missing")


def test_readme_commands_are_one_line_each():
    quick, tests = _readme(QUICK_START), _readme(RUN_THE_TESTS)
    assert "\n" not in quick and " sweep search_spaces/" in quick and "TERNSEARCH_DATA=" in quick, quick
    assert "\n" not in tests and "-m pytest" in tests, tests


def test_ci_runs_the_readme_test_command_and_then_the_quickstart():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    command = _readme(RUN_THE_TESTS)
    assert command in lines, f".ci/run does not run the README's test command: {command}"
    quick = "TERNSEARCH_QUICKSTART=1 .venv/bin/python -m pytest tests/test_quickstart.py"
    assert quick in lines and lines.index(quick) > lines.index(command)


def test_harness_builds_the_clone(tmp_path):
    """The dry check: the clone is the committed HEAD, ``../shared/data`` holds CIFAR-10 from inside it, the spec
    the quick start sweeps is there, HOME is fresh and TERNSEARCH_DATA unset."""
    h = prepare(tmp_path)
    command = _readme(QUICK_START)
    code, out = run_in(h, 'git rev-parse HEAD && ls ../shared/data && echo "home=$HOME data=${TERNSEARCH_DATA-unset}"',
                       timeout=60)
    assert code == 0, out
    assert out.splitlines()[0] == _git("rev-parse", "HEAD", cwd=REPO)
    assert "cifar-10-batches-" in out and f"home={h.home} data=unset" in out
    assert h.clone.parent == tmp_path / "x" and not (h.home / "ternsearch-results").exists()
    results = _results_dir(h, command)
    assert results.parent == h.home / "ternsearch-results", results


# ------------------------------------------------------------------------------------------------- the real run
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TERNSEARCH_QUICKSTART") != "1",
                    reason="the README quick start takes minutes (venv, pip install, sweep); set "
                           "TERNSEARCH_QUICKSTART=1"
                           " (.ci/run does, after the suite)")
def test_readme_quickstart(tmp_path):
    h = prepare(tmp_path)
    command = _readme(QUICK_START)
    code, out = run_in(h, command, timeout=TIMEOUT_S)
    tail = out[-6000:]
    assert code == 0, f"the quick start exited {code} ({'timed out' if code == -9 else 'failed'}):\n{tail}"
    results = _results_dir(h, command)
    statuses = [t.get("status") for t in read_trials(results).values()]
    assert "completed" in statuses, f"no completed trial in {results / TRIALS} ({statuses}):\n{tail}"
