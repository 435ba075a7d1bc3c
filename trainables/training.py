"""What a run trains with, built once before its first epoch (``prepare``): the data on the device, the model,
its optimizer, LR schedule, grad scaler and early stopping (restored when resuming), the network the steps run
through (DDP, ``torch.compile``), the augmentation and the distillation teacher.

The order of the build is the loop's: the model's initialisation draws from the global RNG right after it is
seeded with ``train.seed``, so every rank, and a resumed run, builds the same model.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from trainables import optim, recipes
from trainables.augment import BatchAugment
from trainables.augment_workers import resolve_workers
from trainables.checkpoint import load_checkpoint
from trainables.config import TrainConfig
from trainables.continuation import restore_schedule
from trainables.data import make_split
from trainables.device import pick_device, resolve_precision, set_determinism
from trainables.distributed import rank_world
from trainables.errors import BatchSizeError
from trainables.models import build_model
from trainables.restore import restore_train_state
from trainables.ternary import latent_weight_params

__all__ = ["EarlyStop", "Training", "prepare"]


class EarlyStop:
    """The run's best metric so far, and whether ``patience`` epochs without a better one have passed."""

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


@dataclass
class Training:
    """One run's objects, as ``prepare`` built them."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    local_bs: int  # images per rank and step
    batches: int  # batches per rank and epoch
    eval_on: str  # "val", or "train" when data.val_fraction is 0
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    model: nn.Module  # the model itself: what a checkpoint holds
    net: nn.Module  # what the steps run: the model, in DDP and/or compiled
    latent: list  # the ternary layers' latent weights (empty: a full-precision model)
    channels_last: bool
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    stopper: EarlyStop
    amp_dtype: Optional[torch.dtype]
    amp: Any  # the autocast context of the steps (nullcontext for fp32)
    augment: BatchAugment
    teacher: Optional[nn.Module]
    start_epoch: int
    first_step: Optional[float] = None  # wall clock of this process's first training step
    augment_workers: int = 0  # processes building the per-image policy's batches (trainables.augment_workers)
    cpu_images: Optional[torch.Tensor] = None  # the training images on CPU, for those workers


def prepare(cfg: TrainConfig, resume_from: Optional[str | Path], device: Optional[torch.device], where: dict,
            compile_backend: Any) -> Training:
    """Build what ``cfg`` trains with on ``device`` (default ``pick_device()``), from ``resume_from`` when given.
    ``where`` learns the device, then the first epoch (for an out-of-memory message)."""
    p = cfg.train
    device = where["device"] = device or pick_device()
    set_determinism(p.deterministic, device)
    if p.threads:
        torch.set_num_threads(p.threads)
    rank, world = rank_world()
    if p.batch_size % world:
        raise BatchSizeError(f"batch_size {p.batch_size} is not divisible by {world} workers")
    local_bs = p.batch_size // world
    eval_on, train_x, train_y, val_x, val_y, batches = _data(cfg, device, world, local_bs)
    model, channels_last, latent = _model(cfg, device)
    optimizer, schedule, scaler, stopper, amp_dtype, start_epoch = _optimization(cfg, model, latent, device,
                                                                                 batches, resume_from)
    where["epoch"] = start_epoch
    net = _network(model, cfg, device, world, compile_backend)
    augment = BatchAugment(p, channels_last=channels_last)
    teacher = recipes.load_teacher(p.distill_from, device, channels_last) if p.distill_weight > 0 else None
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    workers = resolve_workers(cfg.data.augment_workers, p.augment, device)
    return Training(cfg, device, rank, world, local_bs, batches, eval_on, train_x, train_y, val_x, val_y, model,
                    net, latent, channels_last, optimizer, schedule, scaler, stopper, amp_dtype, amp, augment,
                    teacher, start_epoch, augment_workers=workers, cpu_images=train_x.cpu() if workers else None)


def _data(cfg: TrainConfig, device: torch.device, world: int, local_bs: int) -> tuple:
    """``(eval_on, train_x, train_y, val_x, val_y, batches per rank)``, the images on ``device``."""
    split = make_split(cfg.data)
    # The dataset is small: keep it uint8 on the training device; batches are gathered by index there.
    train_x, train_y = split.train_x.to(device), split.train_y.to(device)
    val_x, val_y = (train_x, train_y) if split.eval_on == "train" else (split.val_x.to(device), split.val_y.to(device))
    shard = train_x.shape[0] // world
    batches = shard // local_bs
    if batches < 1:
        raise BatchSizeError(f"{shard} training images per worker are fewer than one batch of {local_bs}")
    return split.eval_on, train_x, train_y, val_x, val_y, batches


def _model(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, bool, list]:
    """``(model, channels_last, latent weights)``: built, warm-started, on ``device``."""
    p = cfg.train
    torch.manual_seed(p.seed)  # model init is identical on every rank (DDP also broadcasts it)
    model = build_model(cfg.model)
    if cfg.model.init == "checkpoint":
        recipes.warm_start(model, cfg.model.init_from)
    model = model.to(device)
    # channels_last measured 19-38% faster for these convnets on CPU, and it is what tensor cores want.
    channels_last = bool(p.channels_last) if p.channels_last != "auto" else True
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last, latent_weight_params(model)


def _optimization(cfg: TrainConfig, model: nn.Module, latent: list, device: torch.device, batches: int,
                  resume_from: Optional[str | Path]) -> tuple:
    """``(optimizer, schedule, scaler, stopper, autocast dtype, first epoch)``, restored from ``resume_from``."""
    p = cfg.train
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
    stopper = EarlyStop(cfg.metric.mode, p.early_stop_patience)
    start_epoch = 1
    if state is not None:
        start_epoch = restore_train_state(state, model, optimizer, scaler, stopper)
    return optimizer, schedule, scaler, stopper, amp_dtype, start_epoch


def _network(model: nn.Module, cfg: TrainConfig, device: torch.device, world: int, compile_backend: Any) -> nn.Module:
    """What the steps run: ``model`` in DDP over ``world`` ranks, compiled when ``train.compile`` is on."""
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.train.compile:
        # A fresh Dynamo cache per run: a reused trial actor would otherwise keep the last trial's compiled
        # graphs (guarded on that model object) and count its recompiles against this run's limit.
        torch._dynamo.reset()
        net = torch.compile(net, backend=compile_backend)
    return net
