"""``ternsearch export RESULTS --onnx FILE [--onnx-int2]``: the chosen trial's model as an ONNX graph whose ternary
weights are int8 (or INT2) codes behind DequantizeLinear (see ``trainables.onnx_export``); and the writers of both
deployable files (ONNX, ``--packed``) from one checkpoint, a sweep trial's or a ``ternsearch train`` run's."""

from __future__ import annotations

import io
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from ternsearch.errors import OutputError, ResultsError
from ternsearch.results.outputs import REGENERABLE, check_output, same_file

__all__ = ["check_onnx_output", "onnx_checkpoint", "pack_checkpoint", "write_onnx"]

DEPLOY_HINT = "pip install 'ternsearch[deploy]' (onnx, onnxscript, onnxruntime)"


def check_onnx_output(a, results: Path, specs: Iterable[Path]) -> None:
    """Refuse ``--onnx`` where it would overwrite a record, the spec, the ``-o`` file or the ``--packed`` file;
    refuse ``--onnx-int2`` without ``--onnx``. Before anything is written."""
    if a.onnx_int2 and not a.onnx:
        raise OutputError("--onnx-int2: give --onnx FILE too (it sets how that file stores the ternary codes)")
    if not a.onnx:
        return
    check_output(a.onnx, results, REGENERABLE["onnx"], list(specs), arg="--onnx")
    for flag, other in (("--output", a.output), ("--packed", a.packed)):
        if other and same_file(Path(a.onnx), Path(other)):
            raise OutputError(f"--onnx {a.onnx}: refusing to write here: it is also the {flag} file (give another "
                              "path)")


def _deploy_modules():
    """The exporter, or a one-line ResultsError when the deploy extra is not installed."""
    try:
        # torch, onnx, onnxscript: only for --onnx (export of a train config runs without them)
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        from trainables import onnx_export
    except ImportError as exc:
        raise ResultsError(f"--onnx needs {exc.name}: {DEPLOY_HINT}") from None
    return onnx, onnx_export


def write_onnx(results_dir: Path, best: dict[str, Any], output: Path, int2: bool = False) -> str:
    """Trial ``best``'s checkpoint as ONNX at ``output``; a line saying what was written and whether ONNX Runtime
    runs it."""
    check_output(output, results_dir, REGENERABLE["onnx"])
    if not best.get("checkpoint"):
        raise ResultsError(f"{results_dir}: no trial has a checkpoint to export yet")
    return onnx_checkpoint(Path(best["checkpoint"]), output, int2, f"{results_dir}: best trial {best['trial_id']}")


def onnx_checkpoint(checkpoint: Path, output: Path, int2: bool, where: str) -> str:
    """The model of ``checkpoint`` as ONNX at ``output`` (already checked); ``where`` names it in errors."""
    onnx, onnx_export = _deploy_modules()
    from trainables.restore import model_from_checkpoint  # torch, as above
    from trainables.ternary import ternary_modules  # torch, as above

    if int2 and not hasattr(onnx.TensorProto, "INT2"):
        raise ResultsError(f"--onnx-int2: onnx {onnx.__version__} has no INT2 type (opset 25: onnx >= 1.20)")
    model, cfg = model_from_checkpoint(checkpoint)
    kind = "int2" if int2 else "int8"
    try:
        path = onnx_export.export_onnx(model, output, kind, cfg.model_dump(mode="json"))
    except onnx_export.OnnxExportError as exc:
        raise ResultsError(f"{where}: {exc}") from None
    layers = len(ternary_modules(model))
    try:
        verdict = onnx_export.ort_can_run(path) or f"onnxruntime {metadata.version('onnxruntime')} runs it"
    except ImportError:
        verdict = f"onnxruntime is not installed, so it was not tried: {DEPLOY_HINT}"
    return (f"{path}: {path.stat().st_size / 1e6:.2f} MB ONNX, {layers} ternary layers as {kind.upper()} codes + "
            f"DequantizeLinear; input {onnx_export.INPUT} uint8 N x 3 x 32 x 32, output {onnx_export.OUTPUT}; "
            + verdict)


def pack_checkpoint(checkpoint: Path, output: Path, where: str) -> str:
    """The model of ``checkpoint`` packed at 2 bits a weight at ``output`` (already checked; see
    ``trainables.packed``); a line with the sizes. ``where`` names the model in errors."""
    # torch: only for --packed (export of a train config, like the sweep's best.yaml, runs without it)
    import torch
    from trainables.packed import PackError, save_packed  # torch, as above
    from trainables.restore import model_from_checkpoint  # torch, as above

    model, cfg = model_from_checkpoint(checkpoint)
    if cfg.model.quantizer == "none":
        raise ResultsError(f"{where} is full precision (model.quantizer: none): nothing to pack at 2 bits")
    try:
        path = save_packed(model, cfg, output)
    except PackError as exc:
        raise ResultsError(f"{where}: {exc}") from None
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    size = path.stat().st_size
    return (f"{path}: {size / 1e6:.2f} MB, {buf.tell() / size:.1f}x smaller than the fp32 state_dict "
            f"({buf.tell() / 1e6:.2f} MB); load it with trainables.packed.load_packed")
