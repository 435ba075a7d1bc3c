"""Ternary-weight layers (TWN, Li & Liu 2016; TTQ, Zhu et al. 2017) and the helpers that put them into a model.

Each ternary layer keeps latent full-precision weights ``W`` (the ``.weight`` Parameter the optimizer updates)
and computes its forward pass with ``a * T``, ``T`` in {-1, 0, +1}. Gradients flow back to ``W`` through a
straight-through estimator (STE). State-dict keys are those of ``nn.Conv2d`` / ``nn.Linear``, so a
full-precision checkpoint loads into a ternarized model and vice versa.

Quantizers live in a registry (``QUANTIZERS``) so that, e.g., TTQ (learned asymmetric scales) can be added as
one more entry: a quantizer is an ``nn.Module`` built once per layer whose ``forward(w)`` returns the weight to
use in forward, differentiable w.r.t. ``w`` (and w.r.t. its own parameters, if it has any).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "QUANTIZERS",
    "TTQQuantizer",
    "TWNQuantizer",
    "TernaryConv2d",
    "TernaryLinear",
    "latent_weight_params",
    "overall_zero_frac",
    "ternarize",
    "ternary_modules",
    "ternary_stats",
]

# TWN's threshold factor: for weights ~ uniform or Gaussian, delta ~= 0.7 * E|W| approximately minimizes
# ||W - a*T||^2 (Li & Liu 2016, eq. 8-9). It keeps roughly 40-55% of the weights nonzero at init.
TWN_DELTA_FACTOR = 0.7


@torch.no_grad()
def _twn_ternarize(w: torch.Tensor) -> torch.Tensor:
    """a * T for one weight tensor (no autograd: the caller attaches the straight-through gradient)."""
    # Threshold and scale are per layer (one scalar each), computed on the current latent weights. Reductions
    # accumulate in fp32 at least, so bf16/fp16 weights neither lose a 2M-term sum nor round the count.
    acc = torch.promote_types(w.dtype, torch.float32)
    absw = w.abs()
    delta = TWN_DELTA_FACTOR * absw.mean(dtype=acc)
    # The kept-mask as a float tensor: it is the count (its sum), the selector for the scale (a product) and,
    # signed, T itself. The mask and |W| are reused in place: 2 temporaries instead of 5, ~3.5x faster than a
    # torch.where formulation on a 2.4M-weight conv on CPU (measured; memory traffic is what this costs).
    keep = (absw > delta).to(w.dtype)
    count = keep.sum(dtype=acc)
    # a = mean |W| over the kept weights: the least-squares scale for a fixed support (TWN eq. 5).
    # Guard: when nothing is kept (all W zero: delta = 0 and no |W| > 0) the count is 0 and so is the sum;
    # clamping the count to 1 gives a = 0 and an all-zero layer instead of 0/0 = NaN.
    a = absw.mul_(keep).sum(dtype=acc) / count.clamp_min(1)
    # T = sign(W) * keep, in one op: copysign moves W's sign onto the 0/1 mask (a dropped weight may come
    # out as -0.0, which equals 0 everywhere that matters). Elementwise in W, so q inherits W's memory format
    # (channels_last stays channels_last and the conv needs no layout conversion).
    return keep.copysign_(w).mul_(a.to(w.dtype))


class _TWNSTE(torch.autograd.Function):
    """Forward: TWN ternarization. Backward: identity (the straight-through estimator).

    The quantizer is piecewise constant, so its true gradient is zero almost everywhere; the STE pretends it
    is the identity and hands dL/dq to the latent weights unchanged. A custom Function is used instead of the
    ``w + (q - w).detach()`` idiom because it skips that idiom's subtract and add (two more passes over the
    weight and two more temporaries per layer per step): quantizing all of resnet18's ternary layers, forward
    and backward, took 21 ms with this Function against 27 ms with the idiom (2 CPU threads).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:  # noqa: D102 (autograd protocol)
        return _twn_ternarize(w)

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad_q


