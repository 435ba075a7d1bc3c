"""``ternsearch export RUN_DIR --onnx FILE [--packed FILE]``: the model of a ``ternsearch train`` run directory
(the checkpoint its test evaluation used, else its newest; ``ternsearch.results.rundir``) as ONNX and/or packed
at 2 bits. A run directory has no trials to choose from and its config is its own ``config.yaml``, so the flags
that pick a trial or write a train config are refused there."""

from __future__ import annotations

from pathlib import Path

from ternsearch.errors import UsageError
from ternsearch.results.deploy import check_onnx_output, onnx_checkpoint, pack_checkpoint
from ternsearch.results.outputs import REGENERABLE, check_output
from ternsearch.results.rundir import run_checkpoint

__all__ = ["export_run_dir"]

_SWEEP_ONLY = (("output", "--output"), ("pick", "--pick"), ("spec", "--spec"), ("epochs", "--epochs"),
               ("keep_split", "--keep-split"))


def _check_arguments(a, run_dir: Path) -> None:
    for attr, flag in _SWEEP_ONLY:
        if getattr(a, attr, None):
            raise UsageError(f"{flag}: {run_dir} is a `ternsearch train` run directory, which has no trials to "
                             f"export a config from (its config is {run_dir / 'config.yaml'}; allowed here: "
                             "--onnx FILE, --onnx-int2, --packed FILE)")
    if not a.packed and not a.onnx:
        raise UsageError(f"{run_dir}: a `ternsearch train` run directory: give --onnx FILE and/or --packed FILE "
                         "(its config is its config.yaml)")


def export_run_dir(a, run_dir: Path) -> int:
    """The command for a run directory: every output checked before any is written."""
    _check_arguments(a, run_dir)
    if a.packed:
        check_output(a.packed, run_dir, REGENERABLE["packed"], arg="--packed")
    check_onnx_output(a, run_dir, [])  # also refuses --onnx naming the --packed file
    checkpoint, how = run_checkpoint(run_dir)
    where = f"{run_dir} ({checkpoint.name})"
    print(f"{run_dir}: exporting {checkpoint.name}, {how}")
    if a.packed:
        print(pack_checkpoint(checkpoint, Path(a.packed), where))
    if a.onnx:
        print(onnx_checkpoint(checkpoint, Path(a.onnx), a.onnx_int2, where))
    return 0
