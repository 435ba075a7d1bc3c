"""Every searchable key is searchable: for each key ``ternsearch.spec.params.searchable_keys()`` lists, a sweep
file searching only that key is loaded, its space compiled and sampled (Optuna, as a trial's searcher does), the
trial's config built by ``trainables.entry``, and the real loop run for 2 tiny epochs (tinynet, 20 real
CIFAR-10 images): the drawn value must show in what the loop built (optimizer groups, schedule, augmentation,
model, data) or in what it did (the LR and gradient norm of each optimizer step, the batch sizes and autocast
dtype of each forward, the reported metrics). No Ray: nothing here depends on it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ternsearch.spec.load import load_spec
from ternsearch.spec.params import searchable_keys
from ternsearch.spec.space import DefineByRun, make_sampler
from trainables import entry
from trainables.config import DataConfig, ModelConfig, TrainConfig, TrainParams
from trainables.device import set_determinism
from trainables.loop import run
from trainables.models import build_model
from trainables.optim import PlateauSchedule
from trainables.setup import TrialSetup
from trainables.training import prepare

LR = 0.05
SCHEDULE_CLASSES = {"step": "StepLR", "onecycle": "OneCycleLR", "cosine_restarts": "CosineAnnealingWarmRestarts",
                    "cyclic": "CyclicLR", "plateau": "PlateauSchedule", "none": "ConstantLR"}


class Seen:
    """What one run built and did."""

    def __init__(self, cfg: TrainConfig, value, teacher: str):
        self.cfg, self.value, self.teacher = cfg, value, teacher
        self.t = prepare(cfg, None, torch.device("cpu"), {"epoch": 1, "device": None}, "aot_eager")
        self.steps, self.forwards, self.metrics = [], [], []
        arch = type(self.t.model)

        def on_step(opt, args, kwargs):
            grads = [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.steps.append({"lr": {g["name"]: g["lr"] for g in opt.param_groups},
                               "norm": torch.stack(grads).norm().item()})

        def on_forward(module, args):
            if type(module) is arch:
                dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
                self.forwards.append((args[0].shape[0], module.training, dtype))

        hooks = [register_optimizer_step_pre_hook(on_step), register_module_forward_pre_hook(on_forward)]
        try:
            run(cfg, lambda m, _ckpt: self.metrics.append(m), compile_backend="aot_eager")
        finally:
            for h in hooks:
                h.remove()

    def rerun(self, **train) -> list[dict]:
        """The reported metrics of the same run with ``train`` changed."""
        out = []
        run(self.cfg.with_overrides(train), lambda m, _ckpt: out.append(m))
        return out

    def groups(self) -> dict[str, dict]:
        return {g["name"]: g for g in self.t.optimizer.param_groups}

    def train_batches(self) -> list[int]:
        return [b for b, training, _ in self.forwards if training]


def _lr_ratio(s: Seen, v) -> bool:
    return all(st["lr"]["ternary"] == pytest.approx(v * st["lr"]["weights"]) for st in s.steps)


def _differs(s: Seen, **train) -> bool:
    return s.metrics[-1]["train_loss"] != s.rerun(**train)[-1]["train_loss"]


# key -> (distribution, fixed train keys, fixed model keys, check(seen, value)). The distributions leave out each
# key's default, so a value that never arrives shows.
KEYS = {
    "epochs": ({"choice": [3]}, {}, {}, lambda s, v: [m["epoch"] for m in s.metrics] == [1, 2, 3]),
    "batch_size": ({"choice": [5]}, {}, {}, lambda s, v: set(s.train_batches()) == {5}),
    "optimizer": ({"choice": ["adam", "adamw"]}, {}, {}, lambda s, v: type(s.t.optimizer).__name__.lower() == v),
    "lr": ({"uniform": [0.02, 0.03]}, {"schedule": "none"}, {},
           lambda s, v: all(st["lr"]["weights"] == pytest.approx(v) for st in s.steps)),
    "momentum": ({"uniform": [0.5, 0.6]}, {}, {}, lambda s, v: s.groups()["weights"]["momentum"] == v),
    "nesterov": ({"choice": [True]}, {}, {}, lambda s, v: all(g["nesterov"] for g in s.t.optimizer.param_groups)),
    "weight_decay": ({"loguniform": [1e-3, 1e-2]}, {}, {},
                     lambda s, v: [s.groups()[n]["weight_decay"] for n in ("ternary", "weights", "no_decay")]
                     == [v, v, 0.0]),
    "ternary_lr_ratio": ({"uniform": [0.2, 0.5]}, {}, {}, _lr_ratio),
    "schedule": ({"choice": list(SCHEDULE_CLASSES)}, {}, {},
                 lambda s, v: type(s.t.schedule).__name__ == SCHEDULE_CLASSES[v]),
    "warmup_epochs": ({"choice": [1]}, {}, {},
                      lambda s, v: s.steps[0]["lr"]["weights"] == pytest.approx(LR / 2)),  # LinearLR from 1/2
    "min_lr": ({"uniform": [0.001, 0.002]}, {}, {}, lambda s, v: s.metrics[-1]["lr"] == pytest.approx(v)),
    "step_every": ({"choice": [2]}, {"schedule": "step"}, {},  # without it: every max(epochs // 3, 1) = 1 epoch
                   lambda s, v: [m["lr"] for m in s.metrics] == pytest.approx([LR, LR * 0.1])),
    "step_gamma": ({"uniform": [0.3, 0.5]}, {"schedule": "step", "step_every": 1}, {},
                   lambda s, v: s.metrics[0]["lr"] == pytest.approx(LR * v)),
    "restart_epochs": ({"choice": [1]}, {"schedule": "cosine_restarts"}, {},
                       lambda s, v: s.metrics[0]["lr"] == pytest.approx(LR)),  # restarted after epoch 1
    "restart_mult": ({"int": [2, 3]}, {"schedule": "cosine_restarts"}, {}, lambda s, v: s.t.schedule.T_mult == v),
    "cycle_epochs": ({"choice": [1]}, {"schedule": "cyclic"}, {},
                     lambda s, v: s.metrics[0]["lr"] == pytest.approx(LR * 0.1)),  # a whole cycle: back at the low end
    "cyclic_base_ratio": ({"uniform": [0.2, 0.3]}, {"schedule": "cyclic"}, {},
                          lambda s, v: s.steps[0]["lr"]["weights"] == pytest.approx(LR * v)),
    "plateau_patience": ({"choice": [0]}, {"schedule": "plateau"}, {},
                         lambda s, v: isinstance(s.t.schedule, PlateauSchedule) and s.t.schedule.plateau.patience == v),
    "plateau_factor": ({"uniform": [0.3, 0.5]}, {"schedule": "plateau"}, {},
                       lambda s, v: s.t.schedule.plateau.factor == v),
    "precision": ({"choice": ["bf16"]}, {}, {},
                  lambda s, v: {d for _, training, d in s.forwards if training} == {torch.bfloat16}),
    "grad_clip": ({"uniform": [0.01, 0.02]}, {}, {}, lambda s, v: max(st["norm"] for st in s.steps) <= v * 1.0001),
    "grad_accum": ({"choice": [2]}, {}, {}, lambda s, v: len(s.steps) == 2),  # 2 batches an epoch: 1 step each
    "channels_last": ({"choice": [False]}, {}, {},
                      lambda s, v: not s.t.channels_last
                      and s.t.model.stem.weight.is_contiguous(memory_format=torch.contiguous_format)),
    "compile": ({"choice": [True]}, {}, {}, lambda s, v: type(s.t.net).__name__ == "OptimizedModule"),
    "deterministic": ({"choice": [True]}, {}, {}, lambda s, v: torch.are_deterministic_algorithms_enabled()),
    "augment": ({"choice": ["none", "cutmix", "mixup", "autoaugment", "randaugment", "cutmix_mixup"]}, {}, {},
                lambda s, v: s.t.augment.policy == v),
    "mixup_alpha": ({"uniform": [0.5, 0.6]}, {"augment": "mixup"}, {}, lambda s, v: s.t.augment._batch_mix.alpha == v),
    "cutmix_alpha": ({"uniform": [0.5, 0.6]}, {"augment": "cutmix"}, {},
                     lambda s, v: s.t.augment._batch_mix.alpha == v),
    "randaugment_ops": ({"int": [3, 4]}, {"augment": "randaugment"}, {},
                        lambda s, v: s.t.augment.per_image_transform.num_ops == v),
    "randaugment_magnitude": ({"int": [3, 5]}, {"augment": "randaugment"}, {},
                              lambda s, v: s.t.augment.per_image_transform.magnitude == v),
    "label_smoothing": ({"uniform": [0.3, 0.4]}, {}, {}, lambda s, v: _differs(s, label_smoothing=0.0)),
    "early_stop_patience": ({"choice": [1]}, {}, {}, lambda s, v: s.t.stopper.patience == v),
    "quantize_from_epoch": ({"choice": [2]}, {}, {}, lambda s, v: [m["quant_mix"] for m in s.metrics] == [0.0, 1.0]),
    "ramp_epochs": ({"choice": [2]}, {}, {}, lambda s, v: 0.0 < s.metrics[0]["quant_mix"] < 1.0),
    "distill_weight": ({"uniform": [0.3, 0.5]}, {"distill_from": "TEACHER"}, {},
                       lambda s, v: s.t.teacher is not None and _differs(s, distill_weight=0.0)),
    "distill_temperature": ({"uniform": [1.5, 2.5]}, {"distill_from": "TEACHER", "distill_weight": 0.5}, {},
                            lambda s, v: _differs(s, distill_temperature=4.0)),
    "seed": ({"int": [5, 9]}, {}, {}, lambda s, v: torch.equal(s.t.model.stem.weight.contiguous(), _init(v))),
    "threads": ({"choice": [3]}, {}, {}, lambda s, v: s.metrics[-1]["torch_threads"] == v),
    "eval_batch_size": ({"choice": [3]}, {}, {},
                        lambda s, v: max(b for b, training, _ in s.forwards if not training) == v),
    "model.arch": ({"choice": ["airbench"]}, {}, {},
                   lambda s, v: type(s.t.model) is type(build_model(ModelConfig(arch=v)))),
    "model.quantizer": ({"choice": ["ttq", "none"]}, {}, {},
                        lambda s, v: f"quantizer={v}" in repr(s.t.model) if v == "ttq" else not s.t.latent),
    "model.ttq_threshold": ({"uniform": [0.1, 0.2]}, {}, {"quantizer": "ttq"},
                            lambda s, v: all(m.quantizer.threshold == v for m in s.t.model.modules()
                                             if hasattr(m, "quantizer_name"))),
    "model.init": ({"choice": ["checkpoint"]}, {}, {"init_from": "TEACHER"},
                   lambda s, v: not torch.equal(s.t.model.stem.weight.contiguous(), _init(s.cfg.train.seed))),
    "data.val_fraction": ({"uniform": [0.3, 0.4]}, {}, {},
                          lambda s, v: (len(s.t.val_x), len(s.t.train_x)) == (round(v * 40), 40 - round(v * 40))),
    "data.subset": ({"choice": [60]}, {}, {}, lambda s, v: s.t.train_x.shape[0] + s.t.val_x.shape[0] == v),
}


def _init(seed: int) -> torch.Tensor:
    """The stem weight a tinynet starts from with ``seed`` (as the loop builds it: seeded, then built)."""
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="tinynet")).stem.weight.detach().contiguous()


def test_every_searchable_key_has_a_check():
    assert sorted(KEYS) == sorted(searchable_keys())


@pytest.fixture(scope="module")
def teacher(data_root, tmp_path_factory) -> str:
    """A full-precision tinynet checkpoint: distillation's teacher and model.init's source."""
    dest = tmp_path_factory.mktemp("teacher") / "ckpt"
    cfg = TrainConfig.model_validate({"data": {"subset": 40, "val_fraction": 0.5},
                                      "model": {"arch": "tinynet", "quantizer": "none"},
                                      "train": {"epochs": 1, "batch_size": 10}})
    run(cfg, lambda m, ckpt: shutil.copytree(ckpt, dest))
    return str(dest)


@pytest.fixture
def restore_globals():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    set_determinism(False, torch.device("cpu"))


def _doc(tmp_path, key: str, teacher: str) -> dict:
    """The sweep file searching ``key``."""
    dist, train, model, _ = KEYS[key]
    fill = lambda section: {k: (teacher if v == "TEACHER" else v) for k, v in section.items()}  # noqa: E731
    doc = {"name": "keys", "metric": {"name": "val_acc", "mode": "max"},
           "data": {"subset": 40, "val_fraction": 0.5}, "model": {"arch": "tinynet", **fill(model)},
           "train": {"epochs": 2, "batch_size": 10, "lr": LR, **fill(train)}, "search": {key: dist},
           "searcher": {"algorithm": "random", "seed": 0, "num_samples": 1}, "scheduler": {"algorithm": "fifo"},
           "storage": {"path": str(tmp_path / "results")}}
    section, _, leaf = key.rpartition(".")
    doc[section or "train"].pop(leaf, None)
    return doc


@pytest.mark.parametrize("key", sorted(KEYS))
def test_searched_value_reaches_the_loop(tmp_path, data_root, teacher, restore_globals, key):
    import optuna  # the searcher's library (~1 s to import)

    doc = _doc(tmp_path, key, teacher)
    (tmp_path / "sweep.yaml").write_text(json.dumps(doc))  # JSON is YAML
    spec = load_spec(tmp_path / "sweep.yaml")
    study = optuna.create_study(sampler=make_sampler("random", spec.params, 0, 1))
    trial = study.ask()
    DefineByRun(spec.params)(trial)  # the define-by-run space a sweep's searcher samples
    assert set(trial.params) == {key}
    value = trial.params[key]
    # The trial's config, as a trial builds it: the sweep's base config (as JSON, in its TrialSetup) and the values.
    setup = TrialSetup(base=spec.base_config().model_dump(mode="json"), mode="function", workers=1, use_gpu=False,
                       cpus_per_worker=1, storage_path=str(tmp_path), trial_dir_root=str(tmp_path), max_failures=0,
                       keep_checkpoints=1, placement_strategy="PACK", objectives=(("val_acc", "max"),))
    cfg = entry._config(trial.params, setup)
    section, _, leaf = key.rpartition(".")
    assert getattr(getattr(cfg, section or "train"), leaf) == value
    kind = {"data": DataConfig, "model": ModelConfig, "": TrainParams}[section]
    unsearched = getattr(kind.model_validate(doc[section or "train"]), leaf)
    assert value != unsearched  # the value the file has without the search would prove nothing
    seen = Seen(cfg, value, teacher)
    assert KEYS[key][3](seen, value), f"{key}={value!r} did not reach the loop"
