"""A schedule resumed with more epochs than its checkpoint's run had (pure logic, per optimizer step): every
schedule continues without error from the LR it had reached; the length-independent ones equal a run given the
longer length from the start; a continued schedule that is interrupted again resumes exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from trainables import optim
from trainables.config import TrainParams
from trainables.continuation import restore_schedule

STEPS = 5  # optimizer steps an epoch
VALUES = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]  # val_acc by epoch, for plateau
EXTRA = {"step": dict(step_every=1, step_gamma=0.5), "cosine_restarts": dict(restart_epochs=1, restart_mult=2),
         "cyclic": dict(cycle_epochs=2), "plateau": dict(plateau_patience=1), "none": {}, "cosine": {},
         "onecycle": {}}
LENGTH_FREE = ["step", "cosine_restarts", "cyclic", "plateau", "none"]


def _opt() -> torch.optim.Optimizer:
    # Two groups with different LRs, like the ternary and full-precision groups of a real run.
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a], "lr": 0.02}, {"params": [b], "lr": 0.1}], lr=0.1, momentum=0.9)


def _params(name: str, epochs: int, warmup: int = 1) -> TrainParams:
    return TrainParams(epochs=epochs, lr=0.1, schedule=name, warmup_epochs=warmup, **EXTRA[name])


def _steps(opt, schedule, first_epoch: int, last_epoch: int) -> list[list[float]]:
    """Step epochs first..last; the LRs (per group) each optimizer step used."""
    out = []
    for epoch in range(first_epoch, last_epoch + 1):
        for _ in range(STEPS):
            out.append([g["lr"] for g in opt.param_groups])
            opt.step()
            schedule.step()
        optim.epoch_end(schedule, VALUES[epoch - 1])
    return out


def _resume(saved, params: TrainParams, trained_for: int, done: int):
    """Rebuild as the loop does: schedule first, then the optimizer's state (a copy: CyclicLR pops from it)."""
    saved = copy.deepcopy(saved)
    opt = _opt()
    schedule = restore_schedule(opt, params, STEPS, "max", saved[1], trained_for=trained_for, done_epochs=done)
    opt.load_state_dict(saved[0])
    return opt, schedule


def _first_run(name: str, epochs: int, stop_after: int, warmup: int = 1):
    opt = _opt()
    schedule = optim.build_schedule(opt, _params(name, epochs, warmup), STEPS, "max")
    lrs = _steps(opt, schedule, 1, stop_after)
    return lrs, (opt.state_dict(), schedule.state_dict()), [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("name", LENGTH_FREE)
def test_length_free_schedule_continued_equals_the_longer_run(name):
    opt = _opt()
    expected = _steps(opt, optim.build_schedule(opt, _params(name, 8), STEPS, "max"), 1, 8)
    head, saved, _ = _first_run(name, 4, 4)  # a finished 4-epoch run...
    opt, schedule = _resume(saved, _params(name, 8), trained_for=4, done=4)
    tail = _steps(opt, schedule, 5, 8)  # ...continued to 8
    assert head + tail == expected
    assert len({round(x[1], 12) for x in expected}) > 2  # it does move


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
@pytest.mark.parametrize("stop_after", [4, 3])  # finished, and interrupted mid-anneal then lengthened
def test_length_dependent_schedule_anneals_from_where_it_was(name, stop_after):
    head, saved, reached = _first_run(name, 4, stop_after)
    opt, schedule = _resume(saved, _params(name, 8), trained_for=4, done=stop_after)
    tail = _steps(opt, schedule, stop_after + 1, 8)
    assert tail[0] == pytest.approx(reached, rel=1e-12, abs=1e-15)  # no jump at the join
    for group in (0, 1):
        lrs = [x[group] for x in tail]
        assert all(b <= a + 1e-15 for a, b in zip(lrs, lrs[1:]))  # never back up
        assert lrs[-1] <= reached[group] * 0.02 + 1e-12  # and annealed to (near) zero by the last step
    if stop_after == 3:
        assert tail[0][1] > 1e-3  # an interrupted run continues at a real LR


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_join_inside_the_warmup_continues_the_warmup(name):
    """Interrupted inside its 2-epoch warm-up and lengthened: it warms up as a run given the new length would."""
    opt = _opt()
    expected = _steps(opt, optim.build_schedule(opt, _params(name, 8, warmup=2), STEPS, "max"), 1, 8)
    head, saved, _ = _first_run(name, 4, 1, warmup=2)
    opt, schedule = _resume(saved, _params(name, 8, warmup=2), trained_for=4, done=1)
    tail = _steps(opt, schedule, 2, 8)
    flat = [lr for x in head + tail for lr in x]
    assert flat == pytest.approx([lr for x in expected for lr in x], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_continued_then_interrupted_resumes_exactly(name):
    _, saved, _ = _first_run(name, 4, 4)
    opt, schedule = _resume(saved, _params(name, 8), trained_for=4, done=4)
    straight = _steps(opt, schedule, 5, 8)

    opt, schedule = _resume(saved, _params(name, 8), trained_for=4, done=4)
    part = _steps(opt, schedule, 5, 6)  # the continued run is interrupted after epoch 6...
    again = (opt.state_dict(), schedule.state_dict())
    opt, schedule = _resume(again, _params(name, 8), trained_for=8, done=6)  # ...its checkpoint says 8 epochs
    assert part + _steps(opt, schedule, 7, 8) == straight


def test_continued_twice_stays_continuous():
    _, saved, _ = _first_run("cosine", 4, 3)
    opt, schedule = _resume(saved, _params("cosine", 6), trained_for=4, done=3)
    _steps(opt, schedule, 4, 4)
    reached = [g["lr"] for g in opt.param_groups]
    opt, schedule = _resume((opt.state_dict(), schedule.state_dict()), _params("cosine", 9), trained_for=6, done=4)
    tail = _steps(opt, schedule, 5, 9)
    assert tail[0] == pytest.approx(reached, rel=1e-12) and tail[-1][1] < tail[0][1] * 0.02
