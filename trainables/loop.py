"""The training loop: a plain function of a validated config and a ``report`` callback. No Ray in here.

``run(cfg, report, resume_from)`` trains ``cfg.train.epochs`` epochs (or until early stopping) and after every
epoch calls ``report(metrics, checkpoint_dir)``. Rank 0 writes a checkpoint directory that the callback may
copy or move away before it returns; other ranks pass ``None``. Under ``torch.distributed`` (DDP) each rank
trains on its own shard of every epoch's permutation and the metrics are reduced over ranks.

Exact resume: the epoch's data order and augmentation draw from RNGs seeded by ``(seed, epoch, rank)``, and
the checkpoint holds model, optimizer, schedule, grad scaler and early-stopping state, so 2 epochs + resume
for 1 equals 3 straight epochs, bit for bit on CPU. A checkpoint resumed with a different ``train.epochs`` (more
epochs for a finished run) continues its schedule as ``trainables.continuation`` describes.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainables import optim, recipes
from trainables.augment import BatchAugment, normalize
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.config import TrainConfig
from trainables.continuation import restore_schedule
from trainables.data import make_split
from trainables.errors import BatchSizeError
from trainables.failures import DivergedError, OutOfMemoryError
from trainables.models import build_model
from trainables.restore import model_from_checkpoint  # noqa: F401 -- until ternsearch imports it from there
from trainables.ternary import latent_weight_params, overall_zero_frac, ternary_stats

__all__ = ["MAX_NONFINITE_FRACTION", "DivergedError", "OutOfMemoryError", "Report", "evaluate",
           "model_from_checkpoint", "pick_device", "resolve_precision", "run", "set_determinism"]

Report = Callable[[dict[str, Any], Optional[str]], None]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def pick_device() -> torch.device:
    """CUDA device of this process's local rank when there is a GPU, else CPU: for runs outside Ray
    (``ternsearch train``, tests). A Ray trial passes the device it reserved (``entry.trial_device``)."""
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32.

    ``auto``: bf16 on GPUs that support it, else fp16 (with a GradScaler); fp32 on CPU, where bf16 autocast
    measured slower than fp32 on CPUs without AMX (see FIELD-NOTES).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        # including_emulation=False: the default counts bf16 emulated in fp32 (V100, T4), slower than fp16 with
        # a GradScaler, which is what those GPUs get.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return None


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Set torch's global switches for this run (explicitly both ways: a reused trial actor keeps the last run's).

    ``deterministic``: cuDNN's deterministic algorithms, a fixed cuBLAS workspace (cuBLAS otherwise reduces in
    an order that depends on its stream's workspace) and ``torch.use_deterministic_algorithms``, warning
    instead of raising for an op that has no deterministic CUDA kernel. Otherwise ``cudnn.benchmark`` on CUDA:
    it times the algorithms for each new input shape once and keeps the fastest, which is also why GPU runs,
    resumed or not, differ in the last bits.
    """
    import os

    if deterministic:
        # Read by cuBLAS when its handle is created: set before the first matmul of this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


# More than this fraction of an epoch's steps with a non-finite loss is divergence. Fewer are fp16 overflows
# that GradScaler skipped (it halves the scale and drops the step): they leave the mean loss out, not the run.
MAX_NONFINITE_FRACTION = 0.25


def _epoch_loss(sums: torch.Tensor, steps: int, epoch: int) -> float:
    """The epoch's mean training loss over its finite steps; DivergedError past the non-finite threshold.

    ``sums``: (loss over finite steps, correct, images, images in finite steps, non-finite steps), already
    summed over ranks; ``steps``: the steps of all ranks."""
    bad, finite_images = sums[4].item(), sums[3].item()
    if bad > MAX_NONFINITE_FRACTION * steps or finite_images == 0:
        raise DivergedError(epoch, float("nan") if finite_images == 0 else float("inf"))
    loss = sums[0].item() / finite_images
    if not math.isfinite(loss):  # finite steps whose sum overflowed
        raise DivergedError(epoch, loss)
    return loss


