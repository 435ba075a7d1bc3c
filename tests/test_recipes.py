"""Training recipes: warm start from a full-precision model, progressive quantization, distillation. The
two-stage recipe runs with our own commands on real CIFAR-10 (`ternsearch train` of a full-precision config, then
of a ternary one that starts from it and learns from it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from trainables.config import TrainConfig
from trainables.models import build_model
from trainables.recipes import RecipeError, distill_loss, quant_mix, set_quant_mix, warm_start
from trainables.restore import model_from_checkpoint
from trainables.ternary import _twn_ternarize, ternary_modules

BASE = {"data": {"subset": 600, "val_fraction": 0.2}, "train": {"batch_size": 64, "lr": 0.05, "threads": 2}}


def _train(cfg: dict, tmp: Path, name: str) -> subprocess.CompletedProcess:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **cfg}))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "ternsearch.cli", "train", str(path), "-q", "-o", str(tmp / name)],
                          cwd=tmp, env=env, text=True, capture_output=True, timeout=600)


def test_distill_loss_matches_a_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.5, 1.0, -0.5], [-1.0, 0.0, 2.0]])
    y = torch.tensor([0, 2])
    w, temp = 0.3, 2.0

    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]

    ce = -sum(math.log(softmax(s[i].tolist())[y[i]]) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        ps, pt = softmax((s[i] / temp).tolist()), softmax((t[i] / temp).tolist())
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    expected = (1 - w) * ce + w * temp * temp * kl / 2
    assert distill_loss(s, t, y, w, temp).item() == pytest.approx(expected, rel=1e-6)
    assert distill_loss(s, t, y, 0.0, temp).item() == pytest.approx(ce, rel=1e-6)
    soft = F.one_hot(y, 3).float() * 0.7 + 0.1  # MixUp-style probabilities are taken as they are
    assert distill_loss(s, t, soft, w, temp).item() == pytest.approx(
        (1 - w) * F.cross_entropy(s, soft).item() + w * temp * temp * kl / 2, rel=1e-6)


def test_quant_mix_regimes():
    assert [quant_mix(e, 3, 0) for e in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    assert [quant_mix(e, 2, 3) for e in (1, 2, 3, 4, 5)] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0, 1.0]
    model = build_model(TrainConfig.model_validate({"model": {"arch": "tinynet"}}).model)
    set_quant_mix(model, 0.0)
    name, layer = ternary_modules(model)[0]
    assert torch.equal(layer.quantized_weight(), layer.weight)  # full precision (lerp at 0 is W exactly)
    set_quant_mix(model, 0.5)
    w = layer.weight.detach()
    assert torch.allclose(layer.quantized_weight().detach(), 0.5 * w + 0.5 * _twn_ternarize(w.clone()))


@pytest.mark.slow
def test_two_stage_recipe_with_our_own_commands(tmp_path, data_root):
    fp = _train({**BASE, "model": {"arch": "tinynet", "quantizer": "none"}, "train": {**BASE["train"], "epochs": 2}},
                tmp_path, "fp32")
    assert fp.returncode == 0, fp.stderr[-3000:]

    # The first forward of the warm-started ternary model equals the FP model's with TWN-quantized weights.
    teacher, _ = model_from_checkpoint(tmp_path / "fp32" / "checkpoints" / "epoch_0002")
    cfg = TrainConfig.model_validate({"model": {"arch": "tinynet", "init": "checkpoint",
                                                "init_from": str(tmp_path / "fp32")}})
    student = build_model(cfg.model)
    warm_start(student, cfg.model.init_from)
    student.eval()
    reference = build_model(TrainConfig.model_validate({"model": {"arch": "tinynet", "quantizer": "none"}}).model)
    reference.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        for name, _ in ternary_modules(student):
            layer = reference.get_submodule(name)
            layer.weight.copy_(_twn_ternarize(layer.weight.clone()))
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x), reference.eval()(x))

    # Stage two: warm start + distillation + quantization switched on at epoch 2 and ramped in over 2 epochs.
    run = _train({**BASE, "model": {"arch": "tinynet", "init": "checkpoint", "init_from": str(tmp_path / "fp32")},
                  "train": {**BASE["train"], "epochs": 3, "quantize_from_epoch": 2, "ramp_epochs": 2,
                            "distill_from": str(tmp_path / "fp32"), "distill_weight": 0.5}}, tmp_path, "ternary")
    assert run.returncode == 0, run.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "ternary" / "history.jsonl").read_text().splitlines()]
    assert [h["quant_mix"] for h in history] == [0.0, 0.5, 1.0]
    assert history[0]["ternary_zero_frac"] == 0.0 and history[-1]["ternary_zero_frac"] > 0.2
    assert 0.0 <= json.loads(run.stdout)["test_acc"] <= 1.0


def test_a_missing_weight_source_is_one_line_before_training(tmp_path):
    proc = _train({**BASE, "model": {"arch": "tinynet", "init": "checkpoint", "init_from": str(tmp_path / "nope")}},
                  tmp_path, "bad")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"{tmp_path / 'bad.yaml'}: model.init_from: {tmp_path / 'nope'}: not a checkpoint directory, a `ternsearch "
        "train` run directory or an MLflow model URI (models:/NAME/VERSION, runs:/RUN_ID/model)")
    with pytest.raises(RecipeError, match="does not fit this model"):
        fp = tmp_path / "r20"
        from trainables.checkpoint import save_checkpoint

        r20 = build_model(TrainConfig.model_validate({"model": {"arch": "resnet20", "quantizer": "none"}}).model)
        save_checkpoint(fp, {"model": r20.state_dict()}, {"epoch": 1})
        warm_start(build_model(TrainConfig.model_validate({"model": {"arch": "tinynet"}}).model), str(fp))
