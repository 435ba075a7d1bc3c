"""``ternsearch evaluate MODEL DATA [--output DIR] [--tracking-uri URI]``: a model's accuracy, per-class accuracy and
confusion matrix on labelled images.

MODEL is one of (the kind is told by its form, never guessed from its content):

- a ``.tern`` file (``export --packed``; loaded with ``torch.load(weights_only=True)``);
- a ``.onnx`` file (``export --onnx``; run in ONNX Runtime, the ``deploy`` extra);
- a ``ternsearch train`` run directory: the checkpoint its test evaluation used, else its newest; a checkpoint
  directory (``epoch_NNNN``); a sweep's results directory: its best trial's checkpoint;
- an MLflow model URI, ``runs:/RUN_ID/model`` or ``models:/NAME/VERSION``, read from ``--tracking-uri`` (a URI, or
  a sweep's results directory holding ``mlflow.db``), else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.

DATA is what ``trainables.evaldata`` reads: a CIFAR-10 binary or python-layout file or folder with any number of
records, or an ImageFolder tree of the CIFAR-10 class names. The files go to ``--output DIR``, by default
``evaluation/<MODEL's name>`` in the current directory (``ternsearch.report.confusion``); stdout gets the table
and then one JSON line.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from trainables.errors import TrainablesError
from trainables.evaldata import CLASSES, read_eval_data

from ternsearch.errors import ResultsError, UsageError
from ternsearch.report.confusion import FILES, confusion, table, write_files
from ternsearch.results.deploy import DEPLOY_HINT
from ternsearch.results.export import chosen_trial
from ternsearch.results.files import SWEEP
from ternsearch.results.outputs import check_output
from ternsearch.results.rundir import is_run_dir, run_checkpoint
from ternsearch.tracking.model_load import is_model_uri, load_model_uri, store_uri

__all__ = ["evaluate_command", "model_kind"]

KIND_WORDS = {"tern": "a .tern file", "onnx": "an .onnx file", "checkpoint": "a checkpoint directory",
              "run": "a `ternsearch train` run directory", "sweep": "a sweep's results directory"}
MODEL_ALLOWED = ("a .tern or .onnx file, a `ternsearch train` run directory, a checkpoint directory, a sweep's "
                 "results directory, or an MLflow model URI (runs:/RUN_ID/model, models:/NAME/VERSION)")


def model_kind(text: str) -> tuple[str, Optional[Path]]:
    """``(kind, path)`` of MODEL: kind ``mlflow`` (path None), ``tern``, ``onnx``, ``checkpoint``, ``run`` or
    ``sweep``, told from its form alone.

    Raises:
        ResultsError: no such file, or one of no kind above (one line naming it and what is allowed).
    """
    if is_model_uri(text):
        return "mlflow", None
    path = Path(text).expanduser()
    if not path.exists():
        raise ResultsError(f"{text}: no such file or directory (MODEL is {MODEL_ALLOWED})")
    if path.is_file():
        kind = {".tern": "tern", ".onnx": "onnx"}.get(path.suffix.lower())
        if kind is None:
            raise ResultsError(f"{text}: not a model file this command reads (suffix {path.suffix or 'none'}; MODEL "
                               f"is {MODEL_ALLOWED})")
        return kind, path
    if (path / "manifest.json").is_file():
        return "checkpoint", path
    if is_run_dir(path):
        return "run", path
    if (path / SWEEP).is_file():
        return "sweep", path
    raise ResultsError(f"{text}: a directory that is no run, checkpoint or sweep results (MODEL is {MODEL_ALLOWED})")


def _checkpoint(kind: str, path: Path) -> tuple[Path, str]:
    if kind == "run":
        return run_checkpoint(path)
    if kind == "sweep":
        trial = chosen_trial(path)[1]
        if not trial.get("checkpoint"):
            raise ResultsError(f"{path}: no trial has a checkpoint yet")
        return Path(trial["checkpoint"]), f"best trial {trial['trial_id']}"
    return path, "a checkpoint"


def _predictor(text: str, kind: str, path: Optional[Path], tracking_uri: Optional[str]) -> tuple[Callable, str]:
    """``(predict, what was loaded)``; every failure a one-line error."""
    # torch (and onnxruntime for .onnx): only once the arguments and the data have been checked
    from trainables.evalmodels import onnx_predictor, torch_predictor

    if kind == "mlflow":
        uri = store_uri(tracking_uri)
        return torch_predictor(load_model_uri(text, uri)), f"MLflow model {text}"
    if kind == "onnx":
        try:
            return onnx_predictor(path), f"ONNX graph {path} (onnxruntime)"
        except ImportError as exc:
            raise ResultsError(f"{text}: an .onnx model needs {exc.name or 'onnxruntime'}: {DEPLOY_HINT}") from None
    if kind == "tern":
        from trainables.packed import load_packed  # torch, as above

        return torch_predictor(load_packed(path)[0]), f"packed model {path}"
    from trainables.restore import model_from_checkpoint  # torch, as above

    checkpoint, how = _checkpoint(kind, path)
    return torch_predictor(model_from_checkpoint(checkpoint)[0]), f"checkpoint {checkpoint} ({how})"


def _default_output(text: str, path: Optional[Path]) -> Path:
    """``evaluation/NAME``: the file's or folder's name with its dots as ``_`` (m.tern -> m_tern, m.onnx ->
    m_onnx: two exports of one model do not overwrite each other's results), or the URI's characters that may
    stand in a file name (models:/net/2 -> models_net_2)."""
    if path is not None:
        name = path.resolve().name.replace(".", "_")
    else:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return Path("evaluation") / (name or "model")


def _check_outputs(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {folder}: is a file (give a folder for {', '.join(FILES)})")
    for name in FILES:
        check_output(folder / name, folder, {name}, arg="--output")


def evaluate_command(a) -> int:
    kind, path = model_kind(a.model)
    if a.tracking_uri and kind != "mlflow":
        raise UsageError(f"--tracking-uri {a.tracking_uri}: only for an MLflow model URI (runs:/..., models:/...; "
                         f"and {a.model} is {KIND_WORDS[kind]})")
    folder = Path(a.output) if a.output else _default_output(a.model, path)
    _check_outputs(folder)
    try:
        data = read_eval_data(a.data)
        predict, loaded = _predictor(a.model, kind, path, a.tracking_uri)
        logits = predict(data.images)
    except TrainablesError as exc:  # DataError, PackError, CheckpointError, ModelLoadError: one line each
        raise ResultsError(str(exc)) from None
    if logits.ndim != 2 or logits.shape != (len(data.labels), len(CLASSES)):
        raise ResultsError(f"{a.model}: gives outputs of shape {tuple(logits.shape)}, not N x {len(CLASSES)} "
                           "CIFAR-10 logits")
    ev = confusion(data.labels, logits.argmax(1), CLASSES)
    paths = write_files(ev, folder, f"{Path(a.model).name if path else a.model} on {Path(a.data).name}")
    print(f"{loaded} on {a.data}: {data.layout}", file=sys.stderr)
    print(table(ev))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    print(json.dumps({"model": a.model, "kind": kind, "data": a.data, "records": ev.records, "correct": ev.correct,
                      "accuracy": ev.accuracy, "output": str(folder)}, sort_keys=True))
    return 0
