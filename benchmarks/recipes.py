"""Ternary recipes compared at the same budget on real CIFAR-10: full precision, ternary from scratch, ternary
warm-started from the full-precision model, and warm start + distillation from it; the same seeds for all.

Every run is `ternsearch train` (its own process, 2 threads) of the small net on a stratified subset; each
recipe trains for the same number of epochs (the warm-started ones on top of the full-precision run they start
from, which is the recipe's first stage). Prints each run's best and final val_acc and its test accuracy, then
the means, and the FP-vs-ternary gap.

    TERNSEARCH_DATA=/path/to/data python benchmarks/recipes.py [--epochs 6] [--subset 10000] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cli import train_cli  # noqa: E402


def _config(name: str, a, seed: int, model: dict, train: dict) -> dict:
    return {"name": name, "data": {"subset": a.subset, "val_fraction": 0.1, "split_seed": 0},
            "model": {"arch": a.arch, **model},
            "train": {"epochs": a.epochs, "batch_size": 128, "optimizer": "sgd", "lr": a.lr, "momentum": 0.9,
                      "nesterov": True, "weight_decay": 5e-4, "schedule": "onecycle", "label_smoothing": 0.1,
                      "seed": seed, "threads": 2, **train}}


def _train(cfg: dict, tmp: Path) -> dict:
    final, run_dir, seconds = train_cli(cfg, tmp)
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    return {"best_val": max(h["val_acc"] for h in history), "final_val": final["val_acc"],
            "test": final["test_acc"], "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--arch", default="tinynet")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    a = ap.parse_args()
    print(f"{a.arch}, CIFAR-10 subset {a.subset} (10% validation), {a.epochs} epochs a run, SGD lr {a.lr} "
          f"one-cycle, seeds {a.seeds}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ternsearch-recipes-") as tmp_name:
        tmp = Path(tmp_name)
        for seed in a.seeds:
            fp = f"fp32-s{seed}"
            recipes = [
                ("full precision", _config(fp, a, seed, {"quantizer": "none"}, {})),
                ("ternary, scratch", _config(f"scratch-s{seed}", a, seed, {"quantizer": "twn"}, {})),
                ("ternary, warm start", _config(f"warm-s{seed}", a, seed, {"quantizer": "twn", "init": "checkpoint",
                                                                          "init_from": str(tmp / fp)}, {})),
                ("ternary, warm start + KD", _config(
                    f"kd-s{seed}", a, seed, {"quantizer": "twn", "init": "checkpoint", "init_from": str(tmp / fp)},
                    {"distill_from": str(tmp / fp), "distill_weight": 0.5, "distill_temperature": 4.0})),
            ]
            for label, cfg in recipes:
                r = _train(cfg, tmp)
                rows.setdefault(label, []).append(r)
                print(f"  seed {seed}  {label:26s} best val_acc {r['best_val']:.4f}  final {r['final_val']:.4f}  "
                      f"test_acc {r['test']:.4f}  ({r['seconds']:.0f} s)", flush=True)
    print("mean over seeds:")
    means = {}
    for label, rs in rows.items():
        means[label] = {k: statistics.mean(r[k] for r in rs) for k in ("best_val", "test")}
        print(f"  {label:26s} best val_acc {means[label]['best_val']:.4f}  test_acc {means[label]['test']:.4f}")
    fp = means["full precision"]["test"]
    for label in list(means)[1:]:
        print(f"  FP-vs-ternary test gap, {label:26s}: {100 * (fp - means[label]['test']):+.1f} points")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
