"""``ternsearch evaluate MODEL DATA`` and ``ternsearch export RUN_DIR --onnx/--packed`` on a real ``ternsearch train``
run (tinynet, one epoch on 480 real images, registered in a real SQLite MLflow store): every kind of MODEL gives
the accuracy computed here directly from the run's checkpoint, on a 500-record CIFAR-10 binary file, a python-layout
file and an ImageFolder tree of 100 real PNGs cut from the real test batch; bad input is one line and exit 1."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_train_cli import _train
from trainables.augment import normalize
from trainables.evaldata import CLASSES, read_eval_data
from trainables.restore import model_from_checkpoint

pytestmark = pytest.mark.slow  # the module's run trains an epoch and logs to MLflow (~50 s on 2 free cores)

RUN = """\
name: evalrun
data: {subset: 600, val_fraction: 0.2}
model: {arch: tinynet}
train: {epochs: 1, batch_size: 64, threads: 2}
tracking: {uri: sqlite:///mlflow.db, experiment: evalrun}
"""
RECORD = 3073


@pytest.fixture(scope="module")
def work(tmp_path_factory, data_root) -> Path:
    """A folder with a finished run (``run/``, its model registered as ``models:/evalrun/1`` in ``mlflow.db``) and
    three data sets from the real test batch: ``b500.bin``, ``py300`` (python layout), ``images/`` (100 PNGs)."""
    work = tmp_path_factory.mktemp("evaluate")
    (work / "run.yaml").write_text(RUN)
    proc = _train("run.yaml", "-o", "run", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = np.fromfile(data_root / "cifar-10-batches-bin" / "test_batch.bin", np.uint8).reshape(-1, RECORD)
    raw[:500].tofile(work / "b500.bin")
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": raw[500:800, 0].tolist(),
             b"data": raw[500:800, 1:].copy()}
    (work / "py300").write_bytes(pickle.dumps(batch, protocol=2))  # bytes keys, _codecs.encode: torchvision's files
    for i, row in enumerate(raw[800:900]):
        folder = work / "images" / CLASSES[row[0]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(row[1:].reshape(3, 32, 32).transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return work


def direct_accuracy(work: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The run's evaluated checkpoint on ``images``, computed here: normalize, forward, argmax."""
    final = json.loads((work / "run" / "final_metrics.json").read_text())
    model, _ = model_from_checkpoint(final["evaluated_checkpoint"])
    with torch.no_grad():
        predicted = model(normalize(torch.from_numpy(images))).argmax(1).numpy()
    return float((predicted == labels).mean())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def evaluate(work: Path, capsys, *args: str) -> dict:
    """``ternsearch evaluate ARGS`` in this process (torch is loaded once); its JSON line, the files checked."""
    from ternsearch.cli import main

    assert Path.cwd() == work
    assert main(["evaluate", *args]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = work / summary["output"]
    matrix = list(csv.reader(open(folder / "confusion.csv")))
    assert matrix[0] == ["true \\ predicted", *CLASSES] and [r[0] for r in matrix[1:]] == list(CLASSES)
    counts = np.array([[int(v) for v in r[1:]] for r in matrix[1:]])
    assert counts.sum() == summary["records"] and np.trace(counts) == summary["correct"]
    per_class = list(csv.DictReader(open(folder / "per_class.csv")))
    assert [int(r["records"]) for r in per_class[:-1]] == counts.sum(1).tolist()
    assert per_class[-1]["class"] == "all"
    assert float(per_class[-1]["accuracy"]) == pytest.approx(summary["accuracy"], abs=1e-6)  # 6 decimals
    html = (folder / "confusion.html").read_text()
    assert "plotly" in html and '"type":"heatmap"' in html.replace(" ", "")
    summary["matrix"] = counts.tolist()
    return summary


def test_export_run_dir_then_every_kind_gives_the_runs_accuracy(work, capsys, monkeypatch):
    from ternsearch.cli import main

    monkeypatch.chdir(work)
    assert main(["export", "run", "--onnx", "m.onnx", "--packed", "m.tern"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "run: exporting epoch_0001, the checkpoint its test evaluation used", out
    assert out[1].startswith("m.tern: ") and out[2].startswith("m.onnx: ") and "runs it" in out[2], out
    raw = np.fromfile(work / "b500.bin", np.uint8).reshape(-1, RECORD)
    expected = direct_accuracy(work, raw[:, 1:].reshape(-1, 3, 32, 32).copy(), raw[:, 0].astype(np.int64))
    results = {kind: evaluate(work, capsys, model, "b500.bin", "-o", f"out/{kind}")
               for kind, model in (("run", "run"), ("tern", "m.tern"), ("onnx", "m.onnx"))}
    for kind, summary in results.items():
        assert summary["kind"] == kind and summary["records"] == 500
        assert summary["accuracy"] == pytest.approx(expected, abs=1e-12), kind
    # .tern and .onnx are the same model: the same prediction counts, cell by cell
    assert results["tern"]["matrix"] == results["onnx"]["matrix"] == results["run"]["matrix"]
    print(f"b500.bin: accuracy {expected:.4f} for the run, .tern and .onnx")


def test_image_folder_and_python_layout(work, capsys, monkeypatch, data_root):
    monkeypatch.chdir(work)
    for data in ("images", "py300"):
        read = read_eval_data(work / data)
        expected = direct_accuracy(work, read.images, read.labels)
        summary = evaluate(work, capsys, "run", data, "-o", f"out/{data}")
        assert summary["records"] == {"images": 100, "py300": 300}[data]
        assert summary["accuracy"] == pytest.approx(expected, abs=1e-12), data
    # the PNGs hold the test batch's pixels exactly (lossless), labelled by their folder's name, read class by class
    raw = np.fromfile(data_root / "cifar-10-batches-bin" / "test_batch.bin", np.uint8).reshape(-1, RECORD)[800:900]
    order = np.argsort(raw[:, 0], kind="stable")
    batch = read_eval_data(work / "images")
    assert np.array_equal(batch.images, raw[order, 1:].reshape(-1, 3, 32, 32))
    assert np.array_equal(batch.labels, raw[order, 0])
    assert batch.layout == f"ImageFolder (100 images, {len(set(raw[:, 0]))} of 10 classes)"


def test_mlflow_model_uri_and_the_default_output(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    summary = evaluate(work, capsys, "models:/evalrun/1", "b500.bin", "--tracking-uri", "sqlite:///mlflow.db")
    assert summary["kind"] == "mlflow" and summary["output"] == "evaluation/models_evalrun_1"
    assert summary["accuracy"] == pytest.approx(evaluate(work, capsys, "run", "b500.bin")["accuracy"])
    assert (work / "evaluation" / "run" / "confusion.csv").is_file()  # the default: evaluation/<model's name>


def test_onnx_without_onnxruntime_names_the_extra(work, capsys, monkeypatch):
    from ternsearch.cli import main

    monkeypatch.chdir(work)
    if not (work / "m.onnx").exists():
        assert main(["export", "run", "--onnx", "m.onnx"]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not there
    assert main(["evaluate", "m.onnx", "b500.bin"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["m.onnx: an .onnx model needs onnxruntime: pip install 'ternsearch[deploy]' (onnx, onnxscript, "
                   "onnxruntime)"]


def _bad_inputs(work: Path) -> list[tuple[list[str], str]]:
    """(argv, the one line expected, or its start) for each refusal."""
    (work / "bad" / "empty").mkdir(parents=True, exist_ok=True)
    (work / "bad" / "loose").mkdir(exist_ok=True)
    (work / "bad" / "loose" / "notes.txt").write_text("no images here")
    for name in ("cat", "kitten", "Dog"):
        (work / "bad" / "classes" / name).mkdir(parents=True, exist_ok=True)
    (work / "bad" / "broken" / "cat").mkdir(parents=True, exist_ok=True)
    (work / "bad" / "broken" / "cat" / "a.png").write_bytes(b"\x89PNG not really")
    (work / "bad" / "big" / "dog").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48)).save(work / "bad" / "big" / "dog" / "a.png")

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (work / "bad" / "evil").write_bytes(pickle.dumps({"data": Boom(), "labels": []}, protocol=2))
    (work / "bad" / "model.pt").write_bytes(b"")
    allowed = ", ".join(CLASSES)
    return [
        (["evaluate", "nope.tern", "b500.bin"], "nope.tern: no such file or directory (MODEL is a .tern or .onnx "
         "file, a `ternsearch train` run directory"),
        (["evaluate", "bad/model.pt", "b500.bin"], "bad/model.pt: not a model file this command reads (suffix .pt;"),
        (["evaluate", "run", "bad/empty"], "bad/empty: the folder is empty (give a CIFAR-10 file or folder, or an "
         "ImageFolder tree)"),
        (["evaluate", "run", "bad/loose"], "bad/loose: no recognised data layout: neither CIFAR-10 files"),
        (["evaluate", "run", "bad/classes"], f"bad/classes: class folders Dog, kitten are not CIFAR-10 classes "
         f"(allowed: {allowed}; missing: {', '.join(c for c in CLASSES if c != 'cat')})"),
        (["evaluate", "run", "bad/broken"], "bad/broken/cat/a.png: not a readable image (cannot identify image file"),
        (["evaluate", "run", "bad/big"], "bad/big/dog/a.png: is 64 x 48 pixels (CIFAR-10 models take 32 x 32 images)"),
        (["evaluate", "run", "bad/evil"], "bad/evil: not a CIFAR-10 python-layout file (refusing to load "),
        (["evaluate", "run", "run.yaml"], "run.yaml: "),
        (["evaluate", "run", "b500.bin", "--tracking-uri", "sqlite:///mlflow.db"], "--tracking-uri sqlite:///mlflow.db:"
         " only for an MLflow model URI (runs:/..., models:/...; and run is a `ternsearch train` run directory)"),
        (["evaluate", "models:/evalrun/1", "b500.bin", "--tracking-uri", "sqlite:///none.db"], "--tracking-uri "
         f"sqlite:///none.db: no MLflow store at {work / 'none.db'}"),
        (["export", "run", "-o", "x.yaml", "--onnx", "x.onnx"], "--output: run is a `ternsearch train` run directory"),
        (["export", "run"], "run: a `ternsearch train` run directory: give --onnx FILE and/or --packed FILE"),
    ]


def test_bad_input_is_one_line_and_exit_1(work):
    for argv, expected in _bad_inputs(work):
        proc = cli(*argv, cwd=work)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith(expected), (argv, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert not (work / "x.yaml").exists() and not (work / "x.onnx").exists() and not (work / "none.db").exists()
    assert not (work / "evaluation" / "nope_tern").exists()
