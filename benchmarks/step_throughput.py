"""Images/s of one SGD training step (forward + backward + step), fp32 vs ternary (TWN), per model.

Both variants of a model train on the same batch, channels_last, with torch.set_num_threads(threads). Their
steps are interleaved (fp32, ternary, fp32, ...) and the fastest step of each is reported (timeit's rule): on
a shared machine other processes only ever add time, so the minimum is the best estimate of the step's own
cost, and interleaving exposes both variants to the same load.

    python benchmarks/step_throughput.py
    python benchmarks/step_throughput.py --models airbench tinynet --batch-size 256 --steps 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainables.config import ModelConfig  # noqa: E402
from trainables.models import build_model, model_names  # noqa: E402
from trainables.ternary import ternary_modules  # noqa: E402

# Timed steps per model when --steps is not given: resnet18 and mobilenetv2 take seconds per step on 2 CPU
# cores, so they get fewer. Keeps the default run of all five models under ~3 minutes.
DEFAULT_STEPS = {"resnet18": 3, "mobilenetv2": 3, "airbench": 6, "resnet20": 8, "tinynet": 12}
WARMUP_STEPS = 1


def _make(arch: str, quantizer: str, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, quantizer=quantizer)).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return model, opt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: the clock is read once they have finished
        torch.cuda.synchronize(device)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    _sync(x.device)
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(x.device)
    return time.perf_counter() - t0


def _quantizer_time(model: nn.Module, repeats: int = 5) -> float:
    """Fastest time of computing every ternary layer's weight once: the forward cost the quantizer adds.

    Its backward is the identity (nothing to time), so this isolates the quantizer from the step-to-step
    noise of the whole step, which on a shared machine is larger than the quantizer itself.
    """
    layers = [m for _, m in ternary_modules(model)]
    device = next(model.parameters()).device
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for m in layers:
                m.quantized_weight()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return min(times)


def bench(arch: str, batch_size: int, steps: int, device: torch.device | None = None) -> tuple[float, float, float]:
    """Return the fastest step time of fp32 and of ternary, and the quantizer's time per step, in seconds."""
    device = device or torch.device("cpu")
    variants = {q: _make(arch, q, device) for q in ("none", "twn")}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    times: dict[str, list[float]] = {q: [] for q in variants}
    for i in range(WARMUP_STEPS + steps):
        for q, (model, opt) in variants.items():
            dt = _step(model, opt, x, y)
            if i >= WARMUP_STEPS:
                times[q].append(dt)
    return min(times["none"]), min(times["twn"]), _quantizer_time(variants["twn"][0])


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, time each model, print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(model_names()), choices=model_names())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: per model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: the step in fp32 on that device")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The load average says how far to trust the numbers: other processes' threads contend for the same cores.
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} threads, batch {args.batch_size}, "
        f"channels_last, SGD; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{'model':<12} {'steps':>5} {'fp32 img/s':>11} {'twn img/s':>10} {'twn/fp32 time':>14} "
        f"{'quantizer ms/step':>18}"
    )
    for arch in args.models:
        steps = args.steps or DEFAULT_STEPS.get(arch, 5)
        t_fp, t_tern, t_quant = bench(arch, args.batch_size, steps, torch.device(args.device))
        print(
            f"{arch:<12} {steps:>5} {args.batch_size / t_fp:>11.1f} {args.batch_size / t_tern:>10.1f} "
            f"{t_tern / t_fp:>13.3f}x {t_quant * 1e3:>8.1f} ({t_quant / t_tern:5.1%})",
            flush=True,
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
