"""Sweep and train files: the bad-spec corpus through the real CLI, and what valid files turn into.

Each ``tests/bad_specs/*.yaml`` starts with ``# expect: LINE`` (``{file}`` stands for the file's path, ``{cwd}``
for the directory the command runs in): both ``ternsearch validate`` and ``ternsearch sweep --dry-run`` must print
exactly that one line on stderr and exit 1.
``# expect (sweep --dry-run only): LINE`` marks the cases that need the machine (data, storage, GPUs), which only
the sweep checks. Importing torch costs each CLI process ~3 s, so the corpus runs as one batch process per command
(``cli.main`` per case, stderr captured at the file-descriptor level), plus a few cases as separate processes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers_batch import finish_batch, quiet_env, start_batch
from ternsearch.spec import load_spec, load_train_file

REPO = Path(__file__).resolve().parents[1]
BAD = REPO / "tests" / "bad_specs"
_EXPECT = re.compile(r"^# expect( \(sweep --dry-run only\))?: (.+)$")


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # relative to the working directory the CLI runs in
    expected: str
    sweep_only: bool


def _cases() -> list[Case]:
    cases = []
    for f in sorted(BAD.glob("*.yaml")):
        first = f.read_bytes().decode("utf-8", "replace").splitlines()[0]  # 76_not_utf8 is Latin-1 below line 1
        m = _EXPECT.match(first)
        assert m, f"{f.name}: line 1 must be '# expect: ...', got {first!r}"
        path = f"tests/bad_specs/{f.name}"
        cases.append(Case(f.stem, path, m.group(2).replace("{file}", path), bool(m.group(1))))
    return cases


CASES = _cases()
RUNS = [(c, cmd) for c in CASES for cmd in (("sweep",) if c.sweep_only else ("validate", "sweep"))]
ARGV = {"validate": ["validate"], "sweep": ["sweep", "--dry-run"]}

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, data_root) -> dict:
    """A working directory holding a copy of the corpus (paths in messages stay ``tests/bad_specs/...``), and an
    environment whose HOME, TMPDIR and RAY_TMPDIR are empty temporary folders, without Ray or MLflow settings."""
    base = tmp_path_factory.mktemp("bad_specs")
    work, home, tmp = base / "work", base / "home", base / "tmp"
    shutil.copytree(BAD, work / "tests" / "bad_specs")
    home.mkdir()
    tmp.mkdir()
    env = quiet_env(data_root, home, tmp)
    return {"work": work, "home": home, "tmp": tmp, "env": env, "base": base}


@pytest.fixture(scope="module")
def batch(sandbox) -> dict:
    """Every case through each command, one process per command, the two processes side by side."""
    procs = {}
    for cmd in ("validate", "sweep"):
        argvs = [ARGV[cmd] + [c.path] for c, m in RUNS if m == cmd]
        procs[cmd] = start_batch(argvs, cwd=sandbox["work"], env=sandbox["env"])
    out = {}
    for cmd, proc in procs.items():
        out[cmd] = finish_batch(proc, timeout=300)
        out[cmd]["by_path"] = {r["argv"][-1]: r for r in out[cmd]["results"]}
    return out


def test_corpus_covers_the_issue():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.expected.startswith(f"{c.path}:"), c.name
        assert "\n" not in c.expected and not c.expected.endswith(" ")


@pytest.mark.parametrize(("case", "command"), RUNS, ids=[f"{c.name}-{m}" for c, m in RUNS])
def test_bad_spec(batch, sandbox, case: Case, command: str):
    r = batch[command]["by_path"][case.path]
    assert "Traceback" not in r["stderr"], r["stderr"]
    assert r["stderr"] == case.expected.replace("{cwd}", str(sandbox["work"])) + "\n"
    assert r["code"] == 1


def test_bad_specs_start_no_ray_and_no_mlflow(batch, sandbox):
    for cmd, out in batch.items():
        assert not out["ray_initialized"], cmd
        assert not out["mlflow_active_run"], cmd
    made = sorted(str(p.relative_to(sandbox["base"])) for p in sandbox["base"].rglob("*")
                  if p.name in ("ray", "mlruns", "mlflow.db") or p.name.startswith("session_"))
    assert made == []


# Separate processes for a few cases: the exit code and stderr of the real program, including whatever the
# imports of each path (YAML only, torch for model.arch, Ray Tune for the sweep checks) might print.
_SAMPLE = {"01_yaml_syntax_error": "validate", "16_unknown_model": "validate",
           "27_batch_size_not_divisible": "sweep", "40_data_directory_missing": "sweep"}


def test_bad_specs_as_separate_processes(sandbox):
    chosen = [c for c in CASES if c.name in _SAMPLE]
    assert len(chosen) == len(_SAMPLE)

    def run(case: Case):
        argv = [*ARGV[_SAMPLE[case.name]], case.path]
        return subprocess.run([sys.executable, "-m", "ternsearch.cli", *argv], cwd=sandbox["work"],
                              env=sandbox["env"], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        for case, proc in zip(chosen, pool.map(run, chosen)):
            expected = case.expected.replace("{cwd}", str(sandbox["work"]))
            assert (proc.returncode, proc.stderr, proc.stdout) == (1, expected + "\n", ""), case.name


# --------------------------------------------------------------------------------------------- valid files
def _load_any(path: Path):
    data = yaml.safe_load(path.read_text())
    return load_spec(path) if "search" in data else load_train_file(path)


def test_search_spaces_and_configs_load():
    files = sorted((REPO / "search_spaces").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yaml"))
    assert files, "configs/ holds at least the small CPU config"
    for f in files:
        _load_any(f)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


_CONDITIONAL = """\
name: conditional
train: {epochs: 4, batch_size: 64}
search:
  lr: {loguniform: [0.01, 0.5]}
  augment: {choice: [standard, mixup, cutmix]}
  mixup_alpha: {uniform: [0.1, 0.4], when: {augment: [mixup]}}
  cutmix_alpha: {uniform: [0.5, 1.0], when: {augment: cutmix}}
  model.quantizer: {choice: [twn, none]}
  warmup_epochs: {int: [0, 3], when: {model.quantizer: [twn]}}
