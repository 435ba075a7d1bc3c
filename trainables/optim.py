"""Optimizers with ternary-aware parameter groups, and learning-rate schedules (stepped once per optimizer step)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from trainables.config import TrainParams

__all__ = ["CosineToFloor", "build_optimizer", "build_schedule", "onecycle_pct", "param_groups"]


def param_groups(model: nn.Module, params: TrainParams, latent: list[nn.Parameter]) -> list[dict]:
    """Split parameters into three groups.

    - latent ternary weights: lr * ternary_lr_ratio, with weight decay (decay pulls latent weights toward the
      threshold, which is how weight decay shapes ternary sparsity);
    - other weights (full-precision convs and linears): lr, with weight decay;
    - BatchNorm parameters and biases (ndim <= 1): lr, no weight decay.
    Empty groups are dropped (a model with quantizer ``none`` has no latent group).
    """
    latent_ids = {id(p) for p in latent}
    groups = {"ternary": [], "weights": [], "no_decay": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in latent_ids:
            groups["ternary"].append(p)
        elif p.ndim <= 1:
            groups["no_decay"].append(p)
        else:
            groups["weights"].append(p)
    spec = {
        "ternary": (params.lr * params.ternary_lr_ratio, params.weight_decay),
        "weights": (params.lr, params.weight_decay),
        "no_decay": (params.lr, 0.0),
    }
    return [
        {"params": ps, "lr": spec[name][0], "weight_decay": spec[name][1], "name": name}
        for name, ps in groups.items()
        if ps
    ]


def build_optimizer(groups: list[dict], params: TrainParams, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW; fused kernels on CUDA, foreach on CPU."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=params.lr, momentum=params.momentum, nesterov=params.nesterov and params.momentum > 0, **fast
        )
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr, **fast)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=params.lr, **fast)
    raise ValueError(f"unknown optimizer {params.optimizer!r}")


def build_schedule(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int, mode: str = "max",
    *, onecycle_warm_steps: Optional[float] = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule over ``epochs * steps_per_epoch`` optimizer steps, with optional linear warm-up.

    All schedules are torch's own; warm-up is a LinearLR chained by SequentialLR (one-cycle has a warm-up
    phase of its own, so there ``warmup_epochs`` sets its ``pct_start`` instead). ``plateau`` watches the run's
    metric (``mode``: max or min) and is fed once an epoch (see ``epoch_end``). ``onecycle_warm_steps``
    overrides one-cycle's warm-up length (a run continued to more epochs keeps its first warm-up, see
    ``trainables.continuation``).
    """
    total = params.epochs * steps_per_epoch
    warm = params.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler
    if params.schedule == "onecycle":
        return sched.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=onecycle_pct(warm if onecycle_warm_steps is None else onecycle_warm_steps, total),
            cycle_momentum=params.optimizer == "sgd" and params.momentum > 0,
        )
    main_steps = max(total - warm, 1)
    if params.schedule == "cosine" and params.min_lr > 0:
        # One factor for every group (LambdaLR), so the ternary group anneals to min_lr * ternary_lr_ratio and
        # keeps its ratio at every step; CosineAnnealingLR's eta_min is one LR for all groups.
        main = sched.LambdaLR(optimizer, CosineToFloor(main_steps, params.min_lr / params.lr))
    elif params.schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif params.schedule == "step" and params.step_milestones:  # epochs counted from the run's start
        main = sched.MultiStepLR(optimizer, milestones=[max(m * steps_per_epoch - warm, 1)
                                                        for m in params.step_milestones], gamma=params.step_gamma)
    elif params.schedule == "step":
        every = params.step_every or max(params.epochs // 3, 1)
        main = sched.StepLR(optimizer, step_size=every * steps_per_epoch, gamma=params.step_gamma)
    elif params.schedule == "cosine_restarts":
        main = sched.CosineAnnealingWarmRestarts(optimizer, T_0=params.restart_epochs * steps_per_epoch,
                                                 T_mult=params.restart_mult)
    elif params.schedule == "cyclic":
        peaks = [g["lr"] for g in optimizer.param_groups]
        main = sched.CyclicLR(optimizer, base_lr=[p * params.cyclic_base_ratio for p in peaks], max_lr=peaks,
                              step_size_up=max(params.cycle_epochs * steps_per_epoch // 2, 1), mode="triangular2",
                              cycle_momentum=False)
    elif params.schedule == "plateau":
        return PlateauSchedule(optimizer, params, warm, mode)
    elif params.schedule == "none":
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"unknown schedule {params.schedule!r}")
    if not warm:
        return main
    # Start warm-up at 1/warm of the target so the first step is small but not zero.
    warmup = sched.LinearLR(optimizer, start_factor=1.0 / max(warm, 2), end_factor=1.0, total_iters=warm)
    return sched.SequentialLR(optimizer, [warmup, main], milestones=[warm])


class CosineToFloor:
    """LambdaLR's factor of a cosine anneal from 1 to ``floor`` over ``steps`` steps (then ``floor``).

    A class, not a closure: LambdaLR's state_dict keeps a callable object's attributes, so a checkpoint holds it.
    """

    def __init__(self, steps: int, floor: float) -> None:
        self.steps, self.floor = int(steps), float(floor)

    def __call__(self, step: int) -> float:
        done = min(step, self.steps) / self.steps
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * done))


def onecycle_pct(warm: float, total: int) -> float:
    """One-cycle's ``pct_start`` for ``warm`` warm-up steps of ``total`` (25% without a warm-up).

    OneCycleLR peaks at step ``pct_start * total - 1``; at 0 (a warm-up of one step, or 25% of 4 steps) its first
    phase has no length and it divides by zero, so such a warm-up takes 2 steps: the peak at step 1.
    """
    pct = warm / total if warm else 0.25
    if pct * total <= 1:
        pct = 2.0 / total
    return min(pct, 0.99)


class PlateauSchedule:
    """ReduceLROnPlateau on the validation metric, after an optional linear warm-up by optimizer step.

    ``step()`` is called after every optimizer step (it only advances the warm-up) and ``epoch_end(value)`` after
    every validation (it feeds the plateau detector once the warm-up is over); the state of both goes into the
    checkpoint, so a resumed run drops its lr exactly when an uninterrupted one would.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: TrainParams, warm_steps: int, mode: str) -> None:
        sched = torch.optim.lr_scheduler
        self.warm_steps, self.steps = warm_steps, 0
        self.warmup = (sched.LinearLR(optimizer, start_factor=1.0 / max(warm_steps, 2), end_factor=1.0,
                                      total_iters=warm_steps) if warm_steps else None)
        self.plateau = sched.ReduceLROnPlateau(optimizer, mode=mode, factor=params.plateau_factor,
                                               patience=params.plateau_patience)

    def step(self) -> None:
        self.steps += 1
        if self.warmup is not None and self.steps <= self.warm_steps:
            self.warmup.step()

    def epoch_end(self, value: float) -> None:
        if self.steps >= self.warm_steps:
            self.plateau.step(value)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "plateau": self.plateau.state_dict(),
                "warmup": self.warmup.state_dict() if self.warmup is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.plateau.load_state_dict(state["plateau"])
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])


def epoch_end(schedule, value: float) -> None:
    """Tell a schedule that watches the validation metric (plateau) this epoch's value; others ignore it."""
    if isinstance(schedule, PlateauSchedule):
        schedule.epoch_end(value)


def steps_per_epoch(batches: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches."""
    return max(math.ceil(batches / grad_accum), 1)