def _load_state(state: dict, model, optimizer, scaler, stopper) -> int:
    """Restore a checkpoint's state; return the epoch to start at.

    The GradScaler's state is loaded only when the checkpoint has one and this run's scaler is on: a checkpoint
    written in bf16 or fp32 (scaler off, state ``{}``) may resume where ``precision: auto`` resolves to fp16 (another
    GPU, or CPU -> GPU), and the fresh scaler then starts from its default scale."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    stopper.load(state["early_stop"])
    return int(state["epoch"]) + 1


def _precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _shard_digest(indices: torch.Tensor, world: int) -> str:
    """A short digest of the images each rank trains on this epoch, gathered from all ranks ("a,b")."""
    import hashlib

    mine = hashlib.sha1(indices.cpu().numpy().tobytes()).hexdigest()[:10]
    if world == 1:
        return mine
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return ",".join(gathered)


def _seed(base: int, epoch: int, rank: int, stream: int) -> int:
    # Distinct, reproducible streams per (seed, epoch, rank, purpose); nothing depends on how far a previous
    # epoch advanced an RNG, which is what makes resume exact.
    return (base * 1_000_003 + epoch * 10_007 + rank * 101 + stream) % (2**63 - 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    channels_last: bool = False,
    autocast_dtype: Optional[torch.dtype] = None,
    device: Optional[torch.device] = None,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on uint8 images ``x``; reduced over DDP ranks.

    Each rank evaluates its own contiguous shard, so the work splits and the totals are exact.
    """
    device = device or next(model.parameters()).device
    rank, world = _rank_world()
    n = x.shape[0]
    lo, hi = n * rank // world, n * (rank + 1) // world
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    for i in range(lo, hi, batch_size):
        xb = normalize(x[i : min(i + batch_size, hi)].to(device, non_blocking=True), channels_last=channels_last)
        yb = y[i : min(i + batch_size, hi)].to(device, non_blocking=True)
        with amp:
            out = model(xb)
        totals[0] += F.cross_entropy(out.float(), yb, reduction="sum")
        totals[1] += (out.argmax(1) == yb).sum()
        totals[2] += yb.numel()
    totals = _all_sum(totals, world)
    model.train(was_training)
    count = max(totals[2].item(), 1.0)
    return totals[0].item() / count, totals[1].item() / count


class _EarlyStop:
    def __init__(self, mode: str, patience: Optional[int]):
        self.mode, self.patience = mode, patience
        self.best: Optional[float] = None
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's metric; True when patience is exhausted."""
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


