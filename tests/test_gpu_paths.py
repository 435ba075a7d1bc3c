"""The GPU paths that can be exercised on CPU (issue 22): DDP with TTQ's delayed quantization over gloo, the device
and precision a trial picks (a patched ``torch.cuda`` probe), torch.compile across a quantization ramp, resume
across precisions, non-finite steps, and the determinism switches. What only a GPU shows is in
benchmarks/gpu_check.sh."""

from __future__ import annotations

import math
import os

import pytest
import torch

from trainables.config import TrainConfig
from trainables.loop import run
from trainables.setup import TrialSetup

from helpers_cluster import run_ranks


def _setup(**fields) -> TrialSetup:
    """A one-worker trial's setup on CPU, with ``fields`` instead."""
    one = dict(base={}, mode="function", workers=1, use_gpu=False, cpus_per_worker=1.0, storage_path="",
               trial_dir_root="", max_failures=0, keep_checkpoints=1, placement_strategy="PACK",
               objectives=[("val_acc", "max")])
    return TrialSetup(**{**one, **fields})


def _cfg(model: dict | None = None, subset: int = 200, **train) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 1, "threads": 1, "augment": "none"}
    base.update(train)
    return TrainConfig.model_validate(
        {"data": {"subset": subset, "val_fraction": 0.2}, "model": {"arch": "tinynet", **(model or {})},
         "train": base})


