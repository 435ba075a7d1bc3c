"""The report's computed layer (hand-made inputs, then one real small sweep) and the files it writes."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import yaml
import pytest

from helpers_report import MIXED, NAME, PARAMS, cli, hand_results, real_sweep, write_hand_results
from ternsearch.report.data import (PARAM_PREFIX, best_so_far, layer_sparsity, learning_curves,
                                    load_results, optimization_history, parallel_dimensions, pareto_front,
                                    sparsity_tradeoff, trial_table)
from ternsearch.report.importance import importances
from ternsearch.tracking.links import mlflow_links
from ternsearch.spec import Param

# ---------------------------------------------------------------------------------------------- pure functions
def test_pareto_front_keeps_ties_and_drops_dominated_points():
    pts = [(0.30, 0.90), (0.50, 0.80), (0.50, 0.80), (0.40, 0.70), (0.60, 0.60), (0.10, 0.90), (math.nan, 1.0),
           (0.60, 0.50)]
    # (0.4, 0.7) is beaten by (0.5, 0.8); (0.1, 0.9) ties on y but has fewer zeros; (0.6, 0.5) ties on x only;
    # the two equal points do not dominate each other; NaN is ignored.
    assert pareto_front(pts, maximize=(True, True)) == [0, 1, 2, 4]
    assert pareto_front(pts, maximize=(True, False)) == [7]
    assert pareto_front(pts, maximize=(False, True)) == [5]
    assert pareto_front([(1.0, 1.0)] * 3) == [0, 1, 2]
    assert pareto_front([]) == []


def test_best_so_far_skips_missing_values():
    assert best_so_far([0.1, math.nan, 0.3, 0.2, None], maximize=True) == [0.1, 0.1, 0.3, 0.3, 0.3]
    out = best_so_far([None, 0.5, 0.7, 0.2], maximize=False)
    assert math.isnan(out[0]) and out[1:] == [0.5, 0.5, 0.2]


def test_trial_table_statuses_metrics_and_rank():
    table = trial_table(hand_results(MIXED))
    assert list(table["trial_id"]) == ["tr00", "tr01", "tr02", "tr03", "tr04"]
    by = table.set_index("trial_id")
    assert list(by["status"]) == ["completed", "stopped", "failed", "completed", "failed"]
    assert by.loc["tr01", "reason"] == "stopped by ASHA at epoch 1" and by.loc["tr01", "stop_epoch"] == 1
    assert by.loc["tr02", "reason"] == "diverged at epoch 2"
    # a failed trial's sentinel value is not a result; its last real epoch still counts as its best
    assert math.isnan(by.loc["tr04", "final_val_acc"]) and by.loc["tr02", "best_val_acc"] == 0.20
    assert by.loc["tr03", "final_val_acc"] == 0.44 and by.loc["tr03", "best_val_acc"] == 0.44
    assert by.loc["tr00", "best_epoch"] == 3 and by.loc["tr00", "epochs"] == 3
    # ranked as the sweep picks its best: completed trials first, failed ones unranked
    assert list(by["rank"].astype("float").fillna(-1)) == [1, 3, -1, 2, -1]
    assert by.loc["tr03", PARAM_PREFIX + "mixup_alpha"] == 0.2 and pd.isna(by.loc["tr00", PARAM_PREFIX + "mixup_alpha"])
    assert by.loc["tr00", "wall_seconds"] == 8.0 and by.loc["tr00", "hostname"] == "vm"


def test_history_curves_and_sparsity_tradeoff():
    res = hand_results(MIXED)
    table = trial_table(res)
    h = optimization_history(table, "val_acc", True)
    assert list(h["trial"]) == ["t000", "t001", "t003"]
    assert list(h["best_by_number"]) == [0.50, 0.50, 0.50]
    curves = {c.trial_id: c for c in learning_curves(res)}
    assert curves["tr00"].epochs == (1, 2, 3) and curves["tr00"].cut_epoch is None
    assert curves["tr01"].values == (0.45,) and curves["tr01"].cut_epoch == 1
    assert curves["tr02"].epochs == (1,) and curves["tr02"].cut_epoch == 2  # the diverged epoch is dropped
    assert curves["tr04"].epochs == () and curves["tr04"].status == "failed"
    s = sparsity_tradeoff(table, "val_acc", True).set_index("trial")
    # completed t000 (0.50 at 43% zeros) and t003 (0.44 at 48%) trade off; t001 (0.45 at 51%, stopped at
    # epoch 1) would beat t003 but its numbers are from its first epoch: shown, not on the front
    assert s["on_front"].to_dict() == {"t000": True, "t001": False, "t003": True}


def test_parallel_dimensions_codes_categories_and_marks_missing_values():
    res = hand_results(MIXED, params=PARAMS + (Param("precision", "choice", choices=("fp16",), when={"lr": (100.0,)}),))
    dims = {d["label"]: d for d in parallel_dimensions(res, trial_table(res))["dimensions"]}
    assert list(dims) == ["lr", "augment", "mixup_alpha", "val_acc"]  # precision: no finished trial has it
    assert dims["augment"]["values"] == [0, 1, 1] and dims["augment"]["ticktext"] == ["standard", "mixup"]
    assert dims["lr"]["values"] == pytest.approx([-2, math.log10(0.002), math.log10(0.05)])  # log axis
    alpha = dims["mixup_alpha"]
    assert alpha["ticktext"][0] == "n/a" and alpha["values"][0] == alpha["tickvals"][0] < 0.1
    assert alpha["values"][1:] == [0.3, 0.2]


def test_layer_sparsity_in_network_order():
    layers = {"stage1.conv": (0.3, 0.4, 0.3), "stage2.conv": (0.25, 0.5, 0.25)}
    res = hand_results([(0, "completed", {"lr": 0.01, "augment": "standard"}, [0.3, 0.4], 0.4, layers)])
    df = layer_sparsity(res, "tr00")
    assert list(df["layer"]) == ["stage1.conv", "stage2.conv"]
    assert df.loc[1, "zero_frac"] == 0.5 and df.loc[0, "scale"] == 0.05
    assert layer_sparsity(hand_results(MIXED), "tr00").empty


def _ramp(n: int = 14, seed: int = 0) -> list:
    """Trials whose metric is driven by lr (log-linear) with a little noise; augment and wd barely matter."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lr = 10 ** rng.uniform(-3, -1)
        aug = rng.choice(["standard", "mixup"])
        cfg = {"lr": lr, "augment": aug, "weight_decay": 10 ** rng.uniform(-5, -3)}
        if aug == "mixup":
            cfg["mixup_alpha"] = rng.uniform(0.1, 0.5)
        value = 0.2 + 0.3 * (math.log10(lr) + 3) + 0.01 * rng.random()
        out.append((i, "completed" if i % 3 else "stopped", cfg, [value]))
    return out