def _layer_metrics(model: nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in ternary_stats(model).items():
        for key in ("neg_frac", "zero_frac", "pos_frac", "scale"):
            out[f"ternary/{name}/{key}"] = float(s[key])
    return out


def run(
    cfg: TrainConfig,
    report: Optional[Report] = None,
    resume_from: Optional[str | Path] = None,
    *,
    device: Optional[torch.device] = None,
    on_batch: Optional[Callable[[int, int, int], None]] = None,
    compile_backend: Any = "inductor",
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

    Raises:
        DivergedError: the training loss became NaN or infinite.
        OutOfMemoryError: host or GPU memory ran out (building the model, training or evaluating).
    """
    where: dict[str, Any] = {"epoch": 1, "device": device}  # what _run is at, for the message
    try:
        return _run(cfg, report, resume_from, device, on_batch, where, compile_backend)
    except Exception as exc:  # noqa: BLE001 -- only memory exhaustion is translated, the rest re-raised
        if not _is_out_of_memory(exc):
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(
            f"out of memory in epoch {where['epoch']} at train.batch_size={cfg.train.batch_size} on "
            f"{where['device'] or 'cpu'} ({detail}); lower train.batch_size or pick a smaller model",
            where["epoch"]) from None
    finally:
        device_used = where["device"]
        if device_used is not None and device_used.type == "cuda":
            # A reused trial actor keeps its caching allocator: hand this run's blocks back to the GPU, which
            # other trials' processes share.
            torch.cuda.empty_cache()


def _run(cfg: TrainConfig, report: Optional[Report], resume_from, device, on_batch, where: dict,
         compile_backend: Any = "inductor") -> dict[str, Any]:
    entered = time.time()
    p = cfg.train
    device = where["device"] = device or pick_device()
    set_determinism(p.deterministic, device)
    if p.threads:
        torch.set_num_threads(p.threads)
    rank, world = _rank_world()
    if p.batch_size % world:
        raise BatchSizeError(f"batch_size {p.batch_size} is not divisible by {world} workers")
    local_bs = p.batch_size // world

    split = make_split(cfg.data)
    # The dataset is small: keep it uint8 on the training device; batches are gathered by index there.
    train_x, train_y = split.train_x.to(device), split.train_y.to(device)
    val_x, val_y = (train_x, train_y) if split.eval_on == "train" else (split.val_x.to(device), split.val_y.to(device))
    shard = train_x.shape[0] // world
    batches = shard // local_bs
    if batches < 1:
        raise BatchSizeError(f"{shard} training images per worker are fewer than one batch of {local_bs}")

    torch.manual_seed(p.seed)  # model init is identical on every rank (DDP also broadcasts it)
    model = build_model(cfg.model)
    if cfg.model.init == "checkpoint":
        recipes.warm_start(model, cfg.model.init_from)
    model = model.to(device)
    # channels_last measured 19-38% faster for these convnets on CPU, and it is what tensor cores want.
    channels_last = bool(p.channels_last) if p.channels_last != "auto" else True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    latent = latent_weight_params(model)
    optimizer = optim.build_optimizer(optim.param_groups(model, p, latent), p, device)
    steps = optim.steps_per_epoch(batches, p.grad_accum)
    state, manifest = load_checkpoint(resume_from, map_location=device) if resume_from is not None else (None, None)
    if state is None:
        schedule = optim.build_schedule(optimizer, p, steps, cfg.metric.mode)
    else:  # the run's length may have changed since the checkpoint (`ternsearch train --resume DIR --epochs N`)
        schedule = restore_schedule(optimizer, p, steps, cfg.metric.mode, state["schedule"],
                                    trained_for=int(manifest["config"]["train"]["epochs"]),
                                    done_epochs=int(state["epoch"]))
    amp_dtype = resolve_precision(p.precision, device)
    # fp16 needs loss scaling against underflow; bf16 has fp32's exponent range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    stopper = _EarlyStop(cfg.metric.mode, p.early_stop_patience)
    start_epoch = 1
    if state is not None:
        start_epoch = _load_state(state, model, optimizer, scaler, stopper)
    where["epoch"] = start_epoch

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if p.compile:
        # A fresh Dynamo cache per run: a reused trial actor would otherwise keep the last trial's compiled
        # graphs (guarded on that model object) and count its recompiles against this run's limit.
        torch._dynamo.reset()
        net = torch.compile(net, backend=compile_backend)
    augment = BatchAugment(p, channels_last=channels_last)
    teacher = recipes.load_teacher(p.distill_from, device, channels_last) if p.distill_weight > 0 else None
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    metrics: dict[str, Any] = {}
    first_step: Optional[float] = None

    for epoch in range(start_epoch, p.epochs + 1):
        where["epoch"] = epoch
        mix = recipes.quant_mix(epoch, p.quantize_from_epoch, p.ramp_epochs) if latent else 0.0
        if latent:
            recipes.set_quant_mix(model, mix)
        t0 = time.perf_counter()
        torch.manual_seed(_seed(p.seed, epoch, rank, 0))  # torchvision v2 transforms draw from the global RNG
        order_gen = torch.Generator().manual_seed(_seed(p.seed, epoch, 0, 1))  # same permutation on all ranks
        aug_gen = torch.Generator(device=device).manual_seed(_seed(p.seed, epoch, rank, 2))
        perm = torch.randperm(train_x.shape[0], generator=order_gen)[rank::world][: batches * local_bs]
        shard_digest = _shard_digest(perm, world)
        perm = perm.to(device)
        net.train()
        # loss over finite steps, correct, count, count in finite steps, non-finite steps: no per-step sync
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        for b in range(batches):
            idx = perm[b * local_bs : (b + 1) * local_bs]
            xb, yb = augment(train_x[idx], train_y[idx], aug_gen)
            if first_step is None:
                first_step = time.time()
            step_now = (b + 1) % p.grad_accum == 0 or b + 1 == batches
            sync = nullcontext() if step_now or world == 1 else net.no_sync()
            with sync:
                with amp:
                    out = net(xb)
                    if teacher is None:
                        loss = F.cross_entropy(out, yb, label_smoothing=p.label_smoothing)
                    else:
                        with torch.no_grad():
                            taught = teacher(xb)
                        loss = recipes.distill_loss(out, taught, yb, p.distill_weight, p.distill_temperature,
                                                    p.label_smoothing)
                scaler.scale(loss / p.grad_accum).backward()
            if step_now:
                if p.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
            hard = yb if yb.ndim == 1 else yb.argmax(1)
            finite = torch.isfinite(loss.detach())
            sums[0] += torch.where(finite, loss.detach().double(), 0.0) * hard.numel()
            sums[1] += (out.detach().argmax(1) == hard).sum()
            sums[2] += hard.numel()
            sums[3] += finite * hard.numel()
            sums[4] += ~finite
            if on_batch is not None:
                on_batch(epoch, b, batches)
        if device.type == "cuda":
            # Kernels run asynchronously: without waiting for them the clock stops while the GPU still works
            # on the epoch's last steps, and images_per_sec comes out too high. No CPU test can show this.
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        sums = _all_sum(sums, world)
        train_loss = _epoch_loss(sums, batches * world, epoch)
        val_loss, val_acc = evaluate(
            net, val_x, val_y, batch_size=p.eval_batch_size, channels_last=channels_last,
            autocast_dtype=amp_dtype, device=device,
        )
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": sums[1].item() / sums[2].item(),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "eval_on": split.eval_on,  # "train": data.val_fraction 0, the val_* metrics are on training images
            "lr": optimizer.param_groups[-1]["lr"],
            "ternary_lr": optimizer.param_groups[0]["lr"] if latent else 0.0,
            "images_per_sec": sums[2].item() / train_seconds,
            "epoch_seconds": time.perf_counter() - t0,
            "ternary_zero_frac": overall_zero_frac(model) if latent else 0.0,
            "quant_mix": mix,  # 0: this epoch ran at full precision, 1: fully ternary, between: ramping in
            "nonfinite_steps": int(sums[4].item()),  # left out of train_loss (fp16 overflows GradScaler skipped)
            "world_size": world,
            "torch_threads": torch.get_num_threads(),
            "shard_digest": shard_digest,
            # Wall-clock stamps of this process's run: start-up cost is what benchmarks/trial_overhead.py reads.
            "run_entered_unix": entered,
            "first_step_unix": first_step,
        }
        metrics.update(_layer_metrics(model))
        optim.epoch_end(schedule, metrics[cfg.metric.name])  # plateau: may lower the lr for the next epoch
        stop = stopper.update(metrics[cfg.metric.name], epoch)
        metrics.update(
            # run_complete: this is the run's last epoch (all epochs, or patience ran out). Not "done", which
            # Ray Tune sets itself on every trial's final result, early-stopped by ASHA or not.
            best_metric=stopper.best, best_epoch=stopper.best_epoch, early_stopped=stop,
            run_complete=stop or epoch == p.epochs,
        )
        ckpt_dir = None
        if rank == 0 and report is not None:
            ckpt_dir = tempfile.mkdtemp(prefix=f"ternsearch-ckpt-e{epoch}-")
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "precision": _precision_name(amp_dtype),  # what `auto` resolved to where this was written
                "early_stop": stopper.state(),
                "epoch": epoch,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            }
            save_checkpoint(ckpt_dir, state, {"epoch": epoch, "config": cfg.model_dump(mode="json"),
                                              "precision": state["precision"],
                                              "metrics": {k: v for k, v in metrics.items() if "/" not in k}})
        if report is not None:
            try:
                report(dict(metrics), ckpt_dir)
            finally:
                if ckpt_dir is not None:
                    shutil.rmtree(ckpt_dir, ignore_errors=True)
        if stop:
            break
    return metrics

