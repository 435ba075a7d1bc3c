"""Size of the packed 2-bit model (`ternsearch export --packed`) against the fp32 state_dict, per architecture.

    python benchmarks/packed_size.py [--archs resnet18 resnet20 tinynet]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import torch

from trainables.config import TrainConfig
from trainables.models import build_model
from trainables.packed import load_packed, save_packed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "resnet20", "mobilenetv2", "tinynet"])
    a = ap.parse_args()
    print(f"{'model':12s} {'fp32 state_dict':>16s} {'packed':>10s} {'ratio':>7s}  logits equal")
    for arch in a.archs:
        cfg = TrainConfig.model_validate({"model": {"arch": arch}})
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_packed(model, cfg, Path(tmp) / "m.tern")
            packed = path.stat().st_size
            loaded, _ = load_packed(path)
            x = torch.rand(4, 3, 32, 32)
            with torch.no_grad():
                same = torch.equal(loaded(x), model(x))
        print(f"{arch:12s} {buf.tell() / 1e6:13.2f} MB {packed / 1e6:7.2f} MB {buf.tell() / packed:6.1f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
