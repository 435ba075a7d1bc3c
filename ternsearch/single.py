"""``ternsearch train``: one training run without Ray, with checkpoints, resume and a final test evaluation."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

from ternsearch.errors import PreflightError, TernsearchError, TrainingError
from ternsearch.mlflow_io import copy_redacted
from ternsearch.spec import TrainFile

__all__ = ["latest_checkpoint", "train_file"]

CKPT_DIR = "checkpoints"  # trainables.checkpoint.RUN_CHECKPOINTS (not imported here: it pulls in torch)


def latest_checkpoint(run_dir: Path, warn=print) -> Optional[Path]:
    """The newest checkpoint under ``run_dir/checkpoints`` that passes its integrity check.

    A corrupted or truncated newer checkpoint is skipped with a warning, and the previous one is used.
    """
    from trainables.checkpoint import latest_checkpoint as newest_usable

    return newest_usable(run_dir, warn)


def _output_dir(tf: TrainFile, override: Optional[str]) -> Path:
    return Path(override or tf.output.format(name=tf.name)).expanduser()


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
    from trainables.data import DataError, check_data
    from trainables.failures import TrialFailure, cap_memory_from_env
    from trainables.loop import run

    cfg = tf.base_config()
    if epochs is not None:
        cfg = cfg.with_overrides({"epochs": epochs})
    try:
        check_data(cfg.data)
    except DataError as exc:
        raise PreflightError(f"{source}: data: {exc}") from None
    from trainables.recipes import RecipeError, check_sources

    try:
        check_sources(cfg)
    except RecipeError as exc:
        raise PreflightError(f"{source}: {exc}") from None
    out = _output_dir(tf, resume or output)
    ckpts = out / CKPT_DIR
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(out, warn=lambda m: print(m, file=sys.stderr))
        if resume_from is None:
            raise PreflightError(f"{out}: no usable checkpoint to resume from (expected {ckpts}/epoch_NNNN)")
    ckpts.mkdir(parents=True, exist_ok=True)
    if not resume:
        copy_redacted(source, out / "config.yaml")  # a tracking URI's user:password masked
    history_path = out / "history.jsonl"

    bar = _Progress(cfg.train.epochs) if progress else None

    def report(metrics: dict, ckpt_dir: Optional[str]) -> None:
        if ckpt_dir:
            dest = ckpts / f"epoch_{metrics['epoch']:04d}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(ckpt_dir, dest)
            for old in sorted(ckpts.glob("epoch_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        with open(history_path, "a") as f:
            f.write(json.dumps({k: v for k, v in metrics.items() if "/" not in k}) + "\n")
        if bar:
            bar.epoch_done(metrics)

    cap_memory_from_env()  # a test's simulated small machine; off unless set
    t0 = time.time()
    try:
        final = run(cfg, report, resume_from=resume_from, on_batch=bar.batch if bar else None)
    except TrialFailure as exc:
        if bar:
            bar.close()
        kept = latest_checkpoint(out)
        raise TrainingError(f"{source}: training failed: {exc}" + (
            f" (checkpoints up to {kept.name} are in {ckpts})" if kept else "")) from None
    if bar:
        bar.close()
    test = evaluate_test(latest_checkpoint(out))
    final = {k: v for k, v in final.items() if "/" not in k}
    final.update(test, wall_seconds=time.time() - t0, output=str(out))
    (out / "final_metrics.json").write_text(json.dumps(final, indent=1, sort_keys=True))
    return final


def evaluate_test(ckpt: Optional[Path]) -> dict[str, float]:
    """Test-set loss and accuracy of the model in checkpoint ``ckpt`` (read only here, never during search)."""
    if ckpt is None:
        raise TernsearchError("no checkpoint was written; nothing to evaluate")
    from trainables.loop import evaluate, model_from_checkpoint, pick_device
    from trainables.data import load_test

    device = pick_device()
    model, cfg = model_from_checkpoint(ckpt, device)
    x, y = load_test(cfg.data)
    loss, acc = evaluate(model, x, y, batch_size=cfg.train.eval_batch_size, device=device)
    return {"test_loss": loss, "test_acc": acc}


class _Progress:
    """A tqdm bar over the batches of each epoch, with the last epoch's metrics in its postfix."""

    def __init__(self, epochs: int):
        from tqdm import tqdm

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
