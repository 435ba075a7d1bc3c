"""The training knobs do what the README says: the ternary group's LR ratio at every step of every schedule, no
weight decay on BatchNorm and biases, gradient accumulation equals one large batch, gradient clipping clips.
Real models (every registered one where it is cheap), real CIFAR-10 images, torch's own optimizers and hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from trainables import optim
from trainables.augment import normalize
from trainables.config import SCHEDULES, ModelConfig, TrainConfig, TrainParams
from trainables.epoch import _step, train_epoch
from trainables.models import build_model
from trainables.registry import known_models
from trainables.ternary import latent_weight_params
from trainables.training import prepare

STEPS = 3  # optimizer steps an epoch
EPOCHS = 6
EXTRA = {"step": dict(step_every=2, step_gamma=0.5), "cosine_restarts": dict(restart_epochs=2, restart_mult=2),
         "cyclic": dict(cycle_epochs=2), "plateau": dict(plateau_patience=0, plateau_factor=0.5)}
CASES = [(s, w, {}) for s in SCHEDULES for w in (0, 2)] + [("cosine", w, {"min_lr": 0.004}) for w in (0, 2)]


def _by_group(opt) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in opt.param_groups}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("schedule,warmup,extra", CASES, ids=[f"{s}-w{w}{'-min_lr' * bool(e)}" for s, w, e in CASES])
def test_ternary_group_lr_is_lr_times_ratio_at_every_step(schedule, warmup, extra, optimizer):
    """Through every step of the run (the plateau schedule is fed a flat metric, so it drops): ternary group =
    ratio x the others, the others all equal, and their peak is ``lr``."""
    params = TrainParams(epochs=EPOCHS, lr=0.2, ternary_lr_ratio=0.3, schedule=schedule, warmup_epochs=warmup,
                         optimizer=optimizer, **EXTRA.get(schedule, {}), **extra)
    model = build_model(ModelConfig(arch="tinynet"))
    opt = optim.build_optimizer(optim.param_groups(model, params, latent_weight_params(model)), params,
                                torch.device("cpu"))
    schedule_ = optim.build_schedule(opt, params, STEPS, "max")
    seen = []
    for step in range(EPOCHS * STEPS):
        lrs = _by_group(opt)
        assert set(lrs) == {"ternary", "weights", "no_decay"}
        assert lrs["ternary"] == pytest.approx(0.3 * lrs["weights"], rel=1e-12, abs=1e-15), step
        assert lrs["no_decay"] == pytest.approx(lrs["weights"], rel=1e-12, abs=1e-15), step
        seen.append(lrs["weights"])
        opt.step()
        schedule_.step()
        if (step + 1) % STEPS == 0:
            optim.epoch_end(schedule_, 0.5)
    # onecycle's peak falls between two steps (pct_start x total steps is not a whole number)
    peak_rel = 0.01 if schedule == "onecycle" else 1e-9
    assert max(seen) <= 0.2 * (1 + 1e-12) and max(seen) == pytest.approx(0.2, rel=peak_rel)
    assert len({round(v, 12) for v in seen}) > 2 or (schedule == "none" and not warmup)  # it does move


@pytest.mark.parametrize("warmup", [0, 2])
def test_cosine_ends_at_min_lr(warmup):
    """The LR after the run's last step is min_lr (the ternary group's: min_lr x ratio); it never goes below."""
    params = TrainParams(epochs=EPOCHS, lr=0.2, min_lr=0.004, ternary_lr_ratio=0.5, warmup_epochs=warmup)
    model = build_model(ModelConfig(arch="tinynet"))
    opt = optim.build_optimizer(optim.param_groups(model, params, latent_weight_params(model)), params,
                                torch.device("cpu"))
    schedule = optim.build_schedule(opt, params, STEPS)
    seen = []
    for _ in range(EPOCHS * STEPS):
        opt.step()
        schedule.step()
        seen.append(_by_group(opt))
    assert seen[-1]["weights"] == pytest.approx(0.004, rel=1e-9)
    assert seen[-1]["ternary"] == pytest.approx(0.002, rel=1e-9)
    assert min(s["weights"] for s in seen) == pytest.approx(0.004, rel=1e-9)
    assert seen[-2]["weights"] > 0.004  # it anneals onto the floor, not along it


def _bn_and_bias(model: nn.Module) -> tuple[set[int], set[int]]:
    """ids of (BatchNorm parameters and biases, conv and linear weights)."""
    no_decay, decay = set(), set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias":
                no_decay.add(id(p))
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight":
                decay.add(id(p))
    return no_decay, decay


@pytest.mark.parametrize("arch", known_models())
def test_no_weight_decay_on_batchnorm_and_biases(arch):
    """Every registered model: BatchNorm parameters and biases are in a group with weight decay 0, conv and
    linear weights in one with the configured decay; and an optimizer step on zero gradients (only the decay
    moves anything) leaves the former as they were and shrinks the latter by lr x weight_decay."""
    params = TrainParams(lr=0.1, weight_decay=0.01, momentum=0.0)
    model = build_model(ModelConfig(arch=arch, full_precision_layers=("stem",)))
    groups = optim.param_groups(model, params, latent_weight_params(model))
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    no_decay, decay = _bn_and_bias(model)
    assert no_decay and decay
    assert all(decay_of[i] == 0.0 for i in no_decay)
    assert all(decay_of[i] == 0.01 for i in decay)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # BatchNorm biases start at 0, where decay would not show
            p.grad = torch.zeros_like(p)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    optim.build_optimizer(groups, params, torch.device("cpu")).step()
    for p in model.parameters():
        if id(p) in no_decay:
            assert torch.equal(p, before[id(p)])
        elif id(p) in decay:
            assert torch.allclose(p, before[id(p)] * (1 - 0.1 * 0.01), rtol=1e-6)


def _training(data_root, **train):
    cfg = TrainConfig.model_validate({"data": {"subset": 200, "val_fraction": 0.2}, "model": {"arch": "tinynet"},
                                      "train": {"epochs": 1, "schedule": "none", "threads": 2, "seed": 5,
                                                "augment": "none", **train}})
    return prepare(cfg, None, torch.device("cpu"), {"epoch": 1, "device": None}, "inductor")


def test_grad_accum_k_batches_of_b_is_one_batch_of_k_times_b(data_root):
    """The loop's own step with BatchNorm in eval mode (its batch statistics would differ by batch size):
    accumulating 4 micro-batches of 8 steps with the gradient of one batch of 32 and updates the weights as it
    does (SGD with momentum and weight decay; Adam's first step, lr x sign(g), would magnify float noise)."""
    big = _training(data_root, batch_size=32, grad_accum=1, weight_decay=5e-4)
    small = _training(data_root, batch_size=8, grad_accum=4, weight_decay=5e-4)
    x, y = normalize(big.train_x[:32], big.channels_last), big.train_y[:32]
    start = [p.detach().clone() for p in big.model.parameters()]
    for t in (big, small):
        t.net.eval()
    with _GradNorms() as seen_big:
        _step(big, x, y, 0)
    with _GradNorms() as seen_small:
        for b in range(4):
            _step(small, x[8 * b: 8 * (b + 1)], y[8 * b: 8 * (b + 1)], b)
    assert len(seen_big.grads) == len(seen_small.grads) == 1  # one optimizer step each
    for a, b in zip(seen_big.grads[0], seen_small.grads[0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    moved = 0.0
    for p0, a, b in zip(start, big.model.parameters(), small.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
        moved = max(moved, (a - p0).abs().max().item())
    assert moved > 1e-4  # the step did update the weights
    one = _training(data_root, batch_size=8, grad_accum=1, weight_decay=5e-4)
    one.net.eval()
    _step(one, x[:8], y[:8], 0)  # a single micro-batch's update is measurably another update: the check can fail
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
                   for a, b in zip(big.model.parameters(), one.model.parameters()))


class _GradNorms:
    """A global optimizer step pre-hook: the gradients, and their total norm, each optimizer step is taken with."""

    def __enter__(self):
        self.norms, self.grads = [], []

        def hook(opt, args, kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            self.norms.append(total.item())
            self.grads.append([g.detach().clone() for g in grads])

        self.handle = register_optimizer_step_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_grad_clip_bounds_the_norm_of_every_step(data_root):
    """With grad_clip 0.05, every step of an epoch is taken with a total gradient norm <= 0.05; without it the
    same steps' norms are larger, so the bound is the clip's doing. (fp16 with its GradScaler, which unscales
    before clipping, runs in tests/test_loop.py: on CPU it is ~10x slower.)"""
    norms = {}
    for clip in (None, 0.05):
        t = _training(data_root, batch_size=40, grad_clip=clip, augment="standard")
        with _GradNorms() as seen:
            train_epoch(t, 1, None)
        norms[clip] = seen.norms
    assert len(norms[0.05]) == len(norms[None]) == 4
    assert max(norms[0.05]) <= 0.05 * (1 + 1e-4)
    assert min(norms[None]) > 0.05 and all(math.isfinite(n) for n in norms[None])


@pytest.mark.parametrize("epochs,steps,warmup", [(2, 2, 0), (2, 1, 1), (1, 1, 0), (4, 1, 1)])
def test_onecycle_on_a_handful_of_steps(epochs, steps, warmup):
    """25% of 4 steps, or a warm-up of one step, put OneCycleLR's peak at step 0, where it divided by zero: the
    warm-up takes 2 steps (or all but the last) and every step's LR is finite and at most lr."""
    params = TrainParams(epochs=epochs, lr=0.2, schedule="onecycle", warmup_epochs=warmup)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.2, momentum=0.9)
    schedule = optim.build_schedule(opt, params, steps)
    seen = []
    for _ in range(epochs * steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert all(math.isfinite(v) and 0 < v <= 0.2 * (1 + 1e-12) for v in seen)
