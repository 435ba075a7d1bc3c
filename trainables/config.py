"""Typed, strict configuration of one training run.

One frozen model per concern; unknown keys are rejected. ``ternsearch`` validates user files against these
models (adding file and line to every error); the training loop only ever sees a validated ``TrainConfig``,
never a raw dict, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainables.registry import known_models

__all__ = [
    "AUGMENTS",
    "INFERRED_MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "QUANTIZERS",
    "SCHEDULES",
    "DataConfig",
    "MetricConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainParams",
    "REPORTED_METRICS",
    "CIFAR10_TRAIN_IMAGES",
    "train_images",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "onecycle", "cosine_restarts", "cyclic", "plateau", "none")
AUGMENTS = ("none", "standard", "cutmix", "mixup", "autoaugment", "randaugment", "cutmix_mixup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
QUANTIZERS = ("twn", "ttq", "none")

# Metrics that every epoch report carries (see trainables.loop); a spec's metric must be one of these.
REPORTED_METRICS = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "ternary_zero_frac",
    "images_per_sec",
    "epoch_seconds",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Strict = _Strict  # the same rules for ternsearch.spec's sections and trainables.setup (unknown keys rejected, frozen)


# The direction a metric's name makes unambiguous; any other metric needs an explicit mode.
INFERRED_MODES = {"val_acc": "max", "train_acc": "max", "val_loss": "min", "train_loss": "min"}


class MetricConfig(_Strict):
    """The metric a run optimizes (early stopping, best checkpoint, the search). ``mode`` may be left out for
    accuracies (max) and losses (min): ``INFERRED_MODES``."""

    name: Literal[REPORTED_METRICS] = "val_acc"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"

    @model_validator(mode="before")
    @classmethod
    def _infer_mode(cls, data):
        if isinstance(data, dict) and "mode" not in data and data.get("name", "val_acc") in REPORTED_METRICS:
            name = data.get("name", "val_acc")
            if name not in INFERRED_MODES:
                raise ValueError(f"mode is required for {name} (add mode: max or mode: min; only accuracies "
                                 "(max) and losses (min) may leave it out)")
            data = dict(data, mode=INFERRED_MODES[name])
        return data


class DataConfig(_Strict):
    """Where the data comes from and how it is split.

    ``root`` names the folder holding ``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``; when it is not given
    the ``TERNSEARCH_DATA`` environment variable is used. ``subset`` keeps a seeded, stratified subset of the
    50,000 training images (before the validation split) for fast runs. ``val_fraction: 0`` holds nothing out
    (a final retraining on every training image): the per-epoch ``val_*`` metrics are then measured on the
    training images themselves, without augmentation, and each epoch reports ``eval_on: train``. Sweeps need a
    validation split and refuse 0 (``ternsearch.spec.load``).
    """

    dataset: Literal["cifar10"] = "cifar10"
    root: Optional[str] = None
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    subset: Optional[int] = Field(None, ge=20, le=50_000)
    split_seed: int = Field(0, ge=0, le=2**32 - 1)
    # Processes that build the batches of a per-image policy (autoaugment, randaugment) on CPU; 0: in the training
    # loop; auto: on CUDA only (trainables.augment_workers).
    augment_workers: Union[Literal["auto"], int] = Field("auto", union_mode="left_to_right")

    @field_validator("augment_workers")
    @classmethod
    def _workers_in_range(cls, v):
        if v != "auto" and not 0 <= v <= 32:
            raise ValueError("must be auto or a whole number from 0 to 32")
        return v


CIFAR10_TRAIN_IMAGES = 50_000


def train_images(data: DataConfig) -> int:
    """How many images a run trains on: the subset (or all 50,000) less the validation split, rounded as
    ``trainables.data.split_indices`` rounds it."""
    total = data.subset or CIFAR10_TRAIN_IMAGES
    return total - int(round(data.val_fraction * total))


class ModelConfig(_Strict):
    """Architecture and quantization."""

    arch: str = "resnet20"
    quantizer: Literal[QUANTIZERS] = "twn"  # type: ignore[valid-type]
    ttq_threshold: float = Field(0.05, gt=0.0, lt=1.0)  # TTQ: delta = ttq_threshold * max|W| (ignored otherwise)
    full_precision_layers: tuple[str, ...] = ("stem", "head")
    # Warm start: "checkpoint" copies a full-precision model's weights (init_from: a checkpoint or run directory,
    # or an MLflow model URI) into this model before training; "scratch" initialises at random.
    init: Literal["scratch", "checkpoint"] = "scratch"
    init_from: Optional[str] = None

    @model_validator(mode="after")
    def _init_source(self) -> "ModelConfig":
        if self.init == "checkpoint" and not self.init_from:
            raise ValueError("init: checkpoint needs init_from (a checkpoint or `ternsearch train` run directory, or "
                             "an MLflow model URI)")
        return self

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        names = known_models()  # the torch-free registry: spec loading never imports torch
        if value not in names:
            raise ValueError(f"unknown model {value!r} (choose from: {', '.join(names)})")
        return value


class TrainParams(_Strict):
    """Every knob of the training loop. Any of these may be searched instead of fixed."""

    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: float = Field(0.1, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0, lt=1.0)
    ternary_lr_ratio: float = Field(1.0, gt=0.0, le=1000.0)
    schedule: Literal[SCHEDULES] = "cosine"  # type: ignore[valid-type]
    warmup_epochs: int = Field(0, ge=0)
    # cosine: the LR it anneals to on the last step (the ternary group's: min_lr * ternary_lr_ratio); must be < lr
    min_lr: float = Field(0.0, ge=0.0, le=100.0)
    step_every: Optional[int] = Field(None, ge=1)
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    # step: the epochs after which the lr is multiplied by step_gamma (torch's MultiStepLR; e.g. [82, 123] for the
    # ResNet/TTQ CIFAR recipe); without them, every step_every epochs
    step_milestones: Optional[tuple[int, ...]] = None
    restart_epochs: int = Field(2, ge=1)  # cosine_restarts: the first cycle's length (T_0), in epochs
    restart_mult: int = Field(1, ge=1, le=10)  # cosine_restarts: each cycle this many times the last (T_mult)
    cycle_epochs: int = Field(2, ge=1)  # cyclic (triangular2): epochs of one up-and-down cycle
    cyclic_base_ratio: float = Field(0.1, gt=0.0, lt=1.0)  # cyclic: the low end, as a fraction of lr
    plateau_patience: int = Field(2, ge=0)  # plateau: epochs without improvement before the lr drops
    plateau_factor: float = Field(0.1, gt=0.0, lt=1.0)  # plateau: the lr is multiplied by this
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    grad_clip: Optional[float] = Field(None, gt=0.0)
    grad_accum: int = Field(1, ge=1, le=1024)
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False
    # CUDA: deterministic kernels (cuDNN, cuBLAS workspace, torch.use_deterministic_algorithms), so a resumed run
    # ends bit for bit where an uninterrupted one does, as on CPU; off: cudnn.benchmark picks the fastest.
    deterministic: bool = False
    augment: Literal[AUGMENTS] = "standard"  # type: ignore[valid-type]
    mixup_alpha: float = Field(0.2, gt=0.0, le=10.0)
    cutmix_alpha: float = Field(1.0, gt=0.0, le=10.0)
    randaugment_ops: int = Field(2, ge=1, le=10)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    early_stop_patience: Optional[int] = Field(None, ge=1)
    # Progressive quantization: epochs before quantize_from_epoch train at full precision; then the ternary
    # weights are blended in over ramp_epochs epochs (0: at once). The quant_mix metric says how each epoch ran.
    quantize_from_epoch: int = Field(1, ge=1)
    ramp_epochs: int = Field(0, ge=0)
    # Knowledge distillation from a full-precision teacher (same sources as model.init_from):
    # loss = (1 - distill_weight) * CE + distill_weight * T^2 * KL(teacher/T || student/T).
    distill_from: Optional[str] = None
    distill_weight: float = Field(0.0, ge=0.0, le=1.0)
    distill_temperature: float = Field(4.0, gt=0.0, le=100.0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    threads: Optional[int] = Field(None, ge=1, le=1024)
    eval_batch_size: int = Field(512, ge=1)

    @field_validator("step_milestones")
    @classmethod
    def _increasing(cls, value: Optional[tuple[int, ...]]) -> Optional[tuple[int, ...]]:
        if value is not None and (not value or any(m < 1 for m in value) or list(value) != sorted(set(value))):
            raise ValueError(f"step_milestones {list(value)} must be epochs >= 1 in increasing order, at least one")
        return value

    @model_validator(mode="after")
    def _check_epochs(self) -> "TrainParams":
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        if self.min_lr >= self.lr and self.min_lr > 0:
            raise ValueError(f"min_lr ({self.min_lr}) must be smaller than lr ({self.lr})")
        if self.distill_weight > 0 and not self.distill_from:
            raise ValueError("distill_weight > 0 needs distill_from (the full-precision teacher: a checkpoint or "
                             "`ternsearch train` run directory, or an MLflow model URI)")
        return self


class TrainConfig(_Strict):
    """A complete, resolved training run: what ``trainables.loop.run`` takes and what ``export`` writes."""

    name: str = "run"
    metric: MetricConfig = MetricConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainParams = TrainParams()

    @model_validator(mode="after")
    def _check_run(self) -> "TrainConfig":
        """Settings that are valid alone but make a run that cannot train, or that never trains what it says."""
        p, images = self.train, train_images(self.data)
        if p.batch_size > images:
            raise ValueError(f"batch_size {p.batch_size} is more than the {images:,} training images of the split "
                             f"(a batch must fit: use at most {images}, or a larger data.subset)")
        if self.model.quantizer != "none":
            if p.quantize_from_epoch > p.epochs:
                raise ValueError(f"quantize_from_epoch {p.quantize_from_epoch} is after the last epoch "
                                 f"({p.epochs}): the model would never be ternary (use at most epochs, or "
                                 "model.quantizer: none for a full-precision run)")
            end = p.quantize_from_epoch + max(p.ramp_epochs, 1) - 1
            if end > p.epochs:
                raise ValueError(f"ramp_epochs {p.ramp_epochs} from quantize_from_epoch {p.quantize_from_epoch} ends "
                                 f"at epoch {end}, after the last epoch ({p.epochs}): the final model would not be "
                                 f"fully ternary (use at most epochs - quantize_from_epoch + 1 = "
                                 f"{p.epochs - p.quantize_from_epoch + 1})")
        return self

    def with_overrides(self, flat: dict) -> "TrainConfig":
        """Return a copy with ``flat`` applied: keys are train keys (``lr``) or dotted (``model.quantizer``).

        The result is validated again, so a bad value is an error here and never reaches the loop.
        """
        return TrainConfig.from_base(self.model_dump(), flat)

    @staticmethod
    def from_base(base: dict, flat: dict) -> "TrainConfig":
        """``base`` (a dumped config) with ``flat`` applied as ``with_overrides`` does, validated once, after: a
        sweep's base config may break a rule across sections until its searched values replace some of it (the
        default batch_size 128 on a split of 50 images, with batch_size searched)."""
        raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        for key, value in flat.items():
            section, _, leaf = key.rpartition(".")
            section = section or "train"
            if section not in ("data", "model", "train") or leaf not in raw[section]:
                raise KeyError(key)
            raw[section][leaf] = value
        return TrainConfig.model_validate(raw)
