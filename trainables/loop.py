"""The training loop: a plain function of a validated config and a ``report`` callback. No Ray in here.

``run(cfg, report, resume_from)`` trains ``cfg.train.epochs`` epochs (or until early stopping) and after every
epoch calls ``report(metrics, checkpoint_dir)``. Rank 0 writes a checkpoint directory that the callback may
copy or move away before it returns; other ranks pass ``None``. Under ``torch.distributed`` (DDP) each rank
trains on its own shard of every epoch's permutation and the metrics are reduced over ranks. Given an
``events_dir``, rank 0 also writes each epoch to TensorBoard event files there (``trainables.events``).

Exact resume: the epoch's data order and augmentation draw from RNGs seeded by ``(seed, epoch, rank)``, and
the checkpoint holds model, optimizer, schedule, grad scaler and early-stopping state, so 2 epochs + resume
for 1 equals 3 straight epochs, bit for bit on CPU. A checkpoint resumed with a different ``train.epochs`` (more
epochs for a finished run) continues its schedule as ``trainables.continuation`` describes.

The steps: ``trainables.training`` builds what the run trains with, ``trainables.epoch`` trains one epoch,
``trainables.evaluate`` measures it; here the epochs are reported and checkpointed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from trainables import optim
from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig
from trainables.agree import ranks_agree
from trainables.device import precision_name
from trainables.distributed import rank_world
from trainables.epoch import EpochResult, train_epoch
from trainables.evaluate import evaluate
from trainables.events import EpochEvents
from trainables.failures import OutOfMemoryError
from trainables.ternary import overall_zero_frac, ternary_stats
from trainables.training import Training, prepare

__all__ = ["Report", "run"]

Report = Callable[[dict[str, Any], Optional[str]], None]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def run(
    cfg: TrainConfig,
    report: Optional[Report] = None,
    resume_from: Optional[str | Path] = None,
    *,
    device: Optional[torch.device] = None,
    on_batch: Optional[Callable[[int, int, int], None]] = None,
    compile_backend: Any = "inductor",
    events_dir: Optional[str | Path] = None,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says; return the last epoch's metrics (plus ``best_*``).

    Args:
        cfg: a validated training config.
        report: called after every epoch with the metrics and, on rank 0, a checkpoint directory that is
            deleted after the call returns (copy or move it to keep it).
        resume_from: a checkpoint directory written by an earlier call; training continues after its epoch.
        device: where to train; default CUDA (local rank) when present, else CPU.
        on_batch: optional progress hook ``(epoch, batch_index, batches_per_epoch)``.
        compile_backend: ``torch.compile``'s backend when ``train.compile`` is on (tests use ``aot_eager``).
        events_dir: where rank 0 writes TensorBoard event files of every epoch (``trainables.events``); none
            without it.

    Raises:
        DivergedError: the training loss became NaN or infinite.
        OutOfMemoryError: host or GPU memory ran out (building the model, training or evaluating).
        BatchSizeError: ``train.batch_size`` does not fit the workers or the training images.
    """
    where: dict[str, Any] = {"epoch": 1, "device": device}  # what _run is at, for the message
    rank, world = rank_world()
    try:
        with ranks_agree(rank, world):  # under DDP, one rank's error is every rank's (trainables.agree)
            try:
                return _run(cfg, report, resume_from, device, on_batch, where, compile_backend, events_dir)
            except Exception as exc:  # noqa: BLE001 -- only memory exhaustion is translated, the rest re-raised
                if not _is_out_of_memory(exc):
                    raise
                raise _out_of_memory(exc, cfg, where, rank, world) from None
    finally:
        device_used = where["device"]
        if device_used is not None and device_used.type == "cuda":
            # A reused trial actor keeps its caching allocator: hand this run's blocks back to the GPU, which
            # other trials' processes share.
            torch.cuda.empty_cache()


def _out_of_memory(exc: BaseException, cfg: TrainConfig, where: dict, rank: int, world: int) -> OutOfMemoryError:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    on = f"{where['device'] or 'cpu'}" + (f", rank {rank} of {world}" if world > 1 else "")
    return OutOfMemoryError(
        f"out of memory in epoch {where['epoch']} at train.batch_size={cfg.train.batch_size} on {on} ({detail}); "
        "lower train.batch_size or pick a smaller model", where["epoch"])


