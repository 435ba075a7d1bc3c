"""The ``ternsearch`` command line. Every user-facing error is one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shlex
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from ternsearch.errors import SpecError, TernsearchError, UsageError
from ternsearch.results.export import export_command
from ternsearch.run.preflight import check_tracking_store
from ternsearch.run.sweep import sweep_command
from ternsearch.run.train import train_file
from ternsearch.spec import load_spec, load_train_file
from ternsearch.spec.describe import metric_words
from ternsearch.spec.uris import check_ray_address, check_storage_path, check_tracking_uri
from ternsearch.spec.yamlsrc import load_located
from ternsearch.tracking.train_runs import log_single_run
from ternsearch.tracking.dashboard import dashboard_command
from ternsearch.tracking.ui import ui_command

__all__ = ["main"]


def _cmd_train(a: argparse.Namespace) -> int:
    tf = load_train_file(a.config)
    if tf.tracking.enabled and tf.tracking.uri:  # a store that cannot be made: before training, not after it
        check_tracking_store(tf.tracking.uri, lambda d: str(SpecError(a.config, None, "tracking.uri", d)))
    final = train_file(tf, Path(a.config), output=a.output, resume=a.resume, epochs=a.epochs,
                       progress=not a.quiet)
    if tf.tracking.enabled and (tf.tracking.uri or tf.origin.parent_run_id):
        final["mlflow_run_id"] = log_single_run(tf, Path(a.config), final, quiet=a.quiet)
    print(json.dumps(final, indent=1, sort_keys=True))
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    loc = load_located(a.file)
    if "search" in loc.data:
        spec = load_spec(a.file)
        print(f"{a.file}: ok (sweep '{spec.name}', {len(spec.params)} searched parameters, "
              f"{spec.searcher.num_samples} trials; metric {metric_words(spec.objectives, loc.data.get('metric'))})")
    else:
        tf = load_train_file(a.file)
        print(f"{a.file}: ok (train run '{tf.name}', {tf.train.epochs} epochs; metric "
              f"{metric_words(tf.objectives(), loc.data.get('metric'))})")
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    return sweep_command(a)


def _cmd_export(a: argparse.Namespace) -> int:
    return export_command(a)


def _cmd_report(a: argparse.Namespace) -> int:
    # pandas takes ~0.3 s to import: only for `ternsearch report` (every other command, `validate` first, is quick)
    from ternsearch.report.render import report_command

    return report_command(a)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    # numpy, Pillow (and torch once the model loads): only for `ternsearch evaluate`
    from ternsearch.report.evaluate import evaluate_command

    return evaluate_command(a)


def _cmd_ui(a: argparse.Namespace) -> int:
    return ui_command(a)


def _cmd_dashboard(a: argparse.Namespace) -> int:
    return dashboard_command(a)


class _Parser(argparse.ArgumentParser):
    """argparse with its own mistakes (unknown flag, a value that is not an int, a missing argument) told like ours:
    one line, ``ternsearch CMD: what is wrong (run ternsearch CMD --help)``, exit code 1, instead of the usage
    text and exit code 2. ``--help`` still prints the help and exits 0."""

    def error(self, message: str):
        body = re.sub(r"^argument ", "", " ".join(str(message).split()))
        raise UsageError(f"{self.prog}: {body} (run {self.prog} --help)")

    def parse_args(self, args=None, namespace=None):  # unknown arguments: named by their subcommand's parser
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            getattr(parsed, "parser", self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _checked(flag: str, problem: Callable[[str], Optional[str]]) -> Callable[[str], str]:
    """An argparse ``type``: the value as given, or ``UsageError`` ``FLAG VALUE: what is wrong (what is allowed)``
    where ``problem`` (None: fine) says so."""
    def check(text: str) -> str:
        why = problem(text)
        if why:
            raise UsageError(f"{flag} {shlex.quote(text)}: {why}")
        return text
    return check


def _whole(flag: str, low: int, high: Optional[int], wrong: str, allowed: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``; text that is no whole number is argparse's
    own ``invalid int value`` line."""
    def int_(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid int value: 'abc'"
        if value < low or (high is not None and value > high):
            raise UsageError(f"{flag} {value}: {wrong} ({allowed})")
        return value
    int_.__name__ = "int"
    return int_


def _path_problem(text: str) -> Optional[str]:
    if not text.strip():
        return "is empty (give a path)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system gave that are not UTF-8: they cannot go into a record
        return "is not a UTF-8 name (give a path of UTF-8 characters)"
    return None


def _host_problem(text: str) -> Optional[str]:
    if not text.strip() or any(c.isspace() for c in text):
        return "is not a host name or address (e.g. 127.0.0.1, localhost, or 0.0.0.0 for every interface)"
    return None


_EPOCHS = _whole("--epochs", 1, None, "not a number of epochs", "a whole number, 1 or more")


def _add_train_validate(sub) -> None:
    t = sub.add_parser("train", help="one training run without Ray (a train config or an exported best config)")
    t.add_argument("config")
    t.add_argument("--output", "-o", type=_checked("--output", _path_problem),
                   help="run directory (default: the file's output:, runs/NAME)")
    t.add_argument("--resume", metavar="DIR", type=_checked("--resume", _path_problem),
                   help="continue the run in DIR from its latest checkpoint")
    t.add_argument("--epochs", type=_EPOCHS, help="override train.epochs")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    t.set_defaults(func=_cmd_train)
    v = sub.add_parser("validate", help="check a sweep or train file; starts nothing")
    v.add_argument("file")
    v.set_defaults(func=_cmd_validate)


def _add_sweep(sub) -> None:
    s = sub.add_parser("sweep", help="run a hyperparameter search")
    s.add_argument("file")
    s.add_argument("--dry-run", action="store_true", help="check everything, print the plan, start no trial")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this file")
    s.add_argument("--address", type=_checked("--address", check_ray_address),
                   help="Ray cluster to join: auto or HOST:PORT (default: a local Ray)")
    s.add_argument("--storage", type=_checked("--storage", check_storage_path), help="override storage.path")
    s.add_argument("--tracking-uri", type=_checked("--tracking-uri", check_tracking_uri),
                   help="override tracking.uri")
    s.add_argument("--quiet", "-q", action="store_true", help="less progress output")
    s.add_argument("--replay", metavar="TABLE", type=_checked("--replay", _path_problem),
                   help="every trial replays the nearest recorded trial of TABLE (benchmarks/replay_table.py) "
                   "instead of training: the searcher and scheduler settings tried in seconds")
    s.add_argument("--verbose", "-v", action="store_true",
                   help="also show Ray's, Tune's, MLflow's and Optuna's own output (and the trials' output)")
    s.set_defaults(func=_cmd_sweep)


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write the best trial as a standalone train config (by default a full "
                       "retraining on the whole training set)")
    e.add_argument("results", help="a sweep's results directory, or the sweep's spec file (or a `ternsearch train` "
                   "run directory, with --onnx/--packed)")
    e.add_argument("--spec", type=_checked("--spec", _path_problem),
                   help="refuse unless this spec file (as it is now) made the results")
    e.add_argument("--pick", metavar="OBJECTIVE[:TOL]", help="multi-objective sweeps: the Pareto trial best on "
                   "OBJECTIVE within TOL (default 0.01) of the best first objective, e.g. ternary_zero_frac:0.01")
    e.add_argument("--packed", metavar="FILE", type=_checked("--packed", _path_problem),
                   help="also write the best model packed at 2 bits a weight (.tern)")
    e.add_argument("--onnx", metavar="FILE", type=_checked("--onnx", _path_problem), help="also write the best "
                   "model as ONNX: uint8 images in, logits out, ternary weights as int8 codes + DequantizeLinear")
    e.add_argument("--onnx-int2", action="store_true", help="with --onnx: store the codes as INT2 (opset 25)")
    e.add_argument("-o", "--output", type=_checked("--output", _path_problem),
                   help="the train config to write (default: best.yaml; not for a train run directory)")
    e.add_argument("--epochs", type=_EPOCHS, help="retrain for this many epochs")
    e.add_argument("--keep-split", action="store_true", help="retrain on the sweep's data.subset and validation "
                   "split (default: on all 50,000 training images, data.val_fraction: 0, the val_* metrics then "
                   "measured on the training images)")
    e.set_defaults(func=_cmd_export)


def _add_report_ui(sub) -> None:
    r = sub.add_parser("report", help="HTML report and trial table of a sweep")
    r.add_argument("results", help="a sweep's results directory")
    r.add_argument("-o", "--output", type=_checked("--output", _path_problem),
                   help="HTML file (default: reports/NAME.html)")
    r.set_defaults(func=_cmd_report)
    u = sub.add_parser("ui", help="the MLflow UI on a sweep's tracking store (listens on 127.0.0.1)")
    _add_server_arguments(u, 5000, _cmd_ui)
    d = sub.add_parser("dashboard", help="optuna-dashboard on a sweep's Optuna study (listens on 127.0.0.1; "
                       "pip install 'ternsearch[dashboard]')")
    _add_server_arguments(d, 8080, _cmd_dashboard)


def _add_evaluate(sub) -> None:
    v = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a model on images")
    v.add_argument("model", help="a .tern or .onnx file, a train run directory, a checkpoint or sweep results "
                   "directory, or an MLflow model URI (runs:/RUN_ID/model, models:/NAME/VERSION)")
    v.add_argument("data", help="a CIFAR-10 binary or python-layout file or folder (any number of records), or an "
                   "ImageFolder tree of the CIFAR-10 class names")
    v.add_argument("-o", "--output", type=_checked("--output", _path_problem),
                   help="folder for confusion.csv, per_class.csv, confusion.html (default: evaluation/MODEL-NAME)")
    v.add_argument("--tracking-uri", type=_checked("--tracking-uri", check_tracking_uri), help="for an MLflow "
                   "model URI: the store (or a sweep's results directory; default $MLFLOW_TRACKING_URI, ./mlflow.db)")
    v.set_defaults(func=_cmd_evaluate)


def _add_server_arguments(p: argparse.ArgumentParser, port: int, func: Callable) -> None:
    """RESULTS, --host and --port of a command that serves a sweep's records (ui, dashboard)."""
    p.add_argument("results", help="a sweep's results directory")
    p.add_argument("--host", default="127.0.0.1", type=_checked("--host", _host_problem),
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_whole("--port", 0, 65535, "not a port", "1 to 65535, or 0 for a free one"),
                   default=port, help=f"port to listen on (0: a free one; default {port})")
    p.set_defaults(func=func)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ternsearch", description="Hyperparameter search for ternary networks.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train_validate, _add_sweep, _add_export, _add_report_ui, _add_evaluate):
        add(sub)
    for command in sub.choices.values():
        command.set_defaults(parser=command)  # whose error an unknown argument is (see _Parser.parse_args)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = None
    try:
        args = _parser().parse_args(argv)
        return int(args.func(args) or 0)
    except TernsearchError as exc:
        if args is not None and args.debug:
            traceback.print_exc()
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The console script: ``main``, then a quick exit once everything is written.

    Tearing down an interpreter that has torch, pandas, plotly, MLflow and Ray loaded takes ~2 s on the 2-core
    machine (module teardown and garbage collection; nothing is written then). So once the command has returned
    and no thread other than daemons is left, the exit handlers run (Ray's shutdown, temporary-directory cleanup,
    logging's flush) and the process ends with ``os._exit``. Any live non-daemon thread means a normal exit."""
    code = main()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's; elsewhere exit normally
    if run_exit_handlers is None:
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
