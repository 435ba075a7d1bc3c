"""The ONNX export (``trainables.onnx_export``, ``ternsearch export --onnx``) is the same model: on real CIFAR-10 test
images ONNX Runtime's top-1 equals PyTorch's quantized eval model's, except where PyTorch's top two logits are
within ``TIE`` of each other (counted and printed); every ternary layer is int8 codes in {-1, 0, +1} behind
DequantizeLinear, the full-precision layers are float32; the graph takes uint8 ``N x 3 x 32 x 32`` with a dynamic
batch. CI uses the first 2,000 test images to bound the time; ``benchmarks/deploy.py`` checks all 10,000."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.augment import normalize
from trainables.checkpoint import save_checkpoint
from trainables.config import TrainConfig
from trainables.data import load_cifar10
from trainables.models import build_model
from trainables.onnx_export import (INPUT, OnnxExportError, export_onnx, onnx_models, ort_can_run, weight_layout)
from trainables.ternary import ternary_modules

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

N_TEST = 2000  # CI: the first 2,000 of the 10,000 test images
STEPS = 10  # SGD steps on real training images (weights and TTQ scales move), then BN statistics measured on them
TIE = 1e-4  # |top1 - top2| of PyTorch's logits under which ONNX Runtime may pick the other class (float rounding)
_CACHE: dict = {}


def trained(arch: str, quantizer: str) -> tuple[torch.nn.Module, TrainConfig]:
    """``arch`` ternarized with ``quantizer`` after STEPS steps of SGD (batch 64) on real images, its BatchNorm
    statistics then averaged over 512 more (train-mode forward passes); eval mode. Hundreds of steps would take
    minutes for resnet20 on 2 cores: the quantized path, folded BN and TTQ's moved scales are what is tested."""
    if (arch, quantizer) not in _CACHE:
        cfg = TrainConfig.model_validate({"model": {"arch": arch, "quantizer": quantizer}})
        x, y = load_cifar10(None, train=True)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        for i in range(STEPS):
            batch = slice(i * 64, (i + 1) * 64)
            loss = F.cross_entropy(model(normalize(x[batch])), y[batch])
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
        _CACHE[arch, quantizer] = model.eval(), cfg
    return _CACHE[arch, quantizer]


def session(path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(sess, images: torch.Tensor, batch: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(None, {INPUT: images[i:i + batch].numpy()})[0]
                           for i in range(0, len(images), batch)])


@torch.no_grad()
def torch_logits(model, images: torch.Tensor, batch: int = 500) -> np.ndarray:
    return torch.cat([model(normalize(images[i:i + batch])) for i in range(0, len(images), batch)]).numpy()


