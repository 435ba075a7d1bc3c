"""``ternsearch train``: one training run without Ray, with checkpoints, resume and a final test evaluation."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm import tqdm
from trainables.errors import BatchSizeError
from trainables.failures import TrialFailure, cap_memory_from_env

from ternsearch.errors import OutputError, PreflightError, TernsearchError, TrainingError
from ternsearch.results.atomic import append_line, write_atomic
from ternsearch.results.export import with_epochs
from ternsearch.results.outputs import unwritable
from ternsearch.run.preflight import check_inputs
from ternsearch.spec import TrainFile
from ternsearch.tracking.store import copy_redacted

__all__ = ["latest_checkpoint", "train_file"]

CKPT_DIR = "checkpoints"  # trainables.checkpoint.RUN_CHECKPOINTS (not imported here: it pulls in torch)


def latest_checkpoint(run_dir: Path, warn=print) -> Optional[Path]:
    """The newest checkpoint under ``run_dir/checkpoints`` that passes its integrity check.

    A corrupted or truncated newer checkpoint is skipped with a warning, and the previous one is used.
    """
    # torch (as with every trainables.checkpoint/.loop/.data import here): off `ternsearch validate`'s path
    from trainables.checkpoint import latest_checkpoint as newest_usable

    return newest_usable(run_dir, warn)


def _output_dir(tf: TrainFile, source: Path, output: Optional[str], resume: Optional[str]) -> Path:
    """The run directory (``--resume DIR``/``--output``, else the file's ``output:``), absolute against the current
    directory: what the run records (final_metrics.json, MLflow tags) points there from anywhere. Refused in one
    line, before anything is written, where it cannot be made or written (a file, a parent that is a file...)."""
    if resume and output:
        raise PreflightError(f"--output {output}: cannot be given with --resume (a resumed run continues in its "
                             f"own directory, {resume}; leave --output out)")
    out = Path(resume or output or tf.output.format(name=tf.name)).expanduser().resolve()
    if resume and not out.exists():
        raise PreflightError(f"--resume {resume}: no such run directory (give the folder of the run to continue)")
    why = unwritable(out)
    if why:
        where = f"--resume {resume}" if resume else f"--output {output}" if output else f"{source}: output"
        raise OutputError(f"{where}: cannot write the run there ({why}; give a folder you can write)")
    return out


def train_file(
    tf: TrainFile,
    source: Path,
    *,
    output: Optional[str] = None,
    resume: Optional[str] = None,
    epochs: Optional[int] = None,
    progress: bool = True,
    keep: int = 2,
) -> dict[str, Any]:
    """Train the run ``tf`` describes; returns the final metrics (including test accuracy)."""
    cfg = _checked_config(tf, source, epochs)
    out = _output_dir(tf, source, output, resume)
    resume_from = _resume_point(out, cfg.train.epochs) if resume else None
    (out / CKPT_DIR).mkdir(parents=True, exist_ok=True)
    if not resume:
        copy_redacted(source, out / "config.yaml")  # a tracking URI's user:password masked
    # torch: `ternsearch train` checks its file before importing it
    from trainables.loop import run

    t0 = time.time()
    final = _train(run, cfg, source, out, resume_from, progress, keep)
    ckpt, epoch, kind = _evaluated_checkpoint(out, cfg, final)
    why = (f"by {cfg.metric.name} {final['best_metric']:.4f}" if kind == "best" else
           "best epoch unusable" if _has_validation(cfg) else "no validation split")
    print(f"test evaluation on the {kind} epoch ({epoch}, {why}): {ckpt}", file=sys.stderr)
    final.update(evaluate_test(ckpt), evaluated_checkpoint=str(ckpt), evaluated_epoch=epoch, evaluated_as=kind,
                 wall_seconds=time.time() - t0, output=str(out))
    write_atomic(out / "final_metrics.json", json.dumps(final, indent=1, sort_keys=True))
    return final


def _checked_config(tf: TrainFile, source: Path, epochs: Optional[int]):
    """The run's config (``epochs`` overriding train.epochs), its data and weight sources checked."""
    cfg = tf.base_config()
    if epochs is not None:
        cfg = with_epochs(cfg, epochs)
    check_inputs(cfg, lambda key, detail: f"{source}: {'.'.join(key)}: {detail}")
    return cfg


def _train(run, cfg, source: Path, out: Path, resume_from: Optional[Path], progress: bool, keep: int) -> dict:
    """The training loop (``run``, trainables.loop's), its checkpoints kept in ``out/checkpoints`` and its epochs
    in ``out/history.jsonl``; returns the final metrics without the per-layer ones (``ternary/<layer>/...``)."""
    bar = _Progress(cfg.train.epochs) if progress else None
    cap_memory_from_env()  # a test's simulated small machine; off unless set
    try:
        final = run(cfg, _reporter(cfg, out, bar, keep), resume_from=resume_from, on_batch=bar.batch if bar else None,
                    events_dir=out)  # TensorBoard event files beside history.jsonl
    except BatchSizeError as exc:  # found once the data is loaded: before the first step
        if bar:
            bar.close()
        raise PreflightError(f"{source}: train.batch_size: {exc}") from None
    except TrialFailure as exc:
        if bar:
            bar.close()
        kept = latest_checkpoint(out)
        raise TrainingError(f"{source}: training failed: {exc}" + (
            f" (checkpoints up to {kept.name} are in {out / CKPT_DIR})" if kept else "")) from None
    if bar:
        bar.close()
    return {k: v for k, v in final.items() if "/" not in k}


def _reporter(cfg, out: Path, bar: Optional[_Progress], keep: int) -> Callable[[dict, Optional[str]], None]:
    """The loop's ``report``: each epoch's checkpoint moved to ``out/checkpoints/epoch_NNNN`` (the newest ``keep``
    and the best one kept), its metrics appended to ``out/history.jsonl`` and shown on the progress bar."""
    ckpts, history_path = out / CKPT_DIR, out / "history.jsonl"

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if ckpt_dir:
            dest = ckpts / f"epoch_{metrics['epoch']:04d}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(ckpt_dir, dest)
            # The best epoch's checkpoint is kept beside the newest `keep`: the test evaluation uses it.
            best = f"epoch_{metrics['best_epoch']:04d}" if _has_validation(cfg) else None
            for old in sorted(ckpts.glob("epoch_*"))[:-keep]:
                if old.name != best:
                    shutil.rmtree(old, ignore_errors=True)
        append_line(history_path, json.dumps({k: v for k, v in metrics.items() if "/" not in k}))
        if bar:
            bar.epoch_done(metrics)

    return report


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def _resume_point(out: Path, epochs: int) -> Path:
    """The checkpoint a resumed run continues from; refused when it has already trained ``epochs``."""
    from trainables.checkpoint import read_manifest  # torch

    resume_from = latest_checkpoint(out, _warn)
    if resume_from is None:
        raise PreflightError(f"{out}: no usable checkpoint to resume from (expected {out / CKPT_DIR}/epoch_NNNN)")
    done = int(read_manifest(resume_from)["epoch"])
    if epochs <= done:
        raise PreflightError(f"{out}: already trained {done} epochs, nothing to do for train.epochs {epochs}; "
                             f"to continue it, pass --epochs N with N > {done}")
    return resume_from


def _has_validation(cfg) -> bool:
    """Whether the run's metric is measured on held-out images (with ``val_fraction: 0`` it is training images)."""
    return cfg.data.val_fraction > 0


def _evaluated_checkpoint(out: Path, cfg, final: dict) -> tuple[Path, int, str]:
    """``(checkpoint, epoch, "best" | "last")`` for the test evaluation: the best epoch by ``cfg.metric`` when there
    is a validation split (falling back to the last one if that checkpoint is unusable), else the last epoch."""
    from trainables.checkpoint import CheckpointError, load_checkpoint, read_manifest  # torch

    if _has_validation(cfg) and final.get("best_epoch"):
        best = out / CKPT_DIR / f"epoch_{int(final['best_epoch']):04d}"
        try:
            load_checkpoint(best)
            return best, int(final["best_epoch"]), "best"
        except CheckpointError as exc:
            _warn(f"warning: the best epoch's checkpoint is unusable ({exc}); evaluating the last one")
    last = latest_checkpoint(out, _warn)
    if last is None:
        raise TernsearchError("no checkpoint was written; nothing to evaluate")
    return last, int(read_manifest(last)["epoch"]), "last"


def evaluate_test(ckpt: Optional[Path]) -> dict[str, float]:
    """Test-set loss and accuracy of the model in checkpoint ``ckpt`` (read only here, never during search)."""
    if ckpt is None:
        raise TernsearchError("no checkpoint was written; nothing to evaluate")
    # torch: only once a run has a checkpoint to evaluate
    from trainables.data import load_test
    from trainables.device import pick_device
    from trainables.evaluate import evaluate
    from trainables.restore import model_from_checkpoint

    device = pick_device()
    model, cfg = model_from_checkpoint(ckpt, device)
    x, y = load_test(cfg.data)
    loss, acc = evaluate(model, x, y, batch_size=cfg.train.eval_batch_size, device=device)
    return {"test_loss": loss, "test_acc": acc}


class _Progress:
    """A tqdm bar over the batches of each epoch, with the last epoch's metrics in its postfix."""

    def __init__(self, epochs: int):
        self._tqdm, self.epochs, self.bar = tqdm, epochs, None

    def batch(self, epoch: int, b: int, n: int) -> None:
        if self.bar is None or self.bar.total != n or b == 0:
            if self.bar is not None:
                self.bar.close()
            self.bar = self._tqdm(total=n, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=False,
                                  dynamic_ncols=True, file=sys.stderr)
        self.bar.update(1)

    def epoch_done(self, m: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {m['epoch']:>3}/{self.epochs}  train_loss {m['train_loss']:.4f}  train_acc "
              f"{m['train_acc']:.4f}  val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  lr {m['lr']:.4g}  "
              f"zero_frac {m['ternary_zero_frac']:.3f}  {m['images_per_sec']:.0f} img/s", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
