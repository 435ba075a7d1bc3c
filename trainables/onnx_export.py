"""The ternary model as ONNX, for ONNX Runtime and other deployment stacks.

The graph takes ``uint8`` images ``N x 3 x 32 x 32`` (RGB, 0-255, the batch axis dynamic), casts them and applies
the CIFAR-10 normalization of training (``x * 1/std - mean/std``, :func:`trainables.augment.normalize`'s numbers)
inside, and returns float32 logits ``N x 10``. Each ternary layer's weight is an ``int8`` initializer of codes in
{-1, 0, +1} feeding ``DequantizeLinear(codes, scale, zero_point 0)`` whose output is the Conv/Gemm weight (the
QDQ weight layout); full-precision layers (``full_precision_layers``: stem, head) keep float32 weights.

How it is made, and why this way: ``torch.onnx.export`` (the dynamo exporter, torch 2.14's default) exports an
eval-mode copy of the model whose ternary layers hold their quantized weights ``a * T`` as plain float weights;
then the ONNX graph is post-processed with the ``onnx`` helper API: each ternary weight initializer is replaced by
its codes, scales and the DequantizeLinear nodes. The alternative, swapping the ternary layers for modules whose
forward calls a dequantize op, depends on how torch's quantized-decomposed ops are registered and translated (and
the exporter's optimizer may fold a dequantize of a constant back into a float tensor); plain float weights are
what every exporter version handles. The exporter's optimizer folds a BatchNorm that directly follows a conv into
that conv, so a ternary weight usually arrives scaled per output channel (``a * gamma_c / sigma_c``): given the
layer's codes from the PyTorch model (:func:`ternary_codes`), the post-processing reads the scales of each output
channel back from the exported float weight and refuses a weight they do not rebuild exactly (nothing is rounded).
BNs the exporter cannot fold (after a max-pool in airbench/tinynet) stay BatchNormalization nodes in eval mode.

A TWN layer has one magnitude a channel: one DequantizeLinear (per tensor when all channels share it, else per
channel, axis 0), its scales made positive by negating a channel's codes where the folded BN scale is negative. A
TTQ layer has two values (``+Wp`` and ``-Wn``, each times the folded BN scale, and training may move either across
zero): codes +1 and -1 mark the larger and the smaller, and the weight is ``Where(DQ(codes, 1) > 0, DQ(codes,
s_pos), DQ(codes, s_neg))``, three DequantizeLinear of the same int8 codes.

``int2=True`` stores the codes as ``INT2`` (opset 25, 4 codes a byte; DequantizeLinear accepts int2 there). The
file is valid ONNX (``onnx.checker`` full check); whether ONNX Runtime runs it is asked, not assumed
(:func:`ort_can_run`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from trainables.augment import _scale_shift
from trainables.errors import TrainablesError
from trainables.ternary import ternary_modules

__all__ = ["FORMAT", "INPUT", "OnnxExportError", "deploy_copy", "export_float", "export_onnx", "onnx_models",
           "ort_can_run", "quantize_ternary", "ternary_codes", "weight_layout"]

FORMAT = "ternsearch-onnx-v1"
INPUT = "images"  # uint8 N x 3 x 32 x 32
OUTPUT = "logits"  # float32 N x classes
PREFIX = "net."  # the exported model's attribute: its initializers are named net.<module>.weight
INT2_OPSET = 25


class OnnxExportError(TrainablesError, ValueError):
    """A model that cannot be exported as a ternary QDQ graph (a ternary layer's weight is not ternary)."""


class _Deploy(nn.Module):
    """uint8 images -> logits: the cast and normalization of training, then the model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        scale, shift = _scale_shift(torch.device("cpu"))
        self.register_buffer("scale", scale.unsqueeze(0))
        self.register_buffer("shift", shift.unsqueeze(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(torch.float32) * self.scale + self.shift)


@torch.no_grad()
def deploy_copy(model: nn.Module) -> nn.Module:
    """An eval-mode float32 CPU copy of ``model`` taking uint8 images, its ternary layers holding ``a * T`` as
    their weights (``quantize`` off). ``model`` itself is not changed."""
    net = copy.deepcopy(model).cpu().float().eval()
    for _, module in ternary_modules(net):
        module.weight.data = module.quantized_weight().detach().contiguous()
        module.quantize = False
    for p in net.parameters():  # contiguous: a channels_last model exports its weights in row-major order
        p.data = p.data.contiguous()
        p.requires_grad_(False)
    return _Deploy(net).eval()


def export_float(model: nn.Module):
    """The float ONNX graph (``onnx.ModelProto``) of :func:`deploy_copy`'s model: ternary weights as float32."""
    deploy = deploy_copy(model)
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    # The exporter prints its progress on stdout; a CLI's output is one line per file written.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(deploy, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"images": {0: batch}}, optimize=True, verbose=False)
    return program.model_proto


def _weight_consumers(graph) -> dict[str, tuple[Any, int]]:
    """initializer name -> (the Conv/Gemm/MatMul node taking it as weight, its output-channel axis)."""
    out = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        axis = 0
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "MatMul":
            axis = 1
        out[node.input[1]] = (node, axis)
    return out


@torch.no_grad()
def ternary_codes(model: nn.Module) -> dict[str, np.ndarray]:
    """Each ternary layer's codes (int8, its weight's shape): +1 where its weight is the larger of its two nonzero
    values, -1 the smaller, 0 zero (a layer with one nonzero value: that value's sign). The values themselves may
    have any signs (TTQ's learned scales can cross zero)."""
    out = {}
    for name, module in ternary_modules(model):
        q = module.quantized_weight().detach().float().cpu()
        values = q[q != 0].unique().flip(0)  # descending
        if values.numel() > 2:
            raise OnnxExportError(f"layer {name}: its weights take {values.numel()} nonzero values, not at most 2: "
                                  "not ternary (is quantize off, or mix below 1?)")
        codes = torch.zeros(q.shape, dtype=torch.int8)
        if values.numel() == 2:
            codes[q == values[0]], codes[q == values[1]] = 1, -1
        elif values.numel() == 1:
            codes[q == values[0]] = 1 if values[0] > 0 else -1
        out[name] = codes.numpy()
    return out


def _scales(name: str, w: np.ndarray, codes: np.ndarray, axis: int):
    """(codes, scale of code +1, magnitude of code -1) per output channel (``axis``) of the exported weight ``w``:
    ``w == s_pos * [codes == 1] - s_neg * [codes == -1]`` exactly, or OnnxExportError. A BN folded in scales each
    channel; a channel whose two scales come out negative gets its codes negated instead."""
    if codes.shape != w.shape and codes.ndim == 2 and codes.T.shape == w.shape:
        codes = codes.T  # a MatMul / Gemm(transB=0) weight: [in, out]
    if codes.shape != w.shape:
        raise OnnxExportError(f"layer {name}: exported weight has shape {list(w.shape)}, the model's "
                              f"{list(codes.shape)}")
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    crow = np.moveaxis(codes, axis, 0).reshape(w.shape[axis], -1)
    first = lambda mask: np.where(mask.any(1), rows[np.arange(len(rows)), mask.argmax(1)], np.nan)  # noqa: E731
    s_pos, s_neg = first(crow == 1), -first(crow == -1)
    flip = ~(s_pos >= 0) & ~(s_neg >= 0) & ~(np.isnan(s_pos) & np.isnan(s_neg))  # present ones all negative
    s_pos[flip], s_neg[flip] = -s_neg[flip], -s_pos[flip]
    crow = np.where(flip[:, None], -crow, crow)
    s_pos, s_neg = np.where(np.isnan(s_pos), s_neg, s_pos), np.where(np.isnan(s_neg), s_pos, s_neg)
    s_pos, s_neg = (np.nan_to_num(s, nan=1.0).astype(np.float32) for s in (s_pos, s_neg))  # all-zero: any scale
    rebuilt = s_pos[:, None] * (crow == 1) - s_neg[:, None] * (crow == -1)
    if not np.array_equal(rebuilt.astype(np.float32), rows):
        bad = int(np.flatnonzero((rebuilt != rows).any(1))[0])
        raise OnnxExportError(f"layer {name}: output channel {bad} of its exported weight is not one value per "
                              "code: not ternary (is quantize off, or mix below 1?)")
    codes = np.moveaxis(crow.reshape(np.moveaxis(codes, axis, 0).shape), 0, axis).astype(np.int8)
    return codes, s_pos, s_neg


def _dq(codes_name: str, scale, out: str, axis: int, int2: bool, tag: str):
    """One DequantizeLinear (per tensor when ``scale`` is one value) and its scale and zero-point initializers."""
    from onnx import TensorProto, helper, numpy_helper  # onnx: the deploy extra; only making a graph needs it

    per_tensor = bool(np.all(scale == scale[0]))
    scale = np.float32(scale[0]) if per_tensor else scale
    zp_type = TensorProto.INT2 if int2 else TensorProto.INT8
    zp_shape = [] if per_tensor else [len(scale)]
    inits = [numpy_helper.from_array(np.asarray(scale, dtype=np.float32), f"{codes_name}.{tag}scale"),
             helper.make_tensor(f"{codes_name}.{tag}zero_point", zp_type, zp_shape, [0] * int(np.prod(zp_shape)))]
    attrs = {} if per_tensor else {"axis": axis}
    node = helper.make_node("DequantizeLinear", [codes_name, inits[0].name, inits[1].name], [out],
                            name=f"{out}.{tag}dequantize", **attrs)
    return inits, [node]


def _replace_weight(graph, wname: str, layer: str, model_codes: np.ndarray, axis: int, int2: bool) -> list:
    """Swap float initializer ``wname`` for codes + DequantizeLinear nodes producing ``wname``; the new nodes."""
    from onnx import TensorProto, helper, numpy_helper  # onnx: as in _dq

    index = next(i for i, t in enumerate(graph.initializer) if t.name == wname)
    w = numpy_helper.to_array(graph.initializer[index])
    codes, s_pos, s_neg = _scales(layer, w, model_codes, axis)
    codes_name = f"{wname}.codes"
    if int2:
        codes_init = helper.make_tensor(codes_name, TensorProto.INT2, codes.shape, codes.reshape(-1).tolist())
    else:
        codes_init = numpy_helper.from_array(codes, codes_name)
    del graph.initializer[index]
    graph.initializer.append(codes_init)
    if np.array_equal(s_pos, s_neg):  # TWN (or TTQ with Wp == Wn): one magnitude a channel
        inits, nodes = _dq(codes_name, s_pos, wname, axis, int2, "")
    else:  # TTQ: Where(codes > 0, DQ(codes, s_pos), DQ(codes, s_neg)), the codes' sign read by a unit-scale DQ
        sign_init, sign = _dq(codes_name, np.ones_like(s_pos), f"{wname}.sign", axis, int2, "sign_")
        pos_init, pos = _dq(codes_name, s_pos, f"{wname}.pos", axis, int2, "pos_")
        neg_init, neg = _dq(codes_name, s_neg, f"{wname}.neg", axis, int2, "neg_")
        zero = numpy_helper.from_array(np.zeros((), np.float32), f"{wname}.zero")
        is_pos = helper.make_node("Greater", [f"{wname}.sign", zero.name], [f"{wname}.is_pos"],
                                  name=f"{wname}.is_pos")
        select = helper.make_node("Where", [f"{wname}.is_pos", f"{wname}.pos", f"{wname}.neg"], [wname],
                                  name=f"{wname}.select")
        inits, nodes = sign_init + pos_init + neg_init + [zero], sign + pos + neg + [is_pos, select]
    graph.initializer.extend(inits)
    return nodes


def quantize_ternary(proto, codes: dict[str, np.ndarray], int2: bool = False):
    """Replace, in the float graph ``proto`` (changed in place and returned), the weights of the ternary layers
    ``codes`` names (qualified module name -> :func:`ternary_codes`) by int8 (``int2``: INT2, opset 25) codes +
    DequantizeLinear."""
    import onnx  # onnx: as in _dq

    consumers = _weight_consumers(proto.graph)
    names = {t.name for t in proto.graph.initializer}
    new_nodes = []
    for layer, model_codes in codes.items():
        wname = f"{PREFIX}{layer}.weight"
        if wname not in names or wname not in consumers:
            raise OnnxExportError(f"layer {layer}: the exported graph has no initializer {wname} taken as a Conv or "
                                  "Gemm weight (the exporter renamed or transformed it)")
        new_nodes += _replace_weight(proto.graph, wname, layer, model_codes, consumers[wname][1], int2)
    nodes = new_nodes + list(proto.graph.node)  # the new nodes read initializers only: first is topological
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    if int2:
        for opset in proto.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, INT2_OPSET)
        proto.ir_version = max(proto.ir_version, onnx.helper.find_min_ir_version_for(list(proto.opset_import)))
    return proto