searcher: {algorithm: random, seed: 3, num_samples: 30}
"""


def test_conditional_params_parse(tmp_path):
    spec = load_spec(_write(tmp_path, _CONDITIONAL))
    by_name = {p.name: p for p in spec.params}
    assert list(by_name) == ["lr", "augment", "mixup_alpha", "cutmix_alpha", "model.quantizer", "warmup_epochs"]
    assert by_name["mixup_alpha"].when == {"augment": ("mixup",)}
    assert by_name["cutmix_alpha"].when == {"augment": ("cutmix",)}  # a single value is a one-element list
    assert by_name["warmup_epochs"].when == {"model.quantizer": ("twn",)}
    assert (by_name["lr"].kind, by_name["lr"].log, by_name["lr"].low) == ("loguniform", True, 0.01)
    assert by_name["augment"].choices == ("standard", "mixup", "cutmix")


def test_define_by_run_suggests_conditional_params_only_when_enabled(tmp_path):
    import optuna

    from ternsearch.spec.space import DefineByRun

    spec = load_spec(_write(tmp_path, _CONDITIONAL))
    space = DefineByRun(spec.params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        assert space(trial) is None  # define-by-run: values live in trial.params
        params = trial.params
        seen.append(params)
        assert ("mixup_alpha" in params) == (params["augment"] == "mixup")
        assert ("cutmix_alpha" in params) == (params["augment"] == "cutmix")
        assert ("warmup_epochs" in params) == (params["model.quantizer"] == "twn")
        assert 0.01 <= params["lr"] <= 0.5
        assert spec.base_config().with_overrides(params).train.augment == params["augment"]
    assert {p["augment"] for p in seen} == {"standard", "mixup", "cutmix"}
    assert {p["model.quantizer"] for p in seen} == {"twn", "none"}


def test_with_overrides_rejects_unknown_keys():
    from trainables.config import TrainConfig

    base = TrainConfig()
    for key in ("lrr", "model.quantiser", "optim.lr", "data.nope"):
        with pytest.raises(KeyError):
            base.with_overrides({key: 1})


def test_dotted_search_key(tmp_path):
    spec = load_spec(_write(tmp_path, "name: dotted\nsearch:\n  model.quantizer: {choice: [twn, none]}\n"))
    (param,) = spec.params
    assert (param.name, param.kind, param.choices) == ("model.quantizer", "choice", ("twn", "none"))
    cfg = spec.base_config().with_overrides({"model.quantizer": "none"})
    assert (cfg.model.quantizer, cfg.model.arch) == ("none", spec.model.arch)


def test_first_error_in_file_order(tmp_path):
    from ternsearch.errors import SpecError

    text = "name: order\ntrain:\n  optimizer: adagrad\nmetric: {mode: maximize}\nsearch: {lr: {uniform: [1, 0]}}\n"
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, text))
    # pydantic lists metric before train (field order); the file has train first, and so does the message.
    assert (info.value.line, info.value.key) == (3, "train.optimizer")
