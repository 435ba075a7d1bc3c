"""Every registered model: builds, trains a step in fp32 and ternary, keeps stem/head full precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainables.config import ModelConfig
from trainables.models import build_model, model_names
from trainables.ternary import latent_weight_params, ternary_modules

from test_ternary import assert_twn

# Parameter counts the docs promise (CIFAR variants, 10 classes): within 10%.
EXPECTED_PARAMS = {
    "airbench": 2.0e6,
    "mobilenetv2": 2.24e6,
    "resnet18": 11.17e6,
    "resnet20": 0.27e6,
    "tinynet": 0.29e6,
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_model_names() -> None:
    assert {"airbench", "mobilenetv2", "resnet18", "resnet20", "tinynet"} <= set(model_names())
    assert list(model_names()) == sorted(model_names())
    from trainables.registry import BUILTIN_MODELS

    assert set(BUILTIN_MODELS) == set(model_names())  # the torch-free list spec validation uses


@pytest.mark.parametrize("name", model_names())
def test_builtin_roles_are_what_spec_checks_assume(name: str) -> None:
    """A file naming only BUILTIN_ROLES is checked without building the model: every built-in model has them."""
    from trainables.models import unknown_layer
    from trainables.registry import BUILTIN_ROLES, get_builder

    assert set(get_builder(name)(10).layer_roles) == set(BUILTIN_ROLES)
    assert unknown_layer(name, BUILTIN_ROLES) is None
    assert unknown_layer(name, ["stem", "haed"])[0] == 1


def test_unknown_model_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'x' \(choose from: airbench, mobilenetv2, resnet18"):
        build_model(ModelConfig(arch="x"))


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("quantizer", ["twn", "none"])
def test_forward_backward(name: str, quantizer: str) -> None:
    # Default memory format: channels_last works too (benchmarks/step_throughput.py) but its first CPU call
    # primes oneDNN kernels for seconds per model (7 s for mobilenetv2's depthwise convs).
    model = build_model(ModelConfig(arch=name, quantizer=quantizer))
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    ternary = ternary_modules(model)
    if quantizer == "none":
        assert ternary == []
        return
    assert ternary
    for lname, layer in ternary:  # the STE delivers a gradient to every latent weight
        assert layer.weight.grad.abs().sum() > 0, lname
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", model_names())
def test_ternary_values_and_roles(name: str) -> None:
    model = build_model(ModelConfig(arch=name))
    roles = type(model).layer_roles
    assert set(roles) >= {"stem", "head"}
    modules = dict(model.named_modules())
    assert type(modules[roles["stem"]]) is nn.Conv2d  # full precision by default
    assert type(modules[roles["head"]]) is nn.Linear
    names = {n for n, _ in ternary_modules(model)}
    convs_and_linears = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert names == convs_and_linears - {roles["stem"], roles["head"]}  # everything else, depthwise included
    for _, layer in ternary_modules(model):
        assert_twn(layer)
    assert len(latent_weight_params(model)) == len(names)


@pytest.mark.parametrize("name", model_names())
def test_param_count(name: str) -> None:
    model = build_model(ModelConfig(arch=name, quantizer="none"))
    n = sum(p.numel() for p in model.parameters())
    if name in EXPECTED_PARAMS:
        assert n == pytest.approx(EXPECTED_PARAMS[name], rel=0.1)


def test_full_precision_layers_by_role_and_name() -> None:
    model = build_model(ModelConfig(arch="resnet20", full_precision_layers=("head", "layer1.0.conv1")))
    names = {n for n, _ in ternary_modules(model)}
    assert "conv1" in names and "fc" not in names and "layer1.0.conv1" not in names
    assert "layer1.0.conv2" in names
    with pytest.raises(ValueError, match="'steem'"):
        build_model(ModelConfig(arch="resnet20", full_precision_layers=("steem",)))
