"""The first run on a GPU machine (issue 22): one line per check, ``ok``/``FAIL``/``skipped`` and what it measured.

    bash benchmarks/gpu_check.sh        # TERNSEARCH_DATA must name the CIFAR-10 folder; under 8 minutes

Checks: a single-GPU run in fp16 and in bf16 (where the GPU has it natively) with resume, a compiled run across a
quantization ramp (compiles once), four fractional trials sharing one GPU (a sweep), a 2-rank DDP sweep with TTQ
and delayed quantization (two GPUs or more), and the loop's images/s on the GPU. Nothing here has run yet: it
was written without a GPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.config import TrainConfig  # noqa: E402
from trainables.loop import run  # noqa: E402


def _cfg(subset: int = 5000, **train) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 256, "lr": 0.05, "seed": 0}
    base.update(train)
    return TrainConfig.model_validate({"data": {"subset": subset}, "model": {"arch": "tinynet"}, "train": base})


def _line(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def check_precision_resume(precision: str, tmp: Path) -> bool:
    kept: list[Path] = []

    def keep(metrics, ckpt):
        if ckpt:
            kept.append(Path(shutil.copytree(ckpt, tmp / f"{precision}-e{metrics['epoch']}")))

    straight = run(_cfg(epochs=3, precision=precision), None)
    run(_cfg(epochs=2, precision=precision), keep)
    resumed = run(_cfg(epochs=3, precision=precision), None, resume_from=kept[-1])
    same = abs(resumed["val_acc"] - straight["val_acc"]) <= 0.02  # bit-identical only with train.deterministic
    return _line(f"{precision} + resume", same and resumed["nonfinite_steps"] == 0,
                 f"val_acc straight {straight['val_acc']:.4f} resumed {resumed['val_acc']:.4f}, "
                 f"{resumed['images_per_sec']:.0f} images/s")


def check_compile() -> bool:
    from torch._dynamo.utils import counters

    counters.clear()
    t0 = time.time()
    out = run(_cfg(epochs=3, compile=True, quantize_from_epoch=2, ramp_epochs=2), None)
    recompiles = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    return _line("compile across a ramp", out["quant_mix"] == 1.0,
                 f"{time.time() - t0:.0f} s, {out['images_per_sec']:.0f} images/s, dynamo recompiles {recompiles}")


def check_augment_workers() -> bool:
    """AutoAugment in CPU workers (data.augment_workers: auto on CUDA) against inline, one epoch each."""
    rates = {}
    for workers in ("auto", 0):
        cfg = _cfg(epochs=1, augment="autoaugment")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"augment_workers": workers})})
        rates[workers] = run(cfg, None)["images_per_sec"]
    return _line("autoaugment in CPU workers", rates["auto"] > 0,
                 f"{rates['auto']:.0f} images/s with workers, {rates[0]:.0f} inline")


def check_sweep(name: str, resources: str, model: str, tmp: Path) -> bool:
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"name: gpu-check-{name}\nmetric: {{name: val_acc, mode: max}}\n"
                    f"data: {{subset: 5000}}\nmodel: {model}\n"
                    "train: {epochs: 2, batch_size: 256, quantize_from_epoch: 2}\n"
                    "search:\n  lr: {loguniform: [0.01, 0.2]}\n"
                    "searcher: {algorithm: random, seed: 0, num_samples: 4}\n"
                    f"scheduler: {{algorithm: fifo}}\nresources: {resources}\n"
                    f"storage: {{path: {tmp}/results}}\ntracking: {{uri: sqlite:///{tmp}/mlflow.db}}\n")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return _line(f"sweep {name}", r.returncode == 0, f"{time.time() - t0:.0f} s, exit {r.returncode}: {tail[:200]}")


def main() -> int:
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (benchmarks/gpu_check.py checks the GPU paths on a GPU machine)")
        return 0
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        tmp = Path(d)
        results.append(check_precision_resume("fp16", tmp))
        if torch.cuda.is_bf16_supported(including_emulation=False):
            results.append(check_precision_resume("bf16", tmp))
        else:
            print("skipped bf16 + resume: this GPU has no native bf16")
        results.append(check_compile())
        results.append(check_augment_workers())
        results.append(check_sweep("fractional", "{workers_per_trial: 1, gpus_per_worker: 0.25, cpus_per_worker: 1}",
                                   "{arch: tinynet}", tmp))
        if gpus >= 2:
            results.append(check_sweep("ddp-ttq", "{workers_per_trial: 2, gpus_per_worker: 1, cpus_per_worker: 1}",
                                       "{arch: tinynet, quantizer: ttq}", tmp))
        else:
            print("skipped sweep ddp-ttq: needs 2 GPUs")
    print(f"{sum(results)}/{len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
