"""Our training loop vs a plain PyTorch loop on the same config: training images/s, and ResNet-20's FLOP/s.

A ("loop") is ``trainables.loop.run`` on a TrainConfig: 1 epoch, quantizer twn, augment standard, threads 2,
channels_last auto, a no-op report callback (so it also writes its per-epoch checkpoint, as in a sweep).
B ("plain") is ~40 lines of PyTorch for the same work: the same model (``build_model``), the same uint8
tensor-resident training images, the same batched crop+flip+normalize (``trainables.augment``), SGD with
momentum, channels_last, and no per-step ``.item()``. Both figures are *training* images/s of the epoch
(the loop's own ``images_per_sec``: images / seconds of the training pass, evaluation excluded; the plain
loop is timed the same way). The runs are interleaved A, B, A, B, ... and the medians are compared, so a
load spike from other processes hits both. Target: loop / plain >= 0.95.

On a shared machine whole epochs still swing by +-30% with the neighbours' load, so the two are also
interleaved step by step: one epoch of the loop runs a plain step from its ``on_batch`` hook after each of
its own steps, and the median step times are compared (each step of A sits next to a step of B in time).

Then the training FLOP/s of ResNet-20: the FLOPs of one forward + backward of a batch, counted with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls only; the optimizer, BatchNorm and the
quantizer are not counted), divided by the measured time per training step of each loop (both ways of measuring it).

Every figure is printed with the load average at the time it was taken (the machine may be shared).

    TERNSEARCH_DATA=/path/to/data python benchmarks/step_vs_plain.py
    python benchmarks/step_vs_plain.py --models resnet20 --subset 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainables.augment import normalize, random_crop_flip  # noqa: E402
from trainables.config import TrainConfig  # noqa: E402
from trainables.data import make_split  # noqa: E402
from trainables.loop import run  # noqa: E402
from trainables.models import build_model  # noqa: E402


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def config(arch: str, a: argparse.Namespace) -> TrainConfig:
    return TrainConfig.model_validate({
        "data": {"subset": a.subset, "val_fraction": 0.1},
        "model": {"arch": arch, "quantizer": "twn"},
        "train": {"epochs": 1, "batch_size": a.batch_size, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                  "augment": "standard", "threads": a.threads, "precision": "fp32", "seed": 0},
    })


def loop_epoch(cfg: TrainConfig) -> float:
    """Training images/s of one epoch of the product's loop."""
    metrics = run(cfg, lambda m, ckpt: None)
    return metrics["images_per_sec"]


