"""The fuzzing pass's worker: one long-lived process that runs ``ternsearch.cli.main`` once per case.

Run as ``python tests/helpers_fuzz_worker.py BASE``: it reads one JSON case a line on stdin and answers one JSON
line on its original stdout (fd 1 and 2 are the case's own, captured at the descriptor level like
``tests/test_spec.py`` does). Each case runs in ``BASE/ws``, a fresh copy of the workspace template (specs, odd
file names, hand-made results directories, checkpoints), and reports the files it changed there.

Guards, so that no case starts real work: training (``trainables.loop.run``), a real sweep or Ray
(``ternsearch.run.sweep``'s ``_execute`` and ``start_cluster``) and ``ternsearch ui``'s ``os.execve`` of the
MLflow server raise ``Reached`` instead: the command got past every check (as good as exit 0). A sweep argv that
parses without ``--dry-run`` or with ``--address`` is not run at all.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ODD_NAMES = ["ünï cødé.yaml", "with space.yaml", "-dash.yaml", os.fsdecode(b"\xff.yaml")]
CAP = 6000  # characters of stdout/stderr sent back (head and tail)


class Reached(BaseException):
    """The command passed its checks and would now start real work."""


def _guard(what: str):
    def stop(*args, **kwargs):
        raise Reached(what)
    return stop


def install_guards() -> None:
    import ternsearch.run.sweep as sweep
    import trainables.loop

    trainables.loop.run = _guard("training would start")
    sweep._execute = _guard("a real sweep would start")
    sweep.start_cluster = _guard("Ray would start")
    os.execve = _guard("the MLflow server would start")  # `ternsearch ui` replaces itself with the server


# ------------------------------------------------------------------------------------------------ workspace
HAND_SPEC = """\
name: {name}
metric: {metric}
data: {{subset: 600, val_fraction: 0.2}}
model: {{arch: tinynet}}
train: {{epochs: 3, batch_size: 64}}
search:
  lr: {{loguniform: [1.0e-3, 0.1]}}
  augment: {{choice: [standard, mixup]}}
  mixup_alpha: {{uniform: [0.1, 0.5], when: {{augment: [mixup]}}}}