class TWNQuantizer(nn.Module):
    """Ternary Weight Networks: delta = 0.7 * mean|W|, T = sign(W) * (|W| > delta), a = mean of kept |W|.

    Parameter-free; gradients pass straight through to the latent weights.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Return ``a * T`` for the latent weights ``w``, with an identity gradient w.r.t. ``w``."""
        return _TWNSTE.apply(w)


# TTQ's threshold factor t: delta = t * max|W| (Zhu et al. 2017 use t = 0.05 for CIFAR-10 ResNets).
TTQ_THRESHOLD = 0.05


class _TTQFunction(torch.autograd.Function):
    """Forward: +Wp where W > delta, -Wn where W < -delta, 0 elsewhere (delta = t * max|W|).

    Backward: the latent weights get dL/dq scaled by Wp on the positive support, by Wn on the negative one and by
    1 on the zero band (TTQ eq. 8, the paper's straight-through estimator with learned scales). The scales get
    the *mean* of dL/dq over their support (dL/dWp), and minus the mean over the negative one (dL/dWn), where
    TTQ's eq. 7 has the sum. The sum grows with the layer (up to 36,864 weights in ResNet-20, 2.4 million in
    ResNet-18) while the scales sit near mean |W|: at the paper's lr 0.1 it drove them negative within the first
    epoch, which flips the layer's sign and reverses its straight-through gradient (ResNet-20 with the paper's
    recipe, 15 epochs on all of CIFAR-10: 51% and 90% test error, against TWN's 18%; BENCHMARKS.md). The mean is
    the same direction at a step size that does not depend on the layer's size.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, t: float) -> torch.Tensor:  # noqa: D102
        with torch.no_grad():
            delta = t * w.detach().abs().amax()
            pos = w > delta
            neg = w < -delta
            q = pos.to(w.dtype) * wp.to(w.dtype) - neg.to(w.dtype) * wn.to(w.dtype)
        ctx.save_for_backward(pos, neg, wp, wn)
        return q

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor):  # noqa: D102
        pos, neg, wp, wn = ctx.saved_tensors
        acc = torch.promote_types(grad_q.dtype, torch.float32)
        grad_wp = ((grad_q * pos).sum(dtype=acc) / pos.sum().clamp(min=1)).to(wp.dtype)
        grad_wn = (-(grad_q * neg).sum(dtype=acc) / neg.sum().clamp(min=1)).to(wn.dtype)
        scale = torch.where(pos, wp.to(grad_q.dtype), torch.where(neg, wn.to(grad_q.dtype), grad_q.new_ones(())))
        return grad_q * scale, grad_wp, grad_wn, None


class TTQQuantizer(nn.Module):
    """Trained Ternary Quantization: learned positive and negative scales per layer (``wp``, ``wn``) and the
    threshold ``t * max|W|`` (``t``: ``model.ttq_threshold``, searchable).

    The scales start at the mean magnitude of the latent weights above / below the threshold when the layer is
    converted (``init_from``), and are trained like BatchNorm parameters (the optimizer's no-decay group).
    """

    def __init__(self, threshold: float = TTQ_THRESHOLD) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"TTQ threshold must be in (0, 1), got {threshold}")
        self.threshold = float(threshold)
        self.wp = nn.Parameter(torch.tensor(1.0))
        self.wn = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        """Set the scales to the mean |W| of the weights each one will stand for."""
        delta = self.threshold * w.abs().amax()
        for scale, kept in ((self.wp, w[w > delta]), (self.wn, -w[w < -delta])):
            scale.fill_(float(kept.mean()) if kept.numel() else float(delta))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Return the ternary weight ``{-wn, 0, +wp}`` for the latent weights ``w``."""
        return _TTQFunction.apply(w, self.wp, self.wn, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


# name -> quantizer class (built once per layer). "none" means no conversion (see ``ternarize``).
QUANTIZERS: dict[str, type[nn.Module]] = {"twn": TWNQuantizer, "ttq": TTQQuantizer}


class _TernaryMixin:
    """What TernaryConv2d and TernaryLinear share: the quantizer, the switch, and the statistics."""

    weight: nn.Parameter
    quantizer: nn.Module
    quantize: bool

    def _init_ternary(self, quantizer: str, options: Optional[dict] = None) -> None:
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {quantizer!r} (choose from: {', '.join(sorted(QUANTIZERS))})")
        self.quantizer = QUANTIZERS[quantizer](**(options or {}))
        self.quantizer_name = quantizer
        # False uses the weight as it is: for a model whose weights are already ternary (a packed export). Training
        # never switches it; progressive quantization moves ``mix`` instead.
        self.quantize = True
        # Forward uses lerp(W, a*T, mix) = (1 - mix) * W + mix * a*T: 1.0 is plain ternary, 0.0 full precision,
        # between ramps it in. A 0-dim buffer, not a Python float: torch.compile guards on Python attributes
        # (every new value of a ramp was a recompile, until the limit dropped the model to eager), not on a
        # tensor's value. Not persistent: state-dict keys stay those of nn.Conv2d / nn.Linear, and the loop
        # sets the mix every epoch (recipes.set_quant_mix).
        self.register_buffer("mix", torch.ones((), device=self.weight.device), persistent=False)

    def quantized_weight(self) -> torch.Tensor:
        """Return the weight that forward uses: ``lerp(W, a*T, mix)`` when ``quantize`` is set (``a * T`` at mix 1,
        the latent weight at mix 0), else the latent weight."""
        if not self.quantize:
            return self.weight
        # One code path for every mix, the full-precision epochs included: the quantizer always runs, so TTQ's
        # scales are in the graph and get a gradient (exactly 0 at mix 0) in every step. DDP, built without
        # find_unused_parameters, otherwise fails on the second step ("Expected to have finished reduction")
        # while the layer is not yet quantized. lerp is exact at the ends (W at 0, a*T at 1) and its cost is
        # a pass over the weights, small beside the convolution over a batch of activations.
        return torch.lerp(self.weight, self.quantizer(self.weight), self.mix)

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Describe the weight that forward uses.

        Returns:
            ``{"neg_frac", "zero_frac", "pos_frac", "scale", "numel"}``: the fractions of negative, zero and
            positive entries (they sum to 1), the mean magnitude of the nonzero entries (the ternary scale
            ``a`` when quantized; 0.0 for an all-zero layer) and the number of weights.
        """
        q = self.quantized_weight()
        numel = q.numel()
        neg = int((q < 0).sum())
        pos = int((q > 0).sum())
        nonzero = neg + pos
        scale = float(q.abs().sum(dtype=torch.float64)) / nonzero if nonzero else 0.0
        # zero is the remainder, so the three fractions sum to 1 up to float rounding.
        return {
            "neg_frac": neg / numel,
            "zero_frac": (numel - nonzero) / numel,
            "pos_frac": pos / numel,
            "scale": scale,
            "numel": float(numel),
        }

    def extra_repr(self) -> str:  # shown by print(model)
        return f"{super().extra_repr()}, quantizer={self.quantizer_name}, quantize={self.quantize}"


class TernaryConv2d(_TernaryMixin, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses ternary weights. Takes Conv2d's arguments plus ``quantizer``."""

    def __init__(self, *args, quantizer: str = "twn", quantizer_options: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(quantizer, quantizer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class TernaryLinear(_TernaryMixin, nn.Linear):
    """``nn.Linear`` whose forward uses ternary weights. Takes Linear's arguments plus ``quantizer``."""

    def __init__(self, *args, quantizer: str = "twn", quantizer_options: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(quantizer, quantizer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


def _convert(module: nn.Module, quantizer: str, options: Optional[dict] = None) -> nn.Module:
    """A ternary twin of ``module`` that takes over its Parameters (same tensors: device, dtype, layout)."""
    # Build on the meta device (no allocation, no wasted init), then adopt the original Parameters. Adopting
    # rather than copying keeps memory format and requires_grad, and costs nothing for an 11M-param model.
    if isinstance(module, nn.Conv2d):
        new = TernaryConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device="meta",
            quantizer=quantizer,
            quantizer_options=options,
        )
    else:
        new = TernaryLinear(
            module.in_features, module.out_features, bias=module.bias is not None, device="meta",
            quantizer=quantizer, quantizer_options=options,
        )
    new.weight = module.weight
    new.bias = module.bias
    new.mix = torch.ones((), device=module.weight.device)  # built on meta with the rest
    new.quantizer.to(module.weight.device)  # a quantizer with parameters (TTQ's scales) follows the weight
    if hasattr(new.quantizer, "init_from"):
        new.quantizer.init_from(new.weight)
    new.train(module.training)
    return new


def _resolve_full_precision(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Map roles to qualified module names; reject names that are neither."""
    if isinstance(names, str):  # a bare "stem" would otherwise be iterated letter by letter
        names = (names,)
    roles: dict[str, str] = dict(getattr(model, "layer_roles", {}) or {})
    modules = dict(model.named_modules())
    resolved = []
    for name in names:
        qualified = roles.get(name, name)
        if qualified not in modules or qualified == "":
            valid = ", ".join(sorted(roles)) or "none"
            raise ValueError(
                f"unknown layer {name!r} in full_precision_layers: not a role of {type(model).__name__} "
                f"(roles: {valid}) nor a qualified module name (e.g. 'layer1.0.conv1')"
            )
        resolved.append(qualified)
    return resolved


def ternarize(
    model: nn.Module, quantizer: str = "twn", full_precision_layers: Iterable[str] = ("stem", "head"),
    quantizer_options: Optional[dict] = None,
) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` by its ternary version.

    The new layers take over the original Parameters (same device, dtype and values), so call this before
    building the optimizer and before wrapping the model in DDP. Depthwise convolutions are converted too.

    Args:
        model: the network; may define a class attribute ``layer_roles = {"stem": "conv1", "head": "fc"}``.
        quantizer: a key of ``QUANTIZERS``, or ``"none"`` to leave the model untouched.
        quantizer_options: keyword arguments of the quantizer class (TTQ: ``threshold``).
        full_precision_layers: layers kept at full precision, each a role from ``model.layer_roles`` or a
            qualified module name (``"layer1.0.conv1"``); naming a container keeps everything inside it.

    Returns:
        The same ``model`` object.

    Raises:
        ValueError: a name in ``full_precision_layers`` is neither a role nor a module, or the quantizer is
            unknown.
    """
    keep = _resolve_full_precision(model, full_precision_layers)
    if quantizer == "none":
        return model
    if quantizer not in QUANTIZERS:
        raise ValueError(
            f"unknown quantizer {quantizer!r} (choose from: {', '.join(sorted(QUANTIZERS) + ['none'])})"
        )
    targets = []
    for name, module in model.named_modules():
        if isinstance(module, _TernaryMixin) or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if any(name == k or name.startswith(k + ".") for k in keep):
            continue
        targets.append(name)
    for name in targets:  # replace after iterating: named_modules must not see a changing tree
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, _convert(getattr(parent, child), quantizer, quantizer_options))
    return model


def ternary_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified name, module)`` for every ternary layer of ``model``, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _TernaryMixin)]


def ternary_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Return the per-layer statistics (see ``TernaryConv2d.stats``), keyed by qualified module name."""
    return {name: m.stats() for name, m in ternary_modules(model)}


def overall_zero_frac(model: nn.Module) -> float:
    """Return the fraction of zero weights over all ternary layers (weighted by size); 0.0 if there are none."""
    stats = ternary_stats(model).values()
    total = sum(s["numel"] for s in stats)
    return sum(s["zero_frac"] * s["numel"] for s in stats) / total if total else 0.0


def latent_weight_params(model: nn.Module) -> list[nn.Parameter]:
    """Return the latent ``.weight`` of each ternary layer: the parameter group that gets ``ternary_lr_ratio``."""
    return [m.weight for _, m in ternary_modules(model)]