def _run(cfg: TrainConfig, report: Optional[Report], resume_from, device, on_batch, where: dict,
         compile_backend: Any = "inductor", events_dir: Optional[str | Path] = None) -> dict[str, Any]:
    entered = time.time()
    t = prepare(cfg, resume_from, device, where, compile_backend)
    events = EpochEvents(events_dir, t.start_epoch) if events_dir is not None and t.rank == 0 else None
    metrics: dict[str, Any] = {}
    try:
        for epoch in range(t.start_epoch, cfg.train.epochs + 1):
            where["epoch"] = epoch
            metrics = _metrics(t, epoch, train_epoch(t, epoch, on_batch), entered)
            optim.epoch_end(t.schedule, metrics[cfg.metric.name])  # plateau: may lower the lr for the next epoch
            stop = t.stopper.update(metrics[cfg.metric.name], epoch)
            metrics.update(
                # run_complete: this is the run's last epoch (all epochs, or patience ran out). Not "done", which
                # Ray Tune sets itself on every trial's final result, early-stopped by ASHA or not.
                best_metric=t.stopper.best, best_epoch=t.stopper.best_epoch, early_stopped=stop,
                run_complete=stop or epoch == cfg.train.epochs,
            )
            if events is not None:  # before the report: Tune may stop the trial inside it
                events.epoch(epoch, metrics, t.model, last=metrics["run_complete"])
            _report(t, report, epoch, metrics)
            if stop:
                break
    finally:
        if events is not None:
            events.close()
    return metrics


def _metrics(t: Training, epoch: int, done: EpochResult, entered: float) -> dict[str, Any]:
    """The epoch's report: its training pass, the evaluation on the validation images, the ternary layers."""
    val_loss, val_acc = evaluate(
        t.net, t.val_x, t.val_y, batch_size=t.cfg.train.eval_batch_size, channels_last=t.channels_last,
        autocast_dtype=t.amp_dtype, device=t.device,
    )
    sums = done.sums
    metrics = {
        "epoch": epoch,
        "train_loss": done.train_loss,
        "train_acc": sums[1].item() / sums[2].item(),
        "val_loss": val_loss,
        "val_acc": val_acc,
        "eval_on": t.eval_on,  # "train": data.val_fraction 0, the val_* metrics are on training images
        "lr": t.optimizer.param_groups[-1]["lr"],
        "ternary_lr": t.optimizer.param_groups[0]["lr"] if t.latent else 0.0,
        "images_per_sec": sums[2].item() / done.train_seconds,
        "epoch_seconds": time.perf_counter() - done.started,
        "ternary_zero_frac": overall_zero_frac(t.model) if t.latent else 0.0,
        "quant_mix": done.mix,  # 0: this epoch ran at full precision, 1: fully ternary, between: ramping in
        "nonfinite_steps": int(sums[4].item()),  # left out of train_loss (fp16 overflows GradScaler skipped)
        "world_size": t.world,
        "torch_threads": torch.get_num_threads(),
        "shard_digest": done.shard_digest,
        # Wall-clock stamps of this process's run: start-up cost is what benchmarks/trial_overhead.py reads.
        "run_entered_unix": entered,
        "first_step_unix": t.first_step,
    }
    metrics.update(_layer_metrics(t.model))
    return metrics


def _layer_metrics(model: nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in ternary_stats(model).items():
        for key in ("neg_frac", "zero_frac", "pos_frac", "scale"):
            out[f"ternary/{name}/{key}"] = float(s[key])
    return out


def _report(t: Training, report: Optional[Report], epoch: int, metrics: dict[str, Any]) -> None:
    """Hand the epoch's metrics to ``report``, with its checkpoint on rank 0 (deleted once ``report`` returns)."""
    if report is None:
        return
    ckpt_dir = None
    if t.rank == 0:
        ckpt_dir = tempfile.mkdtemp(prefix=f"ternsearch-ckpt-e{epoch}-")
        _save(t, ckpt_dir, epoch, metrics)
    try:
        report(dict(metrics), ckpt_dir)
    finally:
        if ckpt_dir is not None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


def _save(t: Training, ckpt_dir: str, epoch: int, metrics: dict[str, Any]) -> None:
    """Epoch ``epoch``'s checkpoint: everything an exact resume restores, and a manifest with config and metrics."""
    state = {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "schedule": t.schedule.state_dict(),
        "scaler": t.scaler.state_dict(),
        "precision": precision_name(t.amp_dtype),  # what `auto` resolved to where this was written
        "early_stop": t.stopper.state(),
        "epoch": epoch,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if t.device.type == "cuda" else []},
    }
    save_checkpoint(ckpt_dir, state, {"epoch": epoch, "config": t.cfg.model_dump(mode="json"),
                                      "precision": state["precision"],
                                      "metrics": {k: v for k, v in metrics.items() if "/" not in k}})