def onnx_models(model: nn.Module, kinds: tuple[str, ...] = ("int8",), config: Optional[dict] = None) -> dict:
    """``model`` as ONNX graphs (``onnx.ModelProto``), one per kind: ``"int8"`` (QDQ), ``"int2"`` (QDQ with INT2
    codes, opset 25) or ``"float"`` (ternary weights as float32: the reference graph), exported once. Each passes
    ``onnx.checker``'s full check; ``config`` (the model's TrainConfig as JSON data) goes into the metadata."""
    import onnx  # onnx: as in _dq

    unknown = set(kinds) - {"int8", "int2", "float"}
    if unknown:
        raise ValueError(f"unknown ONNX weight kind(s) {sorted(unknown)} (choose from: float, int2, int8)")
    codes = ternary_codes(model)  # before the slow export: a model that is not ternary fails at once
    layers = list(codes)
    exported = export_float(model)
    out = {}
    for kind in kinds:
        proto = onnx.ModelProto()
        proto.CopyFrom(exported)
        if kind != "float":
            quantize_ternary(proto, codes, int2=kind == "int2")
        meta = {"ternsearch.format": FORMAT, "ternsearch.weights": kind,
                "ternsearch.ternary_layers": json.dumps(layers),
                "ternsearch.input": f"{INPUT}: uint8 N x 3 x 32 x 32, RGB 0-255 (normalized inside)",
                "ternsearch.output": f"{OUTPUT}: float32 logits N x classes"}
        if config is not None:
            meta["ternsearch.config"] = json.dumps(config)
        onnx.helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto, full_check=True)
        out[kind] = proto
    return out


