"""The first run on a GPU machine (issue 22): one line per check, ``ok``/``FAIL``/``skipped`` and what it measured.

    bash benchmarks/gpu_check.sh [--log FILE]   # TERNSEARCH_DATA names the CIFAR-10 folder; under 8 minutes

Each check runs in a process of its own (as a trial does; a CUDA error in one cannot poison the next) with a
time limit, and a failing check's traceback goes to ``--log``. Checks: fp16 and bf16 (where the GPU has it
natively) with resume; deterministic kernels resume bit for bit; TTQ with delayed quantization; an out-of-memory
failure on a shared GPU retried once, then recorded, with the memory handed back; four processes sharing the GPU
at a quarter each; a compiled run across a quantization ramp (inductor); AutoAugment in CPU workers against
inline; the loop's images/s (clock read after a synchronize) and the step benchmark on the GPU; and, where Ray
is installed, a four-trial fractional sweep and (two GPUs or more) a 2-rank DDP sweep with TTQ.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainables.config import TrainConfig  # noqa: E402
from trainables.loop import run  # noqa: E402

CHECK_SECONDS = 180  # one check's limit; the whole run stays under gpu_check.sh's 8 minutes


def _cfg(subset: int = 5000, arch: str = "tinynet", data: dict | None = None, model: dict | None = None,
         **train) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 256, "lr": 0.05, "seed": 0}
    base.update(train)
    return TrainConfig.model_validate({"data": {"subset": subset, **(data or {})},
                                       "model": {"arch": arch, **(model or {})}, "train": base})


def _resumed(cfg_of, tmp: Path, tag: str) -> tuple[dict, dict]:
    """A straight 3-epoch run, and the same run resumed from its epoch-2 checkpoint."""
    kept: dict[int, Path] = {}

    def keep(metrics, ckpt):
        if ckpt:
            kept[metrics["epoch"]] = Path(shutil.copytree(ckpt, tmp / f"{tag}-e{metrics['epoch']}"))

    straight = run(cfg_of(3), keep)
    return straight, run(cfg_of(3), None, resume_from=kept[2])


def check_precision(precision: str, tmp: Path) -> tuple[bool, str]:
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return None, "this GPU has no native bf16"
    straight, resumed = _resumed(lambda e: _cfg(epochs=e, precision=precision), tmp, precision)
    close = abs(resumed["val_acc"] - straight["val_acc"]) <= 0.02  # bit for bit only with train.deterministic
    return (close and resumed["nonfinite_steps"] == 0,
            f"val_acc straight {straight['val_acc']:.4f} resumed {resumed['val_acc']:.4f}, nonfinite steps "
            f"{resumed['nonfinite_steps']}, {resumed['images_per_sec']:.0f} images/s")


def check_deterministic(tmp: Path) -> tuple[bool, str]:
    straight, resumed = _resumed(lambda e: _cfg(epochs=e, deterministic=True), tmp, "det")
    again = run(_cfg(epochs=3, deterministic=True), None)
    fast = [run(_cfg(epochs=3), None)["val_loss"] for _ in range(2)]
    same = straight["val_loss"] == resumed["val_loss"] == again["val_loss"]
    return same, (f"val_loss straight {straight['val_loss']!r}, again {again['val_loss']!r}, resumed "
                  f"{resumed['val_loss']!r}; without deterministic two runs gave {fast[0]!r} and {fast[1]!r}")


def check_ttq_delayed(tmp: Path) -> tuple[bool, str]:
    out = run(_cfg(epochs=3, quantize_from_epoch=2, model={"quantizer": "ttq"}), None)
    ok = out["quant_mix"] == 1.0 and out["val_acc"] > 0.1
    return ok, f"quant_mix {out['quant_mix']}, val_acc {out['val_acc']:.4f}, zero frac {out['ternary_zero_frac']:.3f}"


def _setup(share: float):
    from trainables.setup import TrialSetup

    return TrialSetup(base={}, mode="function", workers=1, use_gpu=True, cpus_per_worker=1, gpus_per_worker=share,
                      storage_path=".", trial_dir_root=".", max_failures=0, keep_checkpoints=1,
                      placement_strategy="PACK", objectives=(("val_acc", "max"),))


def check_oom_retry(tmp: Path) -> tuple[bool, str]:
    """A trial on 2% of the GPU trains a batch that cannot fit: retried once, then an OutOfMemoryError."""
    from trainables.attempt import run_attempt
    from trainables.entry import trial_device
    from trainables.failures import OutOfMemoryError

    setup = _setup(0.02)
    device = trial_device(setup, train_worker=False)
    sent: list[dict] = []
    cfg = _cfg(arch="resnet18", epochs=1, batch_size=2048, precision="fp32")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            run_attempt(cfg, setup, lambda m, c: sent.append(m), [], 0, device)
            return False, "the batch fitted: no out-of-memory error to retry"
        except OutOfMemoryError as exc:
            reason = exc.reason
    retries = [str(w.message) for w in seen if "retrying once" in str(w.message)]
    gc.collect()
    left = torch.cuda.memory_allocated(device)
    ok = len(retries) == 1 and bool(sent) and sent[-1].get("failed") == reason and left < 64 << 20
    return ok, (f"{len(retries)} retry, recorded {sent[-1].get('failed', '?')[:120]!r}, "
                f"{left / 2**20:.0f} MiB still allocated")


def share_worker(share: float) -> dict:
    """One of the processes of ``check_shared``: trains at a ``share`` of the GPU, reports its peak, then asks
    for more than its share (the cap must refuse it)."""
    from trainables.entry import trial_device

    device = trial_device(_setup(share), train_worker=False)
    out = run(_cfg(epochs=2, arch="resnet20"), None, device=device)
    total = torch.cuda.get_device_properties(device).total_memory
    peak = torch.cuda.max_memory_reserved(device) / total
    try:
        torch.empty(int(total * (share + 0.05)), dtype=torch.uint8, device=device)
        capped = False
    except torch.OutOfMemoryError:
        capped = True
    return {"peak": peak, "capped": capped, "val_acc": out["val_acc"], "ips": out["images_per_sec"]}


def check_shared(tmp: Path) -> tuple[bool, str]:
    procs = [subprocess.Popen([sys.executable, __file__, "--share", "0.25"], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=CHECK_SECONDS - 30)[0] for p in procs]
    rows = [json.loads(o.strip().splitlines()[-1]) for o, p in zip(outs, procs) if p.returncode == 0]
    ok = len(rows) == 4 and all(r["peak"] <= 0.25 and r["capped"] for r in rows)
    peaks = ", ".join(f"{r['peak']:.3f}" for r in rows)
    rates = ", ".join(f"{r['ips']:.0f}" for r in rows)
    return ok, (f"{len(rows)}/4 finished; peak reserved {peaks} of the GPU (cap 0.25); asking for 0.30 refused in "
                f"{sum(r['capped'] for r in rows)}/{len(rows)}; {rates} images/s")



def check_compile(tmp: Path) -> tuple[bool, str]:
    """Every graph is compiled in epoch 1 (training, evaluation's eval mode, its last batch): none as the mix moves."""
    from torch._inductor.compile_fx import compile_fx

    compiles, after_epoch = [], []

    def counting(gm, example_inputs):
        compiles.append(1)
        return compile_fx(gm, example_inputs)

    t0 = time.time()
    out = run(_cfg(epochs=4, compile=True, quantize_from_epoch=2, ramp_epochs=2),
              lambda metrics, ckpt: after_epoch.append((metrics["quant_mix"], len(compiles))),
              compile_backend=counting)
    once = after_epoch[0][1] > 0 and after_epoch[-1][1] == after_epoch[0][1]
    return (once and out["quant_mix"] == 1.0,
            f"{time.time() - t0:.0f} s; (mix, graphs compiled so far) by epoch {after_epoch}; "
            f"{out['images_per_sec']:.0f} images/s in the last epoch")


def check_augment_workers(tmp: Path) -> tuple[bool, str]:
    rates = {workers: run(_cfg(epochs=1, augment="autoaugment", data={"augment_workers": workers}),
                          None)["images_per_sec"] for workers in ("auto", 0)}
    return rates["auto"] > 0, f"{rates['auto']:.0f} images/s with CPU workers (auto), {rates[0]:.0f} inline"


def check_throughput(tmp: Path) -> tuple[bool, str]:
    rows = []
    for arch in ("tinynet", "resnet20", "resnet18"):
        out = run(_cfg(subset=10000, arch=arch, epochs=2, batch_size=512), None)
        rows.append(f"{arch} {out['images_per_sec']:.0f}")
    bench = subprocess.run([sys.executable, str(REPO / "benchmarks" / "step_throughput.py"), "--device", "cuda",
                            "--batch-size", "256", "--steps", "20"], capture_output=True, text=True, timeout=150)
    print(bench.stdout.rstrip())  # echoed under the check's line
    print(bench.stderr[-2000:], file=sys.stderr)
    return bench.returncode == 0, f"loop images/s (epoch 2, batch 512): {', '.join(rows)}; step benchmark above"


def check_sweep(name: str, resources: str, model: str, tmp: Path) -> tuple[bool, str]:
    try:
        import ray  # noqa: F401 - only to know whether the sweep can run here
    except ImportError:
        return None, "Ray is not installed here"
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"name: gpu-check-{name}\nmetric: {{name: val_acc, mode: max}}\n"
                    f"data: {{subset: 5000}}\nmodel: {model}\n"
                    "train: {epochs: 2, batch_size: 256, quantize_from_epoch: 2}\n"
                    "search:\n  lr: {loguniform: [0.01, 0.2]}\n"
                    "searcher: {algorithm: random, seed: 0, num_samples: 4}\n"
                    f"scheduler: {{algorithm: fifo}}\nresources: {resources}\n"
                    f"storage: {{path: {tmp}/results}}\ntracking: {{uri: sqlite:///{tmp}/mlflow.db}}\n")
    r = subprocess.run([sys.executable, "-m", "ternsearch.cli", "sweep", str(spec), "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=CHECK_SECONDS - 20)
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return r.returncode == 0, f"exit {r.returncode}: {tail[:200]}"


def _ddp(tmp: Path):
    if torch.cuda.device_count() < 2:
        return None, "needs 2 GPUs"
    return check_sweep("ddp-ttq", "{workers_per_trial: 2, gpus_per_worker: 1, cpus_per_worker: 1}",
                       "{arch: tinynet, quantizer: ttq}", tmp)


CHECKS = {
    "fp16 + resume": lambda tmp: check_precision("fp16", tmp),
    "bf16 + resume": lambda tmp: check_precision("bf16", tmp),
    "out of memory on a shared GPU: one retry, then recorded": check_oom_retry,
    "four processes at 0.25 of the GPU": check_shared,
    "ttq, quantized from epoch 2": check_ttq_delayed,
    "deterministic resume is bit for bit": check_deterministic,
    "compile across a ramp (inductor)": check_compile,
    "images/s": check_throughput,
    "autoaugment in CPU workers": check_augment_workers,
    "sweep, 4 fractional trials": lambda tmp: check_sweep(
        "fractional", "{workers_per_trial: 1, gpus_per_worker: 0.25, cpus_per_worker: 1}", "{arch: tinynet}", tmp),
    "sweep, 2-rank DDP with TTQ": _ddp,
}


def one(name: str) -> int:
    """Run check ``name`` in this process; print its result as the last line (JSON)."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
        try:
            ok, detail = CHECKS[name](Path(d))
        except Exception as exc:  # noqa: BLE001 - the check failed: its traceback for the log, one line here
            traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0]
            ok, detail = False, f"{type(exc).__name__}: {first[:300]}"
    print(json.dumps({"ok": ok, "detail": detail}), flush=True)
    return 0


def _run_check(name: str, log) -> tuple[dict, list[str]]:
    """Check ``name`` in a process of its own: its result, and the lines it printed before it."""
    try:
        r = subprocess.run([sys.executable, __file__, "--one", name], stdout=subprocess.PIPE, stderr=log,
                           text=True, timeout=CHECK_SECONDS, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": f"still running after {CHECK_SECONDS} s"}, []
    lines = r.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), lines[:-1]
    except (IndexError, json.JSONDecodeError):
        return {"ok": False, "detail": f"exit {r.returncode} and no result"}, lines[-5:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", help="where each check's output and tracebacks go (default: none)")
    ap.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="CHECK", help="these checks alone")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--share", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.share:
        print(json.dumps(share_worker(a.share)), flush=True)
        return 0
    if a.one:
        return one(a.one)
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (benchmarks/gpu_check.py checks the GPU paths on a GPU machine)")
        return 0
    print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, native bf16 {torch.cuda.is_bf16_supported(including_emulation=False)}", flush=True)
    log = open(a.log, "a") if a.log else subprocess.DEVNULL  # noqa: SIM115 - closed at exit
    passed = failed = 0
    for name in a.only or CHECKS:
        t0 = time.time()
        last, extra = _run_check(name, log)
        word = {True: "ok  ", False: "FAIL", None: "skip"}[last["ok"]]
        passed, failed = passed + (last["ok"] is True), failed + (last["ok"] is False)
        print(f"{word} {name} ({time.time() - t0:.0f} s): {last['detail']}", flush=True)
        for line in extra:
            print(f"     {line}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
