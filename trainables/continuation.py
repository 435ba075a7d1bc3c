"""A resumed run's LR schedule, also when its length changed (``ternsearch train --resume DIR --epochs N``).

Same epochs as the checkpoint's config (an interrupted run, a restored Tune trial): the schedule is built and its
state loaded, so the run ends exactly where an uninterrupted one would.

Different epochs (continuing a finished run, or changing an interrupted run's length), by schedule:

- step, cosine_restarts, cyclic, plateau, none: their shape does not depend on the run's length, so the state
  loads into the schedule built for the new length and the run equals one given that length from the start.
  ``step`` without ``step_every`` keeps the first run's interval (``epochs // 3`` of the first length; StepLR's
  state carries it): a new interval would move the drops already taken and raise the LR again.
- cosine and onecycle restored inside their warm-up: the schedule for the new length with the same warm-up steps
  (cosine: ``warmup_epochs``; onecycle: the first run's warm-up, ``warmup_epochs`` or 25% of its first length),
  moved to the restored step. With ``warmup_epochs`` set this equals a run given the new length from the start.
- cosine and onecycle restored after their warm-up (every finished run): a cosine anneal from the LR at the
  restored step to zero over the remaining steps (``ContinuedSchedule``). A finished cosine or onecycle run has
  annealed to (nearly) zero, so its extra epochs train at a (nearly) zero LR: the curve stays continuous; for
  more training at a real LR, retrain with the longer ``epochs``. Onecycle's momentum stays where the cycle left it.

A continued run's checkpoints record the new epochs and the ``ContinuedSchedule`` state (where it joined and the
tail's own state), so one that is interrupted and resumed again continues exactly.
"""

from __future__ import annotations

import warnings

import torch

from trainables.config import TrainParams
from trainables.optim import build_schedule, onecycle_pct

__all__ = ["ContinuedSchedule", "LENGTH_DEPENDENT", "restore_schedule"]

LENGTH_DEPENDENT = ("cosine", "onecycle")  # the schedules whose LR at a step depends on the run's total length


class ContinuedSchedule:
    """From step ``at``, anneal the optimizer's current LRs to zero by step ``total`` (cosine).

    torch's CosineAnnealingLR steps recursively from each group's current LR, so a fresh one over the remaining
    steps starts exactly at the LR the run had reached (no jump) and ends at zero on the run's last step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, at: int, total: int) -> None:
        self.at, self.total = int(at), int(total)
        self.tail = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.total - self.at, 1))

    def step(self) -> None:
        self.tail.step()

    def state_dict(self) -> dict:
        return {"continued_at": self.at, "total": self.total, "tail": self.tail.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if (int(state["continued_at"]), int(state["total"])) != (self.at, self.total):
            raise ValueError(f"continued schedule state joins at step {state['continued_at']} of {state['total']}, "
                             f"not {self.at} of {self.total}")
        self.tail.load_state_dict(state["tail"])


def _is_continued(saved: dict) -> bool:
    return "continued_at" in saved


def _onecycle_warm_steps(params: TrainParams, epochs: int, steps_per_epoch: int) -> float:
    """Optimizer steps of one-cycle's warm-up phase in a run of ``epochs`` (as ``build_schedule`` sets it)."""
    total = epochs * steps_per_epoch
    return onecycle_pct(params.warmup_epochs * steps_per_epoch, total) * total


def restore_schedule(
    optimizer: torch.optim.Optimizer,
    params: TrainParams,
    steps_per_epoch: int,
    mode: str,
    saved: dict,
    *,
    trained_for: int,
    done_epochs: int,
):
    """The schedule a resumed run continues with, at the restored position.

    Call it on the freshly built optimizer, before loading the optimizer's state (as ``build_schedule``).

    Args:
        saved: the checkpoint's schedule state.
        trained_for: ``train.epochs`` of the run that wrote the checkpoint (its manifest's config).
        done_epochs: the epochs the checkpoint has trained.
    """
    at, total = done_epochs * steps_per_epoch, params.epochs * steps_per_epoch
    if trained_for == params.epochs or params.schedule not in LENGTH_DEPENDENT:
        schedule = (ContinuedSchedule(optimizer, saved["continued_at"], total) if _is_continued(saved)
                    else build_schedule(optimizer, params, steps_per_epoch, mode))
        schedule.load_state_dict(saved)
        return schedule
    if not _is_continued(saved):
        warm = (params.warmup_epochs * steps_per_epoch if params.schedule == "cosine"
                else _onecycle_warm_steps(params, trained_for, steps_per_epoch))
        if at < warm:
            return _moved_to(optimizer, params, steps_per_epoch, mode, at, warm)
    build_schedule(optimizer, params, steps_per_epoch, mode)  # sets what the optimizer's state then overwrites
    return ContinuedSchedule(optimizer, at, total)


def _moved_to(optimizer, params: TrainParams, steps_per_epoch: int, mode: str, at: int, warm: float):
    """The new length's schedule with ``warm`` warm-up steps, stepped ``at`` times (all inside the warm-up, the
    part that does not depend on the length). The optimizer's own state, loaded next, restores its LRs."""
    schedule = build_schedule(optimizer, params, steps_per_epoch, mode, onecycle_warm_steps=warm)
    with warnings.catch_warnings():  # stepping a schedule without optimizer steps warns; here it is the point
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(at):
            schedule.step()
    return schedule
