"""Checks of a whole run that no single section can make: the rules ``TrainConfig`` holds across sections (a
batch within the split, quantization within the epochs), and the layers ``full_precision_layers`` names."""

from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError

from ternsearch.spec.models import Param
from ternsearch.spec.yamlsrc import Located, explain_first, show
from trainables.config import DataConfig, ModelConfig, TrainConfig, TrainParams
from trainables.registry import BUILTIN_MODELS, BUILTIN_ROLES

__all__ = ["check_run", "check_full_precision"]

# The searched keys each cross-section rule reads besides its own (the first word of its message).
_RULE_READS = {"batch_size": ("data.subset", "data.val_fraction"), "quantize_from_epoch": ("epochs",),
               "ramp_epochs": ("epochs", "quantize_from_epoch")}


def _section(key: str) -> tuple:
    for section, cls in (("train", TrainParams), ("model", ModelConfig), ("data", DataConfig)):
        if key in cls.model_fields:
            return section, key
    return ()


def check_run(loc: Located, base: TrainConfig, params: Sequence[Param]) -> TrainConfig:
    """The config the search's value checks start from: ``base`` (the fixed values, defaults for the searched
    ones) when it is a valid run, else ``base`` with each searched parameter at its first value (low, or its
    first choice). A rule broken by fixed values alone is this file's error, at the fixed key.

    Raises:
        SpecError: the fixed values break a rule across sections (``TrainConfig``'s checks).
    """
    try:
        return TrainConfig.model_validate(base.model_dump())
    except ValidationError:
        pass
    first = {p.name: p.choices[0] if p.kind == "choice" else p.low for p in params if not p.when}
    reference = TrainConfig.model_construct(**{**dict(base), **_apply(base, first)})
    try:
        return TrainConfig.model_validate(reference.model_dump())
    except ValidationError as exc:
        message = explain_first(TrainConfig, exc)
        key = message.split(" ", 1)[0]
        searched = {p.name for p in params}
        if key in searched or not _section(key):
            return reference  # a searched value's problem: check_values names the value
        used = [k for k in _RULE_READS.get(key, ()) if k in first]
        if used:
            message += " (with " + ", ".join(f"{k} {show(first[k])} from search.{k}" for k in used) + ")"
        raise loc.error(_section(key), message) from None


def _apply(base: TrainConfig, flat: dict) -> dict:
    """The sections of ``base`` with ``flat``'s dotted keys set, unchecked."""
    sections = {"train": dict(base.train), "model": dict(base.model), "data": dict(base.data)}
    for key, value in flat.items():
        section, _, leaf = key.rpartition(".")
        sections[section or "train"][leaf] = value
    return {"train": TrainParams.model_construct(**sections["train"]),
            "model": ModelConfig.model_construct(**sections["model"]),
            "data": DataConfig.model_construct(**sections["data"])}


def check_full_precision(loc: Located, arch: str, names: Sequence[str]) -> None:
    """Every name in ``model.full_precision_layers`` must be a role or a module of ``arch``.

    Raises:
        SpecError: at the first name that is neither.
    """
    if arch in BUILTIN_MODELS and all(n in BUILTIN_ROLES for n in names):
        return
    # torch takes ~1.3 s to import: only for a name that is not a built-in role (validate stays quick otherwise)
    from trainables.models import unknown_layer

    found = unknown_layer(arch, names)
    if found is not None:
        raise loc.error(("model", "full_precision_layers", found[0]), found[1])