searcher: {{algorithm: random, num_samples: 5}}
scheduler: {{algorithm: fifo}}
storage: {{path: results}}
"""


def _checkpoint(path: Path, epoch: int, epochs: int) -> str:
    import torch

    from trainables.checkpoint import save_checkpoint
    from trainables.config import TrainConfig
    from trainables.models import build_model

    cfg = TrainConfig.model_validate({"model": {"arch": "tinynet"}, "train": {"epochs": epochs}})
    torch.manual_seed(epoch)
    save_checkpoint(path, {"model": build_model(cfg.model).state_dict()},
                    {"config": cfg.model_dump(mode="json"), "epoch": epoch, "metrics": {"val_acc": 0.4}})
    return str(path)


def _results(root: Path, ws: Path, name: str, objectives: list, tracking_uri: str) -> None:
    """A hand-made results directory ``root/results/NAME`` (as ``ws``) and the spec ``root/NAME.yaml`` that made it."""
    import helpers_report  # the trials of tests/test_report.py's hand-made sweeps
    from ternsearch.results.location import spec_digest
    from ternsearch.spec import load_spec

    metric = "[" + ", ".join(f"{{name: {n}, mode: {m}}}" for n, m in objectives) + "]" if len(objectives) > 1 \
        else f"{{name: {objectives[0][0]}, mode: {objectives[0][1]}}}"
    spec_file = root / f"{name}.yaml"
    spec_file.write_text(HAND_SPEC.format(name=name, metric=metric))
    out = root / "results" / name
    out.mkdir(parents=True)
    trials, history = {}, []
    for spec in helpers_report.MIXED:
        entry, rows = helpers_report.hand_trial(*spec)
        if entry["status"] == "completed":
            entry["checkpoint"] = str(ws / "ckpt" / "epoch_0003")
        trials[entry["trial_id"]] = entry
        history += rows
    base = load_spec(spec_file).base_config().model_dump(mode="json")
    meta = {"name": name, "spec_file": str(ws / spec_file.name), "spec_sha256": spec_digest(spec_file),
            "sweep_id": f"{name}-1", "metric": objectives[0][0], "mode": objectives[0][1], "objectives": objectives,
            "params": ["lr", "augment", "mixup_alpha"], "base": base, "storage_path": str(ws / "results"),
            "started": 100.0, "tracking_uri": tracking_uri, "experiment": name, "mode_trial": "function"}
    (out / "sweep.json").write_text(json.dumps(meta, indent=1))
    (out / "trials.json").write_text(json.dumps(trials, indent=1))
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    shutil.copy(spec_file, out / "spec.yaml")


def build_template(root: Path, ws: Path) -> None:
    """Everything a case may name, written at ``root`` with absolute paths as they will be in ``ws``."""
    root.mkdir(parents=True)
    for folder in ("search_spaces", "configs"):
        shutil.copytree(REPO / folder, root / folder)
    small = (REPO / "configs" / "cifar10-small-cpu.yaml").read_bytes()
    for name in ODD_NAMES:
        (root / name).write_bytes(small)
    (root / "spec.yaml").write_bytes(small)
    (root / "empty.yaml").write_bytes(b"")
    (root / "notyaml.bin").write_bytes(bytes(range(256)) * 4)
    (root / "afile").write_text("a plain file\n")
    for folder in ("nodata", "home", "emptydir"):
        (root / folder).mkdir()
    os.symlink("spec.yaml", root / "link.yaml")
    os.symlink("missing.yaml", root / "dangling.yaml")
    _checkpoint(root / "ckpt" / "epoch_0003", 3, 3)
    _checkpoint(root / "runs" / "good" / "checkpoints" / "epoch_0002", 2, 3)
    bad = root / "runs" / "bad" / "checkpoints" / "epoch_0001"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    db = f"sqlite:///{ws}/results/hand/mlflow.db"
    _results(root, ws, "hand", [["val_acc", "max"]], db)
    (root / "results" / "hand" / "mlflow.db").write_bytes(b"")
    _results(root, ws, "multi", [["val_acc", "max"], ["ternary_zero_frac", "max"]], db.replace("hand", "multi"))
    _results(root, ws, "http", [["val_acc", "max"]], "http://127.0.0.1:9")
    _results(root, ws, "nodb", [["val_acc", "max"]], f"sqlite:///{ws}/results/nodb/missing.db")
    shutil.copytree(root / "results" / "hand", root / "results" / "mut")


def damage_results(ws: Path, op: dict) -> None:
    """Apply a ``helpers_fuzz_spec.results_damage`` operation to ``ws/results/mut``."""
    path = ws / "results" / "mut" / op["file"]
    kind, raw = op["kind"], path.read_bytes()
    if kind == "truncate":
        path.write_bytes(raw[:int(len(raw) * op["fraction"])])
    elif kind == "replace":
        path.write_text(op["text"])
    elif kind == "delete":
        path.unlink()
    elif kind == "bad-utf8":
        path.write_bytes(raw[:len(raw) // 2] + b"\xff\xfe" + raw[len(raw) // 2:])
    elif kind in ("drop", "set") and op["file"] != "spec.yaml":
        jsonl = op["file"].endswith(".jsonl")
        lines = raw.decode().splitlines()
        top = {"": json.loads(lines[0]) if jsonl else json.loads(raw)}
        node, key = top, ""
        for k in (k for k in op["path"] if k != "<line0>"):
            child = node.get(key)
            if not isinstance(child, dict) or not child:
                return
            node, key = child, next(iter(child)) if k == "<first>" else k
        if kind == "drop":
            node.pop(key, None)
        else:
            node[key] = json.loads(op["value"])
        text = [json.dumps(top[""])] if "" in top else []
        path.write_text("\n".join(text + lines[1:]) + "\n" if jsonl else "".join(text))


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------- cases
def _cap(text: str) -> str:
    return text if len(text) <= CAP else text[:CAP // 2] + f"\n...[{len(text) - CAP} chars cut]...\n" + text[-CAP // 2:]


def _frames(exc: BaseException) -> list:
    return [f"{os.path.relpath(f.filename, REPO) if f.filename.startswith(str(REPO)) else f.filename}:{f.lineno}"
            f" in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]


def _unsafe(argv: list) -> str:
    """Why a case must not run (it would start a real sweep), or ''."""
    from ternsearch.cli import _parser
    from ternsearch.errors import TernsearchError

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            a = _parser().parse_args(argv)
    except (SystemExit, TernsearchError):  # --help, or a refused argument: the real run refuses it too
        return ""
    if a.command == "sweep" and (not a.dry_run or a.address):
        return "would run a real sweep"
    return ""


def _outcome(err: bytes, std: bytes, before: dict, ws: Path) -> dict:
    text = err.decode("utf-8", "backslashreplace")
    after = snapshot(ws)
    return {"stderr": _cap(text), "stdout": _cap(std.decode("utf-8", "backslashreplace")),
            "stderr_lines": sum(1 for ln in text.splitlines() if ln.strip() and not ln.startswith("warning: ")),
            "changed": sorted(p for p in before if after.get(p, "deleted") != before[p])[:50],
            "created": sorted(p for p in after if p not in before)[:50]}


def run_fresh(base: Path, argv: list, env: dict, timeout: float = 120.0) -> dict:
    """One case as the real program runs it (``python -m ternsearch.cli ARGV``, its own process and exit path) in a
    fresh copy of the workspace; the same answer as ``run_case``. Builds the template when it is missing."""
    ws, template = base / "ws", base / "template"
    if not (template / ".done").exists():
        sys.path.insert(0, str(REPO / "tests"))
        build_template(template, ws)
        (template / ".done").write_text("")
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(template, ws, symlinks=True)
    before = snapshot(ws)
    proc = subprocess.Popen([sys.executable, "-m", "ternsearch.cli", *argv], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        std, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and whatever it started
        proc.communicate()
        return {"hang": timeout}
    return {"code": proc.returncode, **_outcome(err, std, before, ws)}


def _call(argv: list) -> dict:
    from ternsearch.cli import main

    out: dict = {"code": None}
    try:
        out["code"] = main(argv)
    except SystemExit as exc:
        out["code"] = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        out["code"] = 0 if out["code"] is None else out["code"]
    except Reached as exc:
        out.update(code="reached", reached=str(exc))
    except BaseException as exc:  # noqa: BLE001 - the finding itself
        traceback.print_exc()
        out.update(code="raised", exc_type=type(exc).__name__, exc_msg=str(exc)[:300], frames=_frames(exc))
    return out


def run_case(case: dict, ws: Path, template: Path, base: Path, env0: dict, filters0: list) -> dict:
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(template, ws, symlinks=True)
    (ws / "spec.yaml").write_bytes(base64.b64decode(case["spec"]))
    if case.get("results_op"):
        damage_results(ws, case["results_op"])
    before = snapshot(ws)
    why = _unsafe(case["argv"])
    if why:
        return {"skipped": why}
    os.chdir(ws)
    for k, v in case.get("env", {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v.replace("{ws}", str(ws))
    warnings.filters[:] = filters0
    warnings.simplefilter("default")  # a fresh process shows each warning once: reset the once-registries
    warnings.filters[:] = filters0
    t0 = time.time()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(dir=base) as err, tempfile.TemporaryFile(dir=base) as std:
        os.dup2(std.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            out = _call(case["argv"])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        err.seek(0)
        std.seek(0)
        out.update(_outcome(err.read(), std.read(), before, ws))
    out["seconds"] = round(time.time() - t0, 3)
    os.chdir(base)
    os.environ.clear()
    os.environ.update(env0)
    ray = sys.modules.get("ray")
    out["ray_left_running"] = bool(ray and ray.is_initialized())
    if out["ray_left_running"]:
        ray.shutdown()
    out["threads"] = sorted(t.name for t in threading.enumerate() if t.is_alive() and not t.daemon
                            and t is not threading.main_thread())
    return out


def serve(base: Path) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    log = os.open(base / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)  # anything printed between cases goes to the log, never into the protocol
    sys.path.insert(0, str(REPO / "tests"))
    import ternsearch.cli  # noqa: F401 - every import a case may need, before the clock of the first case
    import ternsearch.report.render  # noqa: F401
    import ternsearch.run.tuner  # noqa: F401
    import ternsearch.tracking.ui  # noqa: F401
    import trainables.loop  # noqa: F401

    install_guards()
    ws, template = base / "ws", base / "template"
    if not (template / ".done").exists():
        shutil.rmtree(template, ignore_errors=True)
        build_template(template, ws)
        (template / ".done").write_text("")
    env0, filters0 = dict(os.environ), warnings.filters[:]
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            result = run_case(json.loads(line), ws, template, base, env0, filters0)
        except BaseException as exc:  # noqa: BLE001 - a harness problem: say so, keep serving
            os.chdir(base)
            result = {"harness_error": f"{type(exc).__name__}: {exc}", "frames": _frames(exc)}
        proto.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
