"""LR schedules: each steps as torch's own scheduler does (per optimizer step, the epoch's length given) and a
schedule restored from its state_dict mid-run continues exactly as an uninterrupted one (pure logic)."""

from __future__ import annotations

import pytest
import torch

from trainables import optim
from trainables.config import TrainParams

STEPS = 5  # optimizer steps an epoch


def _opt(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _lrs(opt, schedule, n: int, values=None) -> list[float]:
    out = []
    for i in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
        if values is not None and (i + 1) % STEPS == 0:
            optim.epoch_end(schedule, values[(i + 1) // STEPS - 1])
    return out


REFERENCES = {
    "cosine_restarts": (dict(restart_epochs=2, restart_mult=2),
                        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=2 * STEPS, T_mult=2)),
    "cyclic": (dict(cycle_epochs=2, cyclic_base_ratio=0.1),
               lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=STEPS,
                                                           mode="triangular2", cycle_momentum=False)),
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_schedule_steps_as_torch_does(name):
    extra, reference = REFERENCES[name]
    params = TrainParams(epochs=8, lr=0.1, schedule=name, **extra)
    ours_opt, ref_opt = _opt(), _opt()
    ours = optim.build_schedule(ours_opt, params, STEPS)
    ref = reference(ref_opt)
    a, b = _lrs(ours_opt, ours, 8 * STEPS), _lrs(ref_opt, ref, 8 * STEPS)
    assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
    assert len(set(round(x, 12) for x in a)) > 4  # it does move


def test_plateau_drops_as_reduce_lr_on_plateau_does():
    values = [0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3]  # val_acc by epoch: plateaus at epochs 3-5, 7-10
    params = TrainParams(epochs=10, lr=0.1, schedule="plateau", plateau_patience=2, plateau_factor=0.5)
    ours_opt, ref_opt = _opt(), _opt()
    ours = optim.build_schedule(ours_opt, params, STEPS, mode="max")
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="max", factor=0.5, patience=2)
    a = _lrs(ours_opt, ours, 10 * STEPS, values)
    b = []
    for epoch, v in enumerate(values):
        b += [ref_opt.param_groups[0]["lr"]] * STEPS
        ref.step(v)
    assert a == b and min(a) < 0.1


def test_plateau_after_warmup_waits_for_the_warmup():
    params = TrainParams(epochs=6, lr=0.1, schedule="plateau", warmup_epochs=2, plateau_patience=0)
    opt = _opt()
    schedule = optim.build_schedule(opt, params, STEPS, mode="max")
    lrs = _lrs(opt, schedule, 6 * STEPS, [0.1] * 6)  # no improvement ever
    assert lrs[0] < lrs[STEPS] < 0.1 and lrs[2 * STEPS] == pytest.approx(0.1)  # warm-up ramps to lr...
    assert lrs[3 * STEPS] == pytest.approx(0.01)  # ...then, with patience 0, every flat epoch divides it by 10


@pytest.mark.parametrize("name", ["cosine_restarts", "cyclic", "plateau"])
def test_schedule_resumes_exactly(name):
    params = TrainParams(epochs=8, lr=0.1, schedule=name, warmup_epochs=1, plateau_patience=1)
    values = [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3]
    straight_opt = _opt()
    straight = optim.build_schedule(straight_opt, params, STEPS)
    expected = _lrs(straight_opt, straight, 8 * STEPS, values)

    first_opt = _opt()
    first = optim.build_schedule(first_opt, params, STEPS)
    head = _lrs(first_opt, first, 3 * STEPS, values[:3])
    opt_state, sched_state = first_opt.state_dict(), first.state_dict()
    resumed_opt = _opt()
    resumed = optim.build_schedule(resumed_opt, params, STEPS)
    resumed_opt.load_state_dict(opt_state)
    resumed.load_state_dict(sched_state)
    tail = _lrs(resumed_opt, resumed, 5 * STEPS, values[3:])
    assert head + tail == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_step_milestones_drop_after_those_epochs():
    """step_milestones: the lr is multiplied by step_gamma after epochs 2 and 4 counted from the run's start,
    warm-up included (the ResNet/TTQ recipe's 82/123 scaled down); a bad list is refused."""
    for warmup in (0, 1):
        params = TrainParams(epochs=6, lr=0.1, schedule="step", step_milestones=(2, 4), step_gamma=0.1,
                             warmup_epochs=warmup)
        opt = _opt()
        lrs = _lrs(opt, optim.build_schedule(opt, params, STEPS), 6 * STEPS)
        by_epoch = [lrs[e * STEPS + STEPS - 1] for e in range(6)]  # each epoch's last step (warming up in the first)
        assert by_epoch[1:] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-9), warmup
        assert by_epoch[0] == pytest.approx(0.1) if not warmup else by_epoch[0] < 0.1
    for bad in ((), (3, 2), (0, 2), (2, 2)):
        with pytest.raises(ValueError, match="step_milestones"):
            TrainParams(epochs=6, schedule="step", step_milestones=bad)
