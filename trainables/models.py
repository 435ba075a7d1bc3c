"""The built-in models: CIFAR-sized (32x32 input) networks, ternarized according to a ``ModelConfig``.

Every model names its first layer and its classifier in a class attribute ``layer_roles`` ("stem", "head"),
which ``ternary.ternarize`` resolves so a spec can say ``full_precision_layers: [stem, head]`` whatever the
architecture. All models use BatchNorm (DDP-friendly via SyncBatchNorm conversion if wanted) and no dropout,
so a resumed run replays exactly.
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import ModelConfig
from trainables.registry import get_builder, model_names, register
from trainables.ternary import ternarize

__all__ = ["build_model", "model_names", "register", "unknown_layer"]  # model_names and register: trainables.registry's


def build_model(cfg: ModelConfig, num_classes: int = 10) -> nn.Module:
    """Build ``cfg.arch`` and ternarize it as ``cfg`` says.

    Args:
        cfg: the architecture, the quantizer (``"none"`` keeps full precision) and the layers kept at full
            precision (roles such as ``"stem"``/``"head"`` or qualified module names).
        num_classes: width of the classifier.

    Returns:
        The model, on the CPU, in training mode.

    Raises:
        ValueError: unknown architecture, quantizer or layer name.
    """
    model = get_builder(cfg.arch)(num_classes)
    # ternarize validates full_precision_layers even for "none", so a typo fails the fp32 baseline as well.
    options = {"threshold": cfg.ttq_threshold} if cfg.quantizer == "ttq" else None
    return ternarize(model, cfg.quantizer, cfg.full_precision_layers, options)


def unknown_layer(arch: str, names: Sequence[str]) -> Optional[tuple[int, str]]:
    """The first of ``names`` (full_precision_layers) that is neither a role of ``arch`` nor one of its modules,
    as ``(index, what is wrong)``; None when all are. The model is built on the meta device: no memory, no init."""
    with torch.device("meta"):
        model = get_builder(arch)(10)
    roles = dict(getattr(model, "layer_roles", {}) or {})
    modules = [n for n, _ in model.named_modules() if n]
    for i, name in enumerate(names):
        if roles.get(name, name) not in modules:
            close = difflib.get_close_matches(name, list(roles) + modules, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            example = next((m for m in modules if "." in m), modules[0])
            return i, (f"{name!r} is not a layer of {arch} ({hint}name a role: {', '.join(sorted(roles))}, or a "
                       f"module such as '{example}')")
    return None


def _conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]


# ---------------------------------------------------------------------------------------------------------
# ResNets
# ---------------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3, 1)
        self.pad = 0
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "A":
                # Option A: parameter-free subsample-and-zero-pad (the CIFAR ResNet-20 of the paper).
                self.pad = c_out - c_in
            else:
                self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:
            # Subsample by the stride, zero-pad the new channels equally on both sides.
            half = self.pad // 2
            short = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, half, self.pad - half))
        else:
            short = self.shortcut(x)
        return F.relu(out + short)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, stages of basic blocks, global average pool, linear."""

    layer_roles = {"stem": "conv1", "head": "fc"}

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], shortcut: str, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, widths[0], 3, 1)
        c_in = widths[0]
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(c_in, width, stride, shortcut))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        # Named layer1..layerN as in torchvision, so qualified names like "layer1.0.conv1" read as usual.
        for i, stage in enumerate(stages, 1):
            self.add_module(f"layer{i}", stage)
        self.num_stages = len(stages)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("resnet18")
def resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18, CIFAR variant (widths 64-512, projection shortcuts): ~11.2M parameters."""
    return ResNet((64, 128, 256, 512), (2, 2, 2, 2), "B", num_classes)


@register("resnet20")
def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 of He et al. for CIFAR (widths 16/32/64, option-A shortcuts): ~0.27M parameters."""
    return ResNet((16, 32, 64), (3, 3, 3), "A", num_classes)


# ---------------------------------------------------------------------------------------------------------
# MobileNetV2
# ---------------------------------------------------------------------------------------------------------


class _InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: stride-1 stem and second stage (8x less downsampling)."""

    layer_roles = {"stem": "stem.0", "head": "fc"}

    # (expansion, width, blocks, stride); ImageNet's strides are 2 (stem), 1, 2, 2, 2, 1, 2, 1.
    _SETTINGS = (
        (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 1), nn.ReLU6(inplace=True))
        blocks: list[nn.Module] = []
        c_in = 32
        for expand, width, n, stride in self._SETTINGS:
            for i in range(n):
                blocks.append(_InvertedResidual(c_in, width, stride if i == 0 else 1, expand))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.last = nn.Sequential(*_conv_bn(c_in, 1280, 1), nn.ReLU6(inplace=True))
        self.fc = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("mobilenetv2")
def mobilenetv2(num_classes: int = 10) -> nn.Module:
    """MobileNetV2, CIFAR variant: ~2.2M parameters."""
    return MobileNetV2(num_classes)


# ---------------------------------------------------------------------------------------------------------
# airbench-style conv-pool nets
# ---------------------------------------------------------------------------------------------------------


def _bn(width: int) -> nn.BatchNorm2d:
    # airbench's BN: momentum 0.6 (PyTorch convention: weight of the new batch), so the running statistics
    # follow weights that move fast in short runs -- and ternary weights move in jumps. eps 1e-12 as airbench.
    return nn.BatchNorm2d(width, momentum=0.6, eps=1e-12)


class _ConvGroup(nn.Module):
    """airbench's block: conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU (pooling early saves 4x FLOPs)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class ConvPoolNet(nn.Module):
    """A small fast CIFAR net after KellerJordan's cifar10-airbench.

    A learned 3x3 stem stands in for airbench's data-dependent whitening layer (which needs the training set
    at build time); then three conv groups halve the resolution 32 -> 16 -> 8 -> 4, a global max-pool, and a
    bias-free linear head whose logits are scaled down to keep early softmax outputs soft.
    """

    # airbench scales logits by 1/9, tuned with its very large lr. At the lrs our sweeps use (0.05-0.1 SGD) a
    # 1/9 scale starves the head (its effective step shrinks by the square), and without scaling the max-pooled
    # logits start too large: ternary airbench, 3 epochs on 4,500 images, lr 0.05 onecycle reached val_acc
    # 0.40 at 1/9 and 0.46 at 1/3; tinynet at lr 0.1, over 3 seeds: 0.38 at 1/9, 0.43 at 1/3, 0.16 at 1.
    LOGIT_SCALE = 1 / 3

    layer_roles = {"stem": "stem", "head": "head"}

    def __init__(
        self, widths: tuple[int, int, int, int], num_classes: int = 10, logit_scale: float = LOGIT_SCALE
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.stem_bn = _bn(widths[0])
        self.groups = nn.Sequential(*(_ConvGroup(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.stem_bn(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_max_pool2d(x, 1), 1)) * self.logit_scale


@register("airbench")
def airbench(num_classes: int = 10) -> nn.Module:
    """airbench-style net, widths 64/256/256 after a 24-channel stem: ~2.0M parameters. The CPU default."""
    return ConvPoolNet((24, 64, 256, 256), num_classes)


@register("tinynet")
def tinynet(num_classes: int = 10) -> nn.Module:
    """The airbench layout at widths 32/64/128 after a 16-channel stem: ~0.29M parameters, for fast sweeps."""
    return ConvPoolNet((16, 32, 64, 128), num_classes)
