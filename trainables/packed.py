"""The packed ternary model: what you ship. Ternary layers at 2 bits per weight plus their scales, everything else
(full-precision stem and classifier, BatchNorm, biases) as it is, and the model config.

A ``.tern`` file is a ``torch.save`` of plain tensors, strings and lists, so it loads with
``torch.load(weights_only=True)``; :func:`load_packed` rebuilds a runnable model whose ternary layers hold the
unpacked weights ``{-s_neg, 0, +s_pos}`` exactly, giving the same logits as the quantized model it came from (bit
for bit at the thread count it was packed with: TWN's scale is an fp32 sum, rounded by how many threads split it).

Codes: 0 = zero, 1 and 2 = the layer's two nonzero values ``values[0]`` > ``values[1]`` (+a and -a for TWN, +Wp
and -Wn for TTQ), four codes a byte, the first in the low bits, in the weight's contiguous (row-major) order.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.errors import TrainablesError
from trainables.models import build_model
from trainables.ternary import ternary_modules

__all__ = ["FORMAT", "PackError", "load_packed", "pack_model", "save_packed", "unpack_codes", "pack_codes"]

FORMAT = "ternsearch-packed-v1"


class PackError(TrainablesError, ValueError):
    """A model that is not ternary where it should be, or a file that is not a packed model."""


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in {0, 1, 2} (any shape) -> uint8, four a byte (flattened; padded with zeros)."""
    flat = codes.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 4
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    quads = flat.view(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack_codes(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`: ``numel`` uint8 codes."""
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    return ((packed.reshape(-1, 1) >> shifts) & 3).reshape(-1)[:numel]


@torch.no_grad()
def pack_model(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """The packed form of ``model`` (built from ``cfg.model``) as a dict for ``torch.save``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    names = []
    for name, module in ternary_modules(model):
        q = module.quantized_weight().detach().float().cpu().contiguous()
        values = q[q != 0].unique().flip(0)  # descending
        if values.numel() > 2:
            raise PackError(f"layer {name}: its weights take {values.numel()} nonzero values, not at most 2 (is "
                            "quantize off?)")
        values = torch.cat([values, values.new_zeros(2 - values.numel())])
        codes = (q == values[0]).to(torch.uint8) | ((q == values[1]) & (q != 0)).to(torch.uint8) << 1
        tensors[f"{name}.weight.codes"] = pack_codes(codes)
        tensors[f"{name}.weight.shape"] = torch.tensor(q.shape, dtype=torch.int64)
        tensors[f"{name}.weight.values"] = values
        names.append(name)
        for key in list(state):
            if key == f"{name}.weight" or key.startswith(f"{name}.quantizer."):
                del state[key]
    tensors.update(state)
    return {"format": FORMAT, "config": json.dumps(cfg.model_dump(mode="json")), "ternary_layers": names,
            "tensors": tensors}


def save_packed(model: nn.Module, cfg: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pack_model(model, cfg), path)
    return path


def load_packed(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """A runnable model (eval mode) from a ``.tern`` file, and its config. Its ternary layers use the unpacked
    weights as they are (``quantize`` off), so inference does no quantization work."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # not ours, truncated, or not plain data
        raise PackError(f"{path}: not a loadable packed model ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'empty'})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PackError(f"{path}: not a ternsearch packed model (expected format {FORMAT!r})")
    cfg = TrainConfig.model_validate(json.loads(payload["config"]))
    model = build_model(cfg.model)
    tensors = dict(payload["tensors"])
    modules = dict(model.named_modules())
    for name in payload["ternary_layers"]:
        shape = tuple(int(d) for d in tensors.pop(f"{name}.weight.shape"))
        v1, v2 = tensors.pop(f"{name}.weight.values")
        codes = unpack_codes(tensors.pop(f"{name}.weight.codes"), int(torch.tensor(shape).prod()))
        weight = (codes == 1).float() * v1 + (codes == 2).float() * v2
        module = modules[name]
        module.weight.data = weight.reshape(shape)
        module.quantize = False
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    packed = set(payload["ternary_layers"])
    missing = [k for k in missing if not (k.rsplit(".", 1)[0] in packed or ".quantizer." in k)]
    if missing or unexpected:
        raise PackError(f"{path}: does not match model {cfg.model.arch} (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model.to(device).eval(), cfg