@pytest.mark.parametrize("method", ["fanova", "mdi"])
def test_importance_sums_to_one_and_finds_what_matters(method):
    params = PARAMS + (Param("weight_decay", "loguniform", low=1e-5, high=1e-3),)
    res = hand_results(_ramp() + [(20, "failed", {"lr": 0.1, "augment": "standard", "weight_decay": 1e-4}, [None])],
                   params=params)
    imp = importances(res, trial_table(res), method=method)
    assert imp.n_trials == 14 and not imp.message
    assert sum(imp.values.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(v >= 0 for v in imp.values.values())
    assert max(imp.values, key=imp.values.get) == "lr" and imp.values["lr"] > 0.5
    assert set(imp.values) == {"lr", "augment", "weight_decay"}
    assert imp.excluded["mixup_alpha"].startswith("conditional")
    assert imp.method == {"fanova": "fANOVA", "mdi": "mean decrease impurity"}[method]


def test_importance_degenerate_sweeps():
    one = hand_results([MIXED[0], MIXED[2]])
    imp = importances(one, trial_table(one))
    assert imp.values == {} and "at least 2 finished trials" in imp.message and imp.n_trials == 1
    none = hand_results([MIXED[4]])
    assert importances(none, trial_table(none)).values == {}
    same = hand_results([(0, "completed", {"lr": 0.01, "augment": "mixup", "mixup_alpha": 0.2}, [0.5]),
                     (1, "completed", {"lr": 0.02, "augment": "mixup", "mixup_alpha": 0.3}, [0.5])])
    imp = importances(same, trial_table(same))
    assert imp.values == {} and "same val_acc" in imp.message
    assert imp.excluded == {"augment": "one value in every trial"}


# ---------------------------------------------------------------------------------------------- files (no Ray)
def test_write_report_files_and_degenerate_sweeps(tmp_path):
    from ternsearch.report.render import FIGURES, write_report

    mixed_type = Param("batch", "choice", choices=(64, "auto"))
    specs = [(i, st, dict(cfg, batch=64 if i % 2 else "auto"), v) for i, st, cfg, v, *_ in MIXED]
    results = write_hand_results(tmp_path / "mixed", specs, params=PARAMS + (mixed_type,))
    out = write_report(results)
    assert out == results / "report.html"
    text = out.read_text()
    for div_id, *_ in FIGURES:
        assert f'id="{div_id}"' in text
    assert "could not draw" not in text and "<script src=" not in text and len(text) > 3_000_000  # plotly inline
    csv = pd.read_csv(results / "trials.csv")
    parquet = pd.read_parquet(results / "trials.parquet")
    assert len(csv) == len(parquet) == 5 and list(csv.columns) == list(parquet.columns)
    assert set(parquet[PARAM_PREFIX + "batch"]) == {"64", "auto"}  # a mixed column is stored as text
    # one failed trial and nothing else: every figure says why it is empty, none fails
    lonely = write_report(write_hand_results(tmp_path / "lonely", [MIXED[4]]), tmp_path / "out" / "lonely.html")
    text = lonely.read_text()
    assert "could not draw" not in text and "needs at least 2 finished trials" in text


def test_report_of_a_directory_that_is_no_sweep(tmp_path, capsys):
    from ternsearch.cli import main

    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a ternsearch results directory" in err


# ---------------------------------------------------------------------------------------------- a real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    return real_sweep(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_wrote_report_and_trial_tables(sweep):
    _, summary, results = sweep
    assert summary["report"] == str(results / "report.html") and (results / "report.html").stat().st_size > 3e6
    trials = json.loads((results / "trials.json").read_text())
    table = pd.read_parquet(results / "trials.parquet")
    assert len(table) == len(pd.read_csv(results / "trials.csv")) == len(trials) == 6
    assert {"completed", "stopped", "failed"} <= set(table["status"])
    failed = table[table["status"] == "failed"]
    assert failed["reason"].str.contains("diverged at epoch 1").all() and (failed["params_lr"] == 100.0).all()
    stopped = table[table["status"] == "stopped"]
    assert (stopped["reason"] == "stopped by ASHA at epoch " + stopped["stop_epoch"].astype(str)).all()
    assert table.loc[table["rank"] == 1, "trial_id"].item() == summary["best_trial"]


@pytest.mark.slow
@pytest.mark.ray
def test_learning_curves_of_a_real_sweep(sweep):
    _, _, results = sweep
    res = load_results(results)
    history = [json.loads(line) for line in (results / "history.jsonl").read_text().splitlines()]
    curves = learning_curves(res)
    assert len(curves) == 6 and [c.number for c in curves] == list(range(6))
    for c in curves:
        t = res.trials[c.trial_id]
        if c.status == "failed":  # diverged in its first epoch: no measured point, cut at epoch 1
            assert c.epochs == () and c.cut_epoch == 1
            continue
        assert c.epochs == tuple(range(1, t["epochs"] + 1))
        assert c.values == tuple(r["val_acc"] for r in sorted(history, key=lambda r: r["epoch"])
                                 if r["trial_id"] == c.trial_id)
        assert c.cut_epoch == (t["epochs"] if c.status == "stopped" else None)
        assert (c.status == "completed") == (len(c.epochs) == 3)


@pytest.mark.slow
@pytest.mark.ray
def test_importance_layers_and_links_of_a_real_sweep(sweep):
    _, summary, results = sweep
    res = load_results(results)
    table = trial_table(res)
    imp = importances(res, table)
    assert imp.n_trials == 5 and sum(imp.values.values()) == pytest.approx(1.0)
    assert imp.excluded["mixup_alpha"].startswith("conditional") and "precision" in imp.excluded
    layers = layer_sparsity(res, summary["best_trial"])
    assert len(layers) >= 3
    assert (layers[["neg_frac", "zero_frac", "pos_frac"]].sum(axis=1) - 1).abs().max() < 1e-6
    links = mlflow_links(res)
    assert links.error is None and set(links.runs) == set(res.trials)
    url = links.url(links.runs[summary["best_trial"]])
    assert url == (f"http://127.0.0.1:5000/#/experiments/{links.experiment_id}/runs/"
                   f"{links.runs[summary['best_trial']]}?workflowType=machine_learning")
    assert links.command.startswith("mlflow ui --backend-store-uri sqlite:///") and "--host 127.0.0.1" in links.command


@pytest.mark.slow
@pytest.mark.ray
def test_report_command_writes_reports_folder(sweep):
    tmp, _, results = sweep
    proc = cli("report", str(results), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(Path("reports") / f"{NAME}.html") and (tmp / "reports" / f"{NAME}.html").is_file()
    from ternsearch.cli import main

    assert main(["report", str(results), "-o", str(tmp / "elsewhere" / "r.html")]) == 0
    assert (tmp / "elsewhere" / "r.html").stat().st_size > 3e6


@pytest.mark.slow
@pytest.mark.ray
def test_results_of_another_spec_are_refused_and_kept(sweep):
    """`export --spec` and `sweep --resume` refuse results another spec made (here: the same file with one value
    changed; num_samples alone may change), in one line naming the key, exit 1, before any Ray start, and leave the
    records as they were."""
    tmp, summary, results = sweep
    spec = tmp / f"{NAME}.yaml"
    other_dir = tmp / "edited"
    other_dir.mkdir(exist_ok=True)
    other = other_dir / f"{NAME}.yaml"
    other.write_text(spec.read_text().replace("seed: 10", "seed: 11"))
    before = {p.name: p.read_bytes() for p in results.iterdir() if p.is_file()}

    ok = cli("export", str(spec), "-o", str(tmp / "from-spec.yaml"), cwd=tmp)  # the spec file names its results
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load((tmp / "from-spec.yaml").read_text())["origin"]["trial_id"] == summary["best_trial"]

    refused = [cli("export", str(results), "--spec", str(other), "-o", str(tmp / "x.yaml"), cwd=tmp),
               cli("sweep", str(other), "--resume", cwd=tmp)]
    for proc, what in zip(refused, ("give the spec that made it", "--resume needs the file that started it")):
        assert proc.returncode == 1, proc.stderr
        line = proc.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert line.startswith(f"{results}: {other} changes searcher.seed of the sweep {spec.resolve()} started")
        assert what in line
    assert not (tmp / "x.yaml").exists()
    assert {p.name: p.read_bytes() for p in results.iterdir() if p.is_file()} == before


def test_learning_curves_at_scale_draw_the_best_and_the_rest_as_one_trace():
    """200 trials: the 30 best (by their best value) are drawn one by one, the other 170 as one grey trace with a
    gap between trials, not 200 traces and legend entries; minimizing picks the lowest."""
    from ternsearch.report.render import CURVES_EACH, curves_drawn, fig_curves

    rng = random.Random(3)
    specs = [(n, "completed" if n % 3 else "stopped", {"lr": 0.01, "augment": "standard"},
              [round(rng.uniform(0.1, 0.9), 4) for _ in range(1 + n % 4)]) for n in range(200)]
    res = hand_results(specs)
    fig = fig_curves(res, trial_table(res))
    grey = [t for t in fig.data if t.name == "170 other trials"]
    named = [t for t in fig.data if t.showlegend is not False and t not in grey]
    assert len(grey) == 1 and list(grey[0].x).count(None) == 170
    best = sorted(specs, key=lambda s: -max(s[3]))[:CURVES_EACH]
    assert sorted(max(t.y) for t in named) == sorted(max(s[3]) for s in best)
    assert len(fig.data) <= 1 + 2 * CURVES_EACH and "the 30 best trials of 200" in fig.layout.title.text
    each, rest = curves_drawn(learning_curves(hand_results(specs, mode="min")), False, 5)
    assert sorted(min(c.values) for c in each) == sorted(min(s[3]) for s in specs)[:5] and len(rest) == 195
