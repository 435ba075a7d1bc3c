"""The packed 2-bit model: codes round-trip, logits equal the quantized model's exactly on CPU, the file is small,
and only plain data is loaded."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from trainables.config import TrainConfig
from trainables.models import build_model
from trainables.packed import PackError, load_packed, pack_codes, save_packed, unpack_codes


def test_codes_round_trip():
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 4, 5, 1001):
        codes = torch.randint(0, 3, (n,), generator=g, dtype=torch.uint8)
        packed = pack_codes(codes)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 3) // 4
        assert torch.equal(unpack_codes(packed, n), codes)


def _trained(quantizer: str, arch: str = "tinynet") -> tuple[torch.nn.Module, TrainConfig]:
    """A model after a few SGD steps on real images (so weights, scales and BatchNorm statistics have moved)."""
    from trainables.data import make_split

    cfg = TrainConfig.model_validate({"data": {"subset": 600, "val_fraction": 0.2},
                                      "model": {"arch": arch, "quantizer": quantizer}})
    split = make_split(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(3):
        x = split.train_x[i * 64:(i + 1) * 64].float() / 255
        loss = F.cross_entropy(model(x), split.train_y[i * 64:(i + 1) * 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cfg, split


@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_packed_model_gives_identical_logits(tmp_path, data_root, quantizer):
    model, cfg, split = _trained(quantizer)
    path = save_packed(model, cfg, tmp_path / "m.tern")
    loaded, cfg2 = load_packed(path)
    assert cfg2 == cfg and not loaded.training
    x = split.val_x[:100].float() / 255
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_resnet18_packed_is_over_10x_smaller_than_fp32(tmp_path):
    cfg = TrainConfig.model_validate({"model": {"arch": "resnet18"}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    packed = save_packed(model, cfg, tmp_path / "r18.tern").stat().st_size
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    ratio = buf.tell() / packed
    print(f"resnet18: fp32 state_dict {buf.tell() / 1e6:.1f} MB, packed {packed / 1e6:.2f} MB, {ratio:.1f}x smaller")
    assert ratio >= 10


def test_not_a_packed_model_is_refused(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    crafted = tmp_path / "evil.tern"
    crafted.write_bytes(pickle.dumps({"format": "ternsearch-packed-v1", "x": Boom()}))
    with pytest.raises(PackError, match="not a loadable packed model"):
        load_packed(crafted)
    other = tmp_path / "other.tern"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(PackError, match="not a ternsearch packed model"):
        load_packed(other)