def _ddp_rank(rank: int, port: int, world: int, cfg_json: dict, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = run(TrainConfig.model_validate(cfg_json), None, device=torch.device("cpu"))
        results.put((rank, "ok", out["quant_mix"], out["world_size"]))
    except Exception as exc:  # noqa: BLE001 - the parent asserts on it
        results.put((rank, "error", f"{type(exc).__name__}: {str(exc)[:200]}", 0))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~22 s: two spawned processes import torch and load the data
def test_ttq_with_delayed_quantization_trains_under_ddp(data_root):
    """Item 1: TTQ's scales are in the graph while the layers still train at full precision (epoch 1), so DDP,
    built without find_unused_parameters, gets a gradient for every parameter in every step."""
    cfg = _cfg({"quantizer": "ttq"}, quantize_from_epoch=2)
    outcome = run_ranks(_ddp_rank, 2, cfg.model_dump(mode="json"))
    assert outcome == [(0, "ok", 1.0, 2), (1, "ok", 1.0, 2)], outcome


def test_shared_storage_packs_a_trials_ranks(tmp_path):
    """Item 5: a DDP trial's ranks go on as few nodes as possible, shared storage or not."""
    from ternsearch.spec import load_spec
    from ternsearch.run.tuner import make_plan, trial_setup

    spec_file = tmp_path / "ddp.yaml"
    spec_file.write_text("name: ddp\nmetric: {name: val_acc, mode: max}\nsearch:\n  lr: {loguniform: [0.01, 0.5]}\n"
                         f"resources: {{workers_per_trial: 2}}\nstorage: {{path: {tmp_path}/nfs, shared: true}}\n")
    spec = load_spec(spec_file)
    setup = trial_setup(spec, make_plan(spec, {"CPU": 4.0}), str(tmp_path / "nfs"))
    assert setup.mode == "torchtrainer" and setup.placement_strategy == "PACK"


def test_a_trial_without_a_gpu_trains_on_cpu(monkeypatch):
    """Item 2: a trial that reserved no GPU trains on CPU even where CUDA is visible (Ray leaves
    CUDA_VISIBLE_DEVICES alone for it); one that reserved a GPU in function mode uses the one Ray shows it."""
    from trainables.entry import trial_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert trial_device(_setup(use_gpu=False)) == torch.device("cpu")
    assert trial_device(_setup(use_gpu=False), train_worker=True) == torch.device("cpu")
    assert trial_device(_setup(use_gpu=True)) == torch.device("cuda", 0)


def test_auto_precision_ignores_emulated_bf16(monkeypatch):
    """Item 3: a GPU that only emulates bf16 (V100, T4) gets fp16 with a GradScaler."""
    from trainables.device import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.bfloat16


def test_deterministic_flag_sets_torchs_switches(monkeypatch):
    """Item 6: train.deterministic turns on cuDNN's and torch's deterministic algorithms and a fixed cuBLAS
    workspace; otherwise cudnn.benchmark is on for CUDA runs (and off on CPU, where it means nothing)."""
    from trainables.device import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert _cfg(deterministic=True).train.deterministic is True
    cuda = torch.device("cuda", 0)
    try:
        set_determinism(True, cuda)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_determinism(False, cuda)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        set_determinism(False, torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark


def test_fp32_checkpoint_resumes_with_the_fp16_scaler(tmp_path, data_root):
    """Item 10: a checkpoint written with the GradScaler off (fp32 here, bf16 alike) resumes in a run whose
    precision is fp16 (what auto gives on another GPU): the scaler starts fresh instead of failing to load."""
    from trainables.checkpoint import load_checkpoint

    kept = []

    def keep(metrics, ckpt_dir):
        import shutil

        if ckpt_dir:
            kept.append(shutil.copytree(ckpt_dir, tmp_path / f"e{metrics['epoch']}"))

    run(_cfg(epochs=1, precision="fp32"), keep)
    state, manifest = load_checkpoint(kept[0])
    assert state["scaler"] == {} and state["precision"] == manifest["precision"] == "fp32"
    out = run(_cfg(epochs=2, precision="fp16"), keep, resume_from=kept[0])
    assert out["epoch"] == 2 and math.isfinite(out["train_loss"])
    assert load_checkpoint(kept[1])[0]["precision"] == "fp16"


class _InfOnce(torch.nn.Module):
    """tinynet whose second training forward returns non-finite logits: one fp16 overflow."""

    layer_roles = {"stem": "net.stem", "head": "net.head"}

    def __init__(self, num_classes: int = 10):
        super().__init__()
        from trainables.models import ConvPoolNet

        self.net, self.calls = ConvPoolNet((16, 32, 64, 128), num_classes), 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == 2:
                out = out * float("inf")
        return out


def test_one_overflow_step_is_skipped_not_divergence(data_root, monkeypatch):
    """Item 11: GradScaler skips the step whose loss is not finite; the epoch's loss leaves it out and the run
    goes on. Past MAX_NONFINITE_FRACTION of the steps it is divergence (test_loop's test_divergence_raises)."""
    from trainables import registry

    # Registered for this test only: the registry tests (tests/test_models.py) check the built-in names.
    monkeypatch.setitem(registry._REGISTRY, "inf_once", _InfOnce)
    out = run(_cfg({"arch": "inf_once"}, epochs=1, precision="fp16"), None)  # 5 steps: 1 is 20%
    assert out["nonfinite_steps"] == 1 and math.isfinite(out["train_loss"])


def test_a_quantization_ramp_compiles_once(data_root):
    """Item 4: the mix moves 0 -> 0.5 -> 1 over three epochs without a recompile (the compiles all happen in
    epoch 1: the training graph, and evaluation's eval mode and shorter last batch)."""
    from torch._dynamo.backends.debugging import aot_eager

    compiles, after_epoch = [], []

    def counting(gm, example_inputs):
        compiles.append(1)
        return aot_eager(gm, example_inputs)

    cfg = _cfg(subset=100, epochs=3, quantize_from_epoch=2, ramp_epochs=2, compile=True, precision="fp32")
    out = run(cfg, lambda metrics, ckpt: after_epoch.append((metrics["quant_mix"], len(compiles))),
              compile_backend=counting)
    assert [mix for mix, _ in after_epoch] == [0.0, 0.5, 1.0]
    assert after_epoch[0][1] > 0 and after_epoch[-1][1] == after_epoch[0][1], after_epoch
    assert out["epoch"] == 3


def test_a_fractional_gpu_trial_caps_its_memory(monkeypatch):
    """Item 7: a trial holding a quarter of a GPU caps its allocator at a quarter of the GPU's memory."""
    from trainables.entry import trial_device

    capped = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: capped.append((f, d)))
    assert trial_device(_setup(use_gpu=True, gpus_per_worker=0.25)) == torch.device("cuda", 0)
    assert trial_device(_setup(use_gpu=True, gpus_per_worker=1.0)) == torch.device("cuda", 0)
    assert capped == [(0.25, torch.device("cuda", 0))]