def agreement(ref: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    """(images whose top-1 differs, of those how many are not a PyTorch near-tie)."""
    differ = np.flatnonzero(ref.argmax(1) != got.argmax(1))
    top2 = np.sort(ref[differ], axis=1)[:, -2:]
    return len(differ), int(((top2[:, 1] - top2[:, 0]) >= TIE).sum())


def assert_ternary_layout(proto, model) -> None:
    """Every ternary layer: int8 (or INT2) codes in {-1, 0, 1} behind DequantizeLinear, the zeros where the model's
    are; every other Conv/Linear: float32; nothing else feeds a Conv/Gemm weight."""
    layout = weight_layout(proto)
    modules = dict(model.named_modules())
    ternary = {f"net.{name}.weight": m for name, m in ternary_modules(model)}
    full = {f"net.{name}.weight" for name, m in modules.items() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
            and f"net.{name}.weight" not in ternary}
    assert {w for w, v in layout.items() if v["kind"] == "qdq"} == set(ternary)
    assert {w for w, v in layout.items() if v["kind"] == "float"} == full and full  # the stem and the head
    for wname, module in ternary.items():
        codes = layout[wname]["codes"].astype(np.int64)
        assert layout[wname]["dtype"] in ("INT8", "INT2")
        assert set(np.unique(codes)) <= {-1, 0, 1}
        with torch.no_grad():
            weight = module.quantized_weight().numpy()
        assert codes.shape == weight.shape
        assert np.array_equal(codes != 0, weight != 0), wname
    for wname in full:
        assert layout[wname]["dtype"] == "FLOAT"
    kept = {t.name: t for t in proto.graph.initializer}
    assert not any(w in kept for w in ternary), "a float copy of a ternary weight is still stored"


@pytest.mark.parametrize("arch", ["tinynet", pytest.param("resnet20", marks=pytest.mark.slow)])  # resnet20: ~11-23 s
@pytest.mark.parametrize("quantizer", ["twn", "ttq"])
def test_onnx_runtime_predicts_what_pytorch_does(tmp_path, data_root, arch, quantizer):
    model, cfg = trained(arch, quantizer)
    path = export_onnx(model, tmp_path / "m.onnx", "int8", cfg.model_dump(mode="json"))
    proto = onnx.load(str(path))
    assert_ternary_layout(proto, model)
    images, labels = load_cifar10(str(data_root), train=False)
    images, labels = images[:N_TEST], labels[:N_TEST]
    ref, got = torch_logits(model, images), ort_logits(session(path), images)
    differ, real = agreement(ref, got)
    acc = float((ref.argmax(1) == labels.numpy()).mean())
    print(f"{arch}/{quantizer}: {N_TEST} test images, top-1 differs on {differ} ({real} outside a {TIE} tie), "
          f"max |logit diff| {np.abs(ref - got).max():.2e}, PyTorch accuracy {acc:.3f}")
    assert real == 0
    assert np.abs(ref - got).max() < 1e-3 * max(1.0, np.abs(ref).max())
    assert model.training is False and all(m.quantize for _, m in ternary_modules(model))  # the model is untouched


def test_the_graph_takes_uint8_images_with_any_batch(tmp_path):
    model, _ = trained("tinynet", "twn")
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    [inp], [out] = proto.graph.input, proto.graph.output
    assert inp.name == INPUT and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.shape.dim[0].dim_param and out.type.tensor_type.shape.dim[1].dim_value == 10
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ternsearch.weights"] == "int8" and json.loads(meta["ternsearch.ternary_layers"])
    sess = session(path)
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    for n in (1, 7):
        assert np.allclose(sess.run(None, {INPUT: x[:n].numpy()})[0], torch_logits(model, x[:n]), atol=1e-4)
    with pytest.raises(Exception, match="(?i)type"):  # float input: refused, the contract is uint8
        sess.run(None, {INPUT: x.float().numpy()})


def test_int2_codes_are_valid_onnx_and_onnx_runtime_says_whether_it_runs_them(tmp_path):
    if not hasattr(onnx.TensorProto, "INT2"):
        pytest.skip(f"onnx {onnx.__version__} has no INT2")
    model, _ = trained("tinynet", "ttq")
    graphs = onnx_models(model, ("int8", "int2"))
    int2 = graphs["int2"]
    onnx.checker.check_model(int2, full_check=True)
    assert max(o.version for o in int2.opset_import if o.domain in ("", "ai.onnx")) >= 25
    assert_ternary_layout(int2, model)
    assert {v["dtype"] for v in weight_layout(int2).values() if v["kind"] == "qdq"} == {"INT2"}
    paths = {}
    for kind, proto in graphs.items():
        paths[kind] = tmp_path / f"{kind}.onnx"
        onnx.save_model(proto, str(paths[kind]))
    assert paths["int2"].stat().st_size < 0.6 * paths["int8"].stat().st_size
    verdict = ort_can_run(paths["int2"])
    print(f"onnxruntime {ort.__version__} and INT2 codes: {verdict or 'runs them'}")
    if verdict is None:
        x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
        assert np.array_equal(ort_logits(session(paths["int2"]), x), ort_logits(session(paths["int8"]), x))
    else:
        assert verdict.startswith(f"onnxruntime {ort.__version__} cannot run it yet")


def test_a_weight_that_is_not_ternary_is_refused(tmp_path):
    cfg = TrainConfig.model_validate({"model": {"arch": "tinynet"}})
    model = build_model(cfg.model).eval()
    for _, m in ternary_modules(model):
        m.mix.fill_(0.5)  # half-way through a quantization ramp: not ternary yet
    with pytest.raises(OnnxExportError, match="not ternary"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _results_with_checkpoint(tmp_path):
    from helpers_report import MIXED, write_hand_results

    model, cfg = trained("tinynet", "twn")
    results = write_hand_results(tmp_path / "results" / "hand", MIXED)
    meta = json.loads((results / "sweep.json").read_text())
    meta["base"] = cfg.model_dump(mode="json")
    (results / "sweep.json").write_text(json.dumps(meta))
    ckpt = save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict()}, {"config": cfg.model_dump(mode="json")})
    trials = json.loads((results / "trials.json").read_text())
    for trial in trials.values():
        trial["checkpoint"] = str(ckpt)
    (results / "trials.json").write_text(json.dumps(trials))
    return results, model


def test_export_onnx_from_a_sweeps_results(tmp_path, monkeypatch, capsys):
    from ternsearch.cli import main

    results, model = _results_with_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(results), "-o", "best.yaml", "--onnx", "best.onnx"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "best.yaml" and out[1].startswith("best.onnx: ") and "INT8 codes" in out[1], out
    assert out[1].endswith(f"onnxruntime {ort.__version__} runs it")
    assert_ternary_layout(onnx.load("best.onnx"), model)
    # Refused in one line before anything is written: the flag alone, the -o file, the --packed file.
    for argv, says in ((["--onnx-int2"], "give --onnx FILE too"), (["--onnx", "same.yaml"], "also the --output file"),
                       (["--packed", "m.x", "--onnx", "m.x"], "also the --packed file")):
        assert main(["export", str(results), "-o", "same.yaml", *argv]) == 1
        assert says in capsys.readouterr().err
        assert not (tmp_path / "same.yaml").exists()
