"""The ``ternsearch`` command line. Every user-facing error is one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional, Sequence

from ternsearch.errors import TernsearchError
from ternsearch.results.export import export_command
from ternsearch.run.sweep import sweep_command
from ternsearch.run.train import train_file
from ternsearch.spec import load_spec, load_train_file
from ternsearch.spec.describe import metric_words
from ternsearch.spec.yamlsrc import load_located
from ternsearch.tracking.train_runs import log_single_run
from ternsearch.tracking.ui import ui_command

__all__ = ["main"]


def _cmd_train(a: argparse.Namespace) -> int:
    tf = load_train_file(a.config)
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


def _cmd_ui(a: argparse.Namespace) -> int:
    return ui_command(a)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ternsearch", description="Hyperparameter search for ternary networks.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="one training run without Ray (a train config or an exported best config)")
    t.add_argument("config")
    t.add_argument("--output", "-o", help="run directory (default: the file's output:, runs/NAME)")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    t.set_defaults(func=_cmd_train)

    v = sub.add_parser("validate", help="check a sweep or train file; starts nothing")
    v.add_argument("file")
    v.set_defaults(func=_cmd_validate)

    s = sub.add_parser("sweep", help="run a hyperparameter search")
    s.add_argument("file")
    s.add_argument("--dry-run", action="store_true", help="check everything, print the plan, start no trial")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this file")
    s.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: a local Ray)")
    s.add_argument("--storage", help="override storage.path")
    s.add_argument("--tracking-uri", help="override tracking.uri")
    s.add_argument("--quiet", "-q", action="store_true", help="less progress output")
    s.add_argument("--verbose", "-v", action="store_true",
                   help="also show Ray's, Tune's, MLflow's and Optuna's own output (and the trials' output)")
    s.set_defaults(func=_cmd_sweep)

    e = sub.add_parser("export", help="write the best trial as a standalone train config (by default a full "
                       "retraining on the whole training set)")
    e.add_argument("results", help="a sweep's results directory, or the sweep's spec file")
    e.add_argument("--spec", help="refuse unless this spec file (as it is now) made the results")
    e.add_argument("--pick", metavar="OBJECTIVE[:TOL]", help="multi-objective sweeps: the Pareto trial best on "
                   "OBJECTIVE within TOL (default 0.01) of the best first objective, e.g. ternary_zero_frac:0.01")
    e.add_argument("--packed", metavar="FILE", help="also write the best model packed at 2 bits a weight (.tern)")
    e.add_argument("--onnx", metavar="FILE", help="also write the best model as ONNX: uint8 images in, logits out, "
                   "ternary weights as int8 codes + DequantizeLinear")
    e.add_argument("--onnx-int2", action="store_true", help="with --onnx: store the codes as INT2 (opset 25)")
    e.add_argument("-o", "--output", default="best.yaml")
    e.add_argument("--epochs", type=int, help="retrain for this many epochs")
    e.add_argument("--keep-split", action="store_true", help="retrain on the sweep's data.subset and validation "
                   "split (default: on all 50,000 training images, data.val_fraction: 0, the val_* metrics then "
                   "measured on the training images)")
    e.set_defaults(func=_cmd_export)

    r = sub.add_parser("report", help="HTML report and trial table of a sweep")
    r.add_argument("results", help="a sweep's results directory")
    r.add_argument("-o", "--output", help="HTML file (default: reports/NAME.html)")
    r.set_defaults(func=_cmd_report)

    u = sub.add_parser("ui", help="the MLflow UI on a sweep's tracking store (listens on 127.0.0.1)")
    u.add_argument("results", help="a sweep's results directory")
    u.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=_cmd_ui)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TernsearchError as exc:
        if args.debug:
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
