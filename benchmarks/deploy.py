"""The deployed model (`ternsearch export --onnx`): file sizes, ONNX Runtime CPU latency and throughput of the fp32
graph against the QDQ graph, and agreement of ONNX Runtime with PyTorch on real CIFAR-10 test images.

Every model of the registry, TWN and TTQ, takes a few SGD steps on real training images and then has its BatchNorm
statistics averaged over 512 more (a trained model would take hours here; the quantized path, folded BNs and TTQ's
moved scales are what is measured). Each is exported once (``trainables.onnx_export.onnx_models``) as

- fp32: the reference graph, ternary weights as float32 ``a * T``;
- QDQ: int8 codes in {-1, 0, +1} -> DequantizeLinear -> Conv/Gemm (what ``--onnx`` writes);
- INT2: the same codes as INT2, opset 25 (``--onnx-int2``);

and packed as ``.tern`` (``trainables.packed``). Latency: batch 1 and batch 256 on ONNX Runtime's CPU provider
with ``--threads`` intra-op threads; the graphs are interleaved round by round and the fastest round of each is
kept (other processes only ever add time). "QDQ, DQ folded" is the same QDQ file loaded with the session option
``session.disable_quant_qdq=1``, under which ONNX Runtime constant-folds the DequantizeLinear of the weights at load.

    TERNSEARCH_DATA=/path/to/data python benchmarks/deploy.py
    TERNSEARCH_DATA=/path/to/data python benchmarks/deploy.py --archs tinynet resnet20 --images 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from trainables.augment import normalize  # noqa: E402
from trainables.config import TrainConfig  # noqa: E402
from trainables.data import load_cifar10  # noqa: E402
from trainables.models import build_model, model_names  # noqa: E402
from trainables.onnx_export import INPUT, onnx_models, ort_can_run  # noqa: E402
from trainables.packed import save_packed  # noqa: E402

TIE = 1e-4  # as tests/test_onnx_export.py: a different top-1 where PyTorch's top two logits are this close is a tie
# Test images checked per model: resnet18 and mobilenetv2 take ~10 ms an image in PyTorch on 2 cores (and again in
# ONNX Runtime), so all 10,000 for both quantizers would take ~15 minutes; they get --heavy-images.
HEAVY = ("resnet18", "mobilenetv2")


def prepared(arch: str, quantizer: str, steps: int) -> tuple[torch.nn.Module, TrainConfig]:
    """``arch`` ternarized with ``quantizer``, ``steps`` SGD steps (batch 64) on real images, BN statistics averaged
    over 512 more; eval mode."""
    cfg = TrainConfig.model_validate({"model": {"arch": arch, "quantizer": quantizer}})
    x, y = load_cifar10(None, train=True)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for i in range(steps):
        loss = F.cross_entropy(model(normalize(x[i * 64:(i + 1) * 64])), y[i * 64:(i + 1) * 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    kept = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for i in range(4):
            model(normalize(x[10_000 + i * 128:10_000 + (i + 1) * 128]))
    for bn, momentum in zip(bns, kept):
        bn.momentum = momentum
    return model.eval(), cfg


def write_all(model, cfg, folder: Path) -> dict[str, Path]:
    """fp32, QDQ and INT2 ONNX files and the .tern file of ``model``; their paths by graph name."""
    graphs = onnx_models(model, ("float", "int8", "int2"), cfg.model_dump(mode="json"))
    folder.mkdir(parents=True)
    paths = {}
    for name, kind in (("fp32", "float"), ("QDQ", "int8"), ("INT2", "int2")):
        paths[name] = folder / f"{kind}.onnx"
        onnx.save_model(graphs[kind], str(paths[name]))
    paths["tern"] = save_packed(model, cfg, folder / "m.tern")
    return paths


def session(path: Path, threads: int, fold_dq: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if fold_dq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], threads: int, batch: int, rounds: int, runs: int) -> dict[str, float]:
    """Seconds per run (the fastest round's mean of ``runs`` runs) for each graph, the graphs interleaved."""
    sessions = {"fp32": session(paths["fp32"], threads), "QDQ": session(paths["QDQ"], threads),
                "QDQ, DQ folded": session(paths["QDQ"], threads, fold_dq=True)}
    if ort_can_run(paths["INT2"]) is None:
        sessions["INT2"] = session(paths["INT2"], threads)
    x = {INPUT: np.random.default_rng(0).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8)}
    for s in sessions.values():
        s.run(None, x)  # warm-up: memory arenas, prepacked weights
    best = {name: float("inf") for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            for _ in range(runs):
                s.run(None, x)
            best[name] = min(best[name], (time.perf_counter() - start) / runs)
    return best


def agreement(model, path: Path, images: torch.Tensor, labels: torch.Tensor, threads: int) -> dict[str, float]:
    sess = session(path, threads)
    ref, got = [], []
    with torch.no_grad():
        for i in range(0, len(images), 500):
            ref.append(model(normalize(images[i:i + 500])).numpy())
            got.append(sess.run(None, {INPUT: images[i:i + 500].numpy()})[0])
    ref, got = np.concatenate(ref), np.concatenate(got)
    differ = np.flatnonzero(ref.argmax(1) != got.argmax(1))
    top2 = np.sort(ref[differ], axis=1)[:, -2:]
    return {"images": len(images), "differ": len(differ), "real": int(((top2[:, 1] - top2[:, 0]) >= TIE).sum()),
            "max_diff": float(np.abs(ref - got).max()), "acc": float((ref.argmax(1) == labels.numpy()).mean())}


def print_sizes(rows: list[tuple[str, str, dict[str, Path]]]) -> None:
    print(f"{'model':12s} {'quant':5s} {'fp32 ONNX':>10s} {'QDQ ONNX':>10s} {'INT2 ONNX':>10s} {'.tern':>8s}  "
          "fp32/QDQ  fp32/INT2  INT2/.tern")
    for arch, quantizer, p in rows:
        mb = {k: v.stat().st_size / 1e6 for k, v in p.items()}
        print(f"{arch:12s} {quantizer:5s} {mb['fp32']:7.2f} MB {mb['QDQ']:7.2f} MB {mb['INT2']:7.2f} MB "
              f"{mb['tern']:5.2f} MB  {mb['fp32'] / mb['QDQ']:7.1f}x  {mb['fp32'] / mb['INT2']:8.1f}x  "
              f"{mb['INT2'] / mb['tern']:9.2f}x")


def print_latency(timing: dict[str, dict[int, dict[str, float]]]) -> None:
    names = list(next(iter(next(iter(timing.values())).values())))
    print(f"{'model':9s} {'batch':>5s}" + "".join(f"  {name:>27s}" for name in names))
    for arch, results in timing.items():
        for batch, best in results.items():
            cells = "".join(f"  {sec * 1e3:8.2f} ms {batch / sec:6.0f}/s ({sec / best['fp32']:.2f}x)"
                            for sec in best.values())
            print(f"{arch:9s} {batch:5d}{cells}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=model_names())
    ap.add_argument("--latency-archs", nargs="+", default=["resnet20", "resnet18"])
    ap.add_argument("--images", type=int, default=10_000, help="test images checked per model")
    ap.add_argument("--heavy-images", type=int, default=2_000, help=f"the same for {', '.join(HEAVY)}")
    ap.add_argument("--steps", type=int, default=5, help="SGD steps before export")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per batch size")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    started = time.time()
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__} (CPU provider), "
          f"{a.threads} threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    test_x, test_y = load_cifar10(None, train=False)
    sizes, agree, timing = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            for quantizer in ("twn", "ttq"):
                model, cfg = prepared(arch, quantizer, a.steps)
                paths = write_all(model, cfg, Path(tmp) / f"{arch}-{quantizer}")
                sizes.append((arch, quantizer, paths))
                if quantizer == "twn" and arch in a.latency_archs:
                    timing[arch] = {1: latency(paths, a.threads, 1, a.rounds, 20),
                                    256: latency(paths, a.threads, 256, a.rounds, 1)}
                n = a.heavy_images if arch in HEAVY else a.images
                agree.append((arch, quantizer, agreement(model, paths["QDQ"], test_x[:n], test_y[:n], a.threads)))
                print(f"{arch}/{quantizer}: done at {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        int2_verdict = ort_can_run(sizes[0][2]["INT2"])
        print("\nfile sizes (ternary layers: QDQ 1 byte a weight, INT2 and .tern 2 bits; stem, head and BN float32):")
        print_sizes(sizes)
    print(f"\nONNX Runtime latency, TWN, fastest of {a.rounds} interleaved rounds (x: time relative to the fp32 graph);"
          f" INT2: {int2_verdict or 'onnxruntime runs it'}")
    print_latency(timing)
    print(f"\nagreement, ONNX Runtime (QDQ graph) vs PyTorch's quantized eval model, first N test images "
          f"(a tie: PyTorch's top two logits within {TIE}):")
    for arch, quantizer, r in agree:
        print(f"{arch:12s} {quantizer:4s} N={r['images']:5d}  top-1 differs on {r['differ']:2d} "
              f"({r['real']} outside a tie)  max |logit diff| {r['max_diff']:.1e}  PyTorch acc {r['acc']:.3f}")
    print(f"\n{time.time() - started:.0f} s; load average at the end: {os.getloadavg()[0]:.1f}")
    return 0 if all(r["real"] == 0 for _, _, r in agree) else 1


if __name__ == "__main__":
    sys.exit(main())
