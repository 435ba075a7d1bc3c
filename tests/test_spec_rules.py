"""What a sweep or train file means where YAML 1.1 or an omitted key would surprise: YAML 1.2 core-schema
scalars, the metric mode inferred from its name, grid sizes, and searched values that equal each other once read.
The refusals are in the bad-spec corpus (tests/bad_specs/54-79); these are the files that are accepted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ternsearch.spec import load_spec, load_train_file
from ternsearch.spec.yamlsrc import load_located

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("written", "read"), [
    ("010", 10), ("0o17", 15), ("0x1F", 31), ("-5", -5), ("+7", 7),
    ("1e-5", 1e-5), ("1.0e-5", 1e-5), (".5", 0.5), ("-.inf", float("-inf")),
    ("true", True), ("False", False), ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"),
    ("y", "y"), ("2026-01-01", "2026-01-01"), ("1_000", "1_000"), ("12:30", "12:30"),
    ("~", None), ("null", None), ("", None), ("'010'", "010"),
])
def test_scalars_are_read_as_yaml_1_2_core(tmp_path, written, read):
    data = load_located(_write(tmp_path, f"name: x\nvalue: {written}\n")).data
    assert data["value"] == read and type(data["value"]) is type(read)


def test_yaml_1_2_numbers_reach_the_config(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        name: core
        train: {epochs: 010, weight_decay: 1e-4, nesterov: true}
        search:
          lr: {loguniform: [1e-3, .5]}
        """))
    assert (spec.train.epochs, spec.train.weight_decay, spec.train.nesterov) == (10, 1e-4, True)
    assert (spec.params[0].low, spec.params[0].high) == (1e-3, 0.5)


def test_merge_keys_and_shared_aliases_still_work(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        name: aliases
        train:
          <<: &short {epochs: 4, batch_size: 64}
          lr: 0.1
        search:
          weight_decay: &range {loguniform: [0.0001, 0.01]}
          ternary_lr_ratio: *range
        """))
    assert (spec.train.epochs, spec.train.batch_size) == (4, 64)
    assert [p.low for p in spec.params] == [0.0001, 0.0001]


@pytest.mark.parametrize(("metric", "expected"), [
    ("{name: val_loss}", ("val_loss", "min")), ("{name: train_acc}", ("train_acc", "max")),
    ("{name: val_loss, mode: max}", ("val_loss", "max")), ("{name: ternary_zero_frac, mode: max}",
                                                           ("ternary_zero_frac", "max")),
])
def test_metric_mode_is_inferred_only_from_loss_and_accuracy_names(tmp_path, metric, expected):
    spec = load_spec(_write(tmp_path, f"name: m\nmetric: {metric}\nsearch:\n  lr: {{loguniform: [0.01, 0.5]}}\n"))
    assert (spec.metric.name, spec.metric.mode) == expected
    train = load_train_file(_write(tmp_path, f"name: m\nmetric: {metric}\n", "train.yaml"))
    assert (train.metric.name, train.metric.mode) == expected


def test_validate_says_which_modes_were_inferred(tmp_path):
    path = _write(tmp_path, """\
        name: mo
        metric: [{name: val_loss}, {name: ternary_zero_frac, mode: max}]
        scheduler: {algorithm: fifo}
        search:
          lr: {loguniform: [0.01, 0.5]}
        """)
    out = subprocess.run([sys.executable, "-m", "ternsearch.cli", "validate", str(path)], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "metric val_loss (min, inferred from its name), ternary_zero_frac (max))" in out.stdout


def test_grid_without_num_samples_runs_each_point_once(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        name: grid
        searcher: {algorithm: grid}
        search:
          lr: {choice: [0.05, 0.1, 0.2]}
          batch_size: {choice: [64, 128]}
        """))
    assert spec.searcher.num_samples == 6


def test_fixed_quantization_start_may_rely_on_searched_epochs(tmp_path):
    """quantize_from_epoch 12 is fine when every searched epochs value reaches it (the default 10 does not)."""
    spec = load_spec(_write(tmp_path, """\
        name: late
        train: {quantize_from_epoch: 12}
        search:
          epochs: {choice: [12, 20]}
        """))
    assert spec.max_epochs == 20


def test_full_precision_layers_may_name_modules(tmp_path):
    spec = load_spec(_write(tmp_path, """\
        name: modules
        model: {arch: resnet20, full_precision_layers: [stem, head, layer1.0.conv1]}
        search:
          lr: {loguniform: [0.01, 0.5]}
        """))
    assert "layer1.0.conv1" in spec.model.full_precision_layers
