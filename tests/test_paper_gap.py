"""benchmarks/paper_gap.py's plan (pure logic, no training): the configs it trains are configs/'s paper files at the
budget, with the lr drops at the paper's fractions of the run, and every one is a valid train file."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from ternsearch.spec import load_train_file

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("paper_gap", REPO / "benchmarks" / "paper_gap.py")
paper_gap = importlib.util.module_from_spec(_spec)
sys.modules["paper_gap"] = paper_gap
_spec.loader.exec_module(paper_gap)


def _plan(tmp_path, epochs: int, *recipes: str) -> dict:
    a = argparse.Namespace(epochs=epochs, recipes=list(recipes), subset=None, threads=2)
    return dict(paper_gap.plan(a, 0, tmp_path))


@pytest.mark.parametrize(("epochs", "milestones"), [(164, [82, 123, 150]), (15, [8, 11, 14]), (40, [20, 30, 37]),
                                                    (3, [2]), (1, [1])])
def test_the_drops_keep_the_papers_fractions(tmp_path, epochs, milestones):
    cfg = _plan(tmp_path, epochs, "ttq")["ttq"]
    assert cfg["train"]["epochs"] == epochs and cfg["train"]["step_milestones"] == milestones
    assert cfg["model"]["quantizer"] == "ttq" and cfg["data"] == {"dataset": "cifar10", "val_fraction": 0.0}


def test_every_planned_config_is_a_valid_train_file(tmp_path):
    runs = _plan(tmp_path, 15, *paper_gap.RECIPES)
    assert list(runs) == ["fp", "twn", "ttq", "warm (fp half)", "warm"]
    (tmp_path / "warm-fp-s0").mkdir()  # the warm start's source, as its first half leaves it
    for name, cfg in runs.items():
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tf = load_train_file(path)
        assert tf.train.seed == 0 and tf.model.arch == "resnet20", name
    fp, warm = runs["warm (fp half)"], runs["warm"]
    assert fp["train"]["epochs"] + warm["train"]["epochs"] == 15
    assert warm["model"]["init_from"] == str(tmp_path / "warm-fp-s0") and warm["train"]["lr"] == pytest.approx(0.01)


def test_runs_side_by_side_keep_the_warm_start_after_its_first_half(tmp_path):
    """--jobs N: each recipe is a chain of its own, and warm start's TTQ half waits for its full-precision half."""
    a = argparse.Namespace(epochs=15, recipes=list(paper_gap.RECIPES), subset=None, threads=1)
    chains = paper_gap.chained(paper_gap.plan(a, 0, tmp_path))
    assert [[name for name, _ in chain] for chain in chains] == [["fp"], ["twn"], ["ttq"],
                                                                 ["warm (fp half)", "warm"]]
