"""The model registry, torch-free: architecture names and the builders ``trainables.models`` registers for them.

Config validation (``ModelConfig.arch``) looks names up here without importing torch (1.3 s): a driver that only
plans and records never builds a model. The built-in names are declared up front, before their builders exist
(tests check they are what ``trainables.models`` registers); a model of your own is known once the module that
registers it has been imported.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["BUILTIN_MODELS", "BUILTIN_ROLES", "get_builder", "known_models", "model_names", "register"]

# Registered by trainables.models when it is imported.
BUILTIN_MODELS = ("airbench", "mobilenetv2", "resnet18", "resnet20", "tinynet")

# The layer roles every built-in model declares (its ``layer_roles``): full_precision_layers may name them, and a
# file that names only these is checked without building the model.
BUILTIN_ROLES = ("head", "stem")

# name -> fn(num_classes: int) -> nn.Module
_REGISTRY: dict[str, Callable[[int], Any]] = {}


def register(name: str) -> Callable:
    """Decorator adding a model factory ``fn(num_classes: int) -> nn.Module`` to the registry under ``name``."""

    def deco(fn: Callable[[int], Any]) -> Callable[[int], Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def model_names() -> tuple[str, ...]:
    """Return the registered model names, sorted."""
    return tuple(sorted(_REGISTRY))


def known_models() -> tuple[str, ...]:
    """The names a config may give, sorted: the built-in ones (registered or not yet) and every registered one."""
    return tuple(sorted(set(BUILTIN_MODELS) | set(_REGISTRY)))


def get_builder(name: str) -> Callable[[int], Any]:
    """The factory registered under ``name``; ValueError naming the registered ones when there is none."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r} (choose from: {', '.join(model_names())})")
    return _REGISTRY[name]