def export_onnx(model: nn.Module, path: str | Path, weights: str = "int8", config: Optional[dict] = None) -> Path:
    """Write ``model`` as one ONNX file (see :func:`onnx_models` for ``weights`` and ``config``)."""
    import onnx  # onnx: as in _dq

    proto = onnx_models(model, (weights,), config)[weights]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def weight_layout(proto) -> dict[str, dict[str, Any]]:
    """For each Conv/Gemm/MatMul weight of an ONNX graph: ``{"kind": "float" | "qdq", "codes": array or None,
    "dtype": the codes' ONNX type name, "initializer": the float or code initializer's name}``, keyed by the
    weight's name; a weight that is neither a float initializer nor QDQ codes is ``"other"``."""
    from onnx import TensorProto, numpy_helper  # onnx: as in _dq

    inits = {t.name: t for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    layout = {}
    for wname in _weight_consumers(proto.graph):
        if wname in inits:
            layout[wname] = {"kind": "float", "initializer": wname, "codes": None,
                             "dtype": TensorProto.DataType.Name(inits[wname].data_type)}
            continue
        node = producers.get(wname)
        sources = [node]
        if node is not None and node.op_type == "Where":  # TTQ: Where(DQ_pos > 0, DQ_pos, DQ_neg)
            sources = [producers.get(i) for i in node.input[1:3]]
        codes = {s.input[0] for s in sources if s is not None and s.op_type == "DequantizeLinear"}
        if len(codes) == 1 and all(s is not None and s.op_type == "DequantizeLinear" for s in sources) \
                and next(iter(codes)) in inits:
            init = inits[codes.pop()]
            layout[wname] = {"kind": "qdq", "initializer": init.name, "codes": numpy_helper.to_array(init),
                             "dtype": TensorProto.DataType.Name(init.data_type)}
        else:
            layout[wname] = {"kind": "other", "initializer": None, "codes": None, "dtype": None}
    return layout


def ort_can_run(path: str | Path) -> Optional[str]:
    """None when ONNX Runtime loads ``path`` and runs it on one image, else why not (one line)."""
    import onnxruntime as ort  # onnxruntime: only to try the file (the export itself needs only onnx)

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        session.run(None, {INPUT: np.zeros((1, 3, 32, 32), np.uint8)})
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented classes
        return f"onnxruntime {ort.__version__} cannot run it yet: {str(exc).strip().splitlines()[0][:200]}"
    return None