class PlainLoop:
    """The plain PyTorch loop: same model, data, crop+flip and optimizer family; nothing else."""

    def __init__(self, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor):
        p = cfg.train
        torch.set_num_threads(p.threads)
        torch.manual_seed(p.seed)
        self.model = build_model(cfg.model).to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=p.lr, momentum=p.momentum,
                                   weight_decay=p.weight_decay)
        self.gen = torch.Generator().manual_seed(p.seed)
        self.x, self.y, self.bs = x, y, p.batch_size
        self.batches = x.shape[0] // p.batch_size
        self.perm = torch.randperm(x.shape[0], generator=self.gen)

    def step(self, b: int) -> torch.Tensor:
        idx = self.perm[(b % self.batches) * self.bs:(b % self.batches + 1) * self.bs]
        xb = normalize(random_crop_flip(self.x[idx], self.gen), channels_last=True)
        loss = F.cross_entropy(self.model(xb), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()  # no .item(): no per-step sync

    def epoch(self) -> float:
        """Training images/s of one epoch (timed like the loop's: the training pass only)."""
        t0 = time.perf_counter()
        for b in range(self.batches):
            loss = self.step(b)
        float(loss)  # one sync at the end
        return self.batches * self.bs / (time.perf_counter() - t0)


def plain_epoch(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> float:
    return PlainLoop(cfg, x, y).epoch()


def interleaved_steps(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
    """One epoch of the loop with a plain step run after each of its steps (from its ``on_batch`` hook).

    Returns the seconds of each loop step (between two hook calls, the plain step excluded) and of each
    plain step; the first step of each is dropped. Step by step, both see the same load.
    """
    plain = PlainLoop(cfg, x, y)
    loop_s: list[float] = []
    plain_s: list[float] = []
    last: list[float] = []

    def on_batch(epoch: int, b: int, batches: int) -> None:
        now = time.perf_counter()
        if last:
            loop_s.append(now - last[0])
        t0 = time.perf_counter()
        plain.step(b)
        if b:
            plain_s.append(time.perf_counter() - t0)
        last[:] = [time.perf_counter()]

    run(cfg, None, on_batch=on_batch)
    return loop_s, plain_s


def train_flops_per_image(cfg: TrainConfig, batch: int) -> float:
    """Forward + backward FLOPs per image (FlopCounterMode: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    xb = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 10, (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(xb), yb).backward()
    return counter.get_total_flops() / batch


def warm_up(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    """A few untimed plain steps: the process's one-time kernel set-up must not land on the first timed run."""
    short = x[: steps * cfg.train.batch_size], y[: steps * cfg.train.batch_size]
    plain_epoch(cfg, *short)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tinynet", "resnet20"])
    ap.add_argument("--subset", type=int, default=4000, help="images before the 10%% validation split")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="A/B epoch pairs per model (medians are compared)")
    ap.add_argument("--no-steps", action="store_true", help="skip the step-interleaved comparison")
    ap.add_argument("--flops-per-cycle", type=float, default=32.0,
                    help="fp32 FLOPs per cycle per core for the nominal peak (32: two 256-bit FMA pipes)")
    a = ap.parse_args()
    if not os.environ.get("TERNSEARCH_DATA"):
        sys.exit("set TERNSEARCH_DATA to the folder holding cifar-10-batches-bin/")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {a.threads}, batch {a.batch_size}, "
          f"1 epoch of {a.subset - round(0.1 * a.subset)} training images; {load()}")
    step_seconds: dict[str, dict[str, float]] = {}
    for arch in a.models:
        cfg = config(arch, a)
        split = make_split(cfg.data)  # also loads CIFAR-10 into this process's cache, before any timing
        x, y = split.train_x, split.train_y
        warm_up(cfg, x, y)
        runs: dict[str, list[float]] = {"loop": [], "plain": []}
        print(f"{arch}, whole epochs interleaved A (loop), B (plain), ...:")
        for i in range(a.repeats):
            for name in ("loop", "plain"):
                ips = loop_epoch(cfg) if name == "loop" else plain_epoch(cfg, x, y)
                runs[name].append(ips)
                print(f"  run {i + 1} {name:<5} {ips:8.1f} img/s  ({load()})", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        pairs = [lp / pl for lp, pl in zip(runs["loop"], runs["plain"])]
        print(f"  median: loop {med['loop']:.1f} img/s, plain {med['plain']:.1f} img/s; "
              f"ratio loop/plain {med['loop'] / med['plain']:.3f} (target >= 0.95; per pair "
              f"{', '.join(f'{r:.3f}' for r in pairs)})  ({load()})")
        step_seconds[arch] = {f"{k} (epochs)": a.batch_size / v for k, v in med.items()}
        if not a.no_steps:
            loop_s, plain_s = interleaved_steps(cfg, x, y)
            ml, mp = statistics.median(loop_s), statistics.median(plain_s)
            print(f"{arch}, step by step (a plain step after every loop step, one epoch, {len(loop_s)} steps each):")
            print(f"  median step: loop {ml * 1e3:.1f} ms ({a.batch_size / ml:.1f} img/s), plain {mp * 1e3:.1f} ms "
                  f"({a.batch_size / mp:.1f} img/s); ratio loop/plain {mp / ml:.3f} (target >= 0.95)  ({load()})")
            print(f"  fastest step: loop {min(loop_s) * 1e3:.1f} ms, plain {min(plain_s) * 1e3:.1f} ms; "
                  f"ratio {min(plain_s) / min(loop_s):.3f}")
            step_seconds[arch].update({"loop (steps)": ml, "plain (steps)": mp})
        sys.stdout.flush()
    if "resnet20" in step_seconds:
        cfg = config("resnet20", a)
        flops = train_flops_per_image(cfg, a.batch_size)
        mhz = _cpu_mhz()
        peak = (os.cpu_count() or 1) * mhz * 1e6 * a.flops_per_cycle if mhz else None
        print(f"resnet20 training FLOPs (FlopCounterMode, fwd+bwd, conv+matmul): {flops / 1e6:.1f} MFLOP/image, "
              f"{flops * a.batch_size / 1e9:.2f} GFLOP per step of {a.batch_size}")
        for name, sec in step_seconds["resnet20"].items():
            rate = flops * a.batch_size / sec
            extra = f", {rate / peak:.1%} of a nominal {peak / 1e9:.0f} GFLOP/s peak" if peak else ""
            print(f"  {name:<13}: {sec * 1e3:5.0f} ms/step -> {rate / 1e9:5.1f} GFLOP/s{extra}  ({load()})")
        if peak:
            print(f"  (nominal peak = {os.cpu_count()} cores x {mhz:.0f} MHz x {a.flops_per_cycle:g} FLOP/cycle; "
                  f"/proc/cpuinfo's MHz is the base/TSC clock, and boost clocks raise the real peak; "
                  f"the load above takes its share of the cores)")


def _cpu_mhz() -> float:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    main()
