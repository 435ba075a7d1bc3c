"""``ternsearch export``: the best trial as a standalone train config (the format ``ternsearch train`` takes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError
from trainables.config import TrainConfig

from ternsearch.errors import OutputError, RecordError, ResultsError, UsageError
from ternsearch.results.atomic import write_atomic
from ternsearch.results.best import best_trial, pareto_trials
from ternsearch.results.deploy import check_onnx_output, pack_checkpoint, write_onnx
from ternsearch.results.export_run import export_run_dir
from ternsearch.results.files import SWEEP, SWEEP_HINT, TRIALS, read_sweep, read_trials
from ternsearch.results.location import check_same_spec, records_dir, resolve_storage
from ternsearch.results.outputs import REGENERABLE, check_output, same_file
from ternsearch.results.rebuild import recover_trials
from ternsearch.results.rundir import is_run_dir
from ternsearch.spec.describe import data_line
from ternsearch.spec import load_spec

__all__ = ["export_command", "best_config", "write_best_config", "load_results_meta", "with_epochs"]


def load_results_meta(results_dir: Path) -> dict[str, Any]:
    """The sweep.json of a results directory, or a one-line ResultsError (``ternsearch.results.files.read_sweep``)."""
    return read_sweep(Path(results_dir))


def read_trials_or_rebuild(results_dir: Path) -> dict:
    """trials.json; a torn one rebuilt from the other records (``ternsearch.results.rebuild``), with one warning
    line on stderr. The file itself is left as it is: only a resumed sweep rewrites it."""
    trials, rebuilt = recover_trials(Path(results_dir))
    _warn_rebuilt(rebuilt)
    return trials


def _warn_rebuilt(rebuilt: Optional[str]) -> None:
    if rebuilt:
        print(f"warning: {rebuilt} (this command leaves {TRIALS} as it is)", file=sys.stderr)


def _exportable(results_dir: Path, trial: dict, rebuilt: Optional[str]) -> dict:
    """``trial``, when its searched values are known; the one warning line of a rebuilt trials.json said."""
    if trial.get("config_unknown"):
        try:
            read_trials(results_dir)
        except RecordError as exc:
            raise exc.with_hint(f"the chosen trial {trial['trial_id']}'s searched values are in no other record "
                                f"(Tune's state, its params.json): restore {TRIALS} from a copy to export it") from None
    _warn_rebuilt(rebuilt)
    return trial


def chosen_trial(results_dir: Path, pick: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sweep.json, the trial to export): the best on the sweep's (first) metric, or with ``pick`` =
    ``OBJECTIVE[:TOLERANCE]`` the Pareto-front trial best on OBJECTIVE among those within TOLERANCE (default
    0.01) of the front's best value of the first objective, e.g. ``ternary_zero_frac:0.01``: the sparsest
    model within one point of the best accuracy."""
    meta = load_results_meta(results_dir)
    trials, rebuilt = recover_trials(Path(results_dir))
    if not pick:
        best = best_trial(trials, meta["metric"], meta["mode"], meta.get("objectives"))
        if best is None:
            raise ResultsError(f"{results_dir}: no trial has reported {meta['metric']} yet")
        return meta, _exportable(results_dir, best, rebuilt)
    objectives = meta.get("objectives") or [[meta["metric"], meta["mode"]]]
    modes = dict(objectives)
    name, _, tol_text = pick.partition(":")
    if name not in modes:
        raise ResultsError(f"--pick {pick}: '{name}' is not an objective of sweep '{meta['name']}' (choose from: "
                           f"{', '.join(modes)})")
    tol = _tolerance(pick, name, tol_text)
    front = pareto_trials(trials, objectives)
    if not front:
        raise ResultsError(f"{results_dir}: no completed trial has reported {', '.join(modes)}")
    primary, primary_mode = objectives[0]
    top = (max if primary_mode == "max" else min)(t["last"][primary] for t in front)
    near = [t for t in front if abs(t["last"][primary] - top) <= tol]
    if not near:  # the front's values are not numbers after all (NaN)
        raise ResultsError(f"{results_dir}: no Pareto trial has a usable {primary} to pick by")
    chosen = (max if modes[name] == "max" else min)(near, key=lambda t: t["last"][name])
    return meta, _exportable(results_dir, chosen, rebuilt)


def _trial_config(results_dir: Path, meta: dict, trial: dict) -> TrainConfig:
    """The sweep's fixed config (sweep.json's ``base``) with the trial's searched values; a hand-edited record that
    does not make one is a one-line RecordError naming the file."""
    try:
        base = TrainConfig.model_validate(meta.get("base"))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise RecordError(Path(results_dir) / SWEEP, f"not a sweep record ('base' is not a train config: "
                          f"{_first_line(exc)})", SWEEP_HINT) from None
    try:
        return base.with_overrides(trial["config"])
    except (KeyError, ValueError) as exc:
        raise RecordError(Path(results_dir) / TRIALS, f"trial '{trial['trial_id']}': its config is not one this "
                          f"sweep makes ({type(exc).__name__}: {_first_line(exc)})",
                          f"restore {TRIALS} from a copy") from None


def _first_line(exc: Exception) -> str:
    """What is wrong, in a few words: pydantic's first error (``model.arch: Input should be...``), else the text."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        return f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', '')}"[:200]
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _tolerance(pick: str, name: str, text: str) -> float:
    """TOLERANCE of ``--pick OBJECTIVE[:TOLERANCE]``: a number, 0 or more (default 0.01)."""
    allowed = f"OBJECTIVE[:TOLERANCE], TOLERANCE a number, 0 or more, e.g. {name}:0.01"
    try:
        tol = float(text) if text else 0.01
    except ValueError:
        raise ResultsError(f"--pick {pick}: '{text}' is not a number ({allowed})") from None
    if not tol >= 0:  # NaN too
        raise ResultsError(f"--pick {pick}: the tolerance {text} is not 0 or more ({allowed})")
    return tol


def with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    """``cfg`` with ``train.epochs`` = ``epochs`` (``--epochs`` of ``export`` and ``train``).

    Raises:
        UsageError: the number is out of TrainConfig's range, or below what the config's other keys need
            (``warmup_epochs``), in one line naming ``--epochs``.
    """
    try:
        return cfg.with_overrides({"epochs": epochs})
    except ValidationError as exc:
        msg = str(exc.errors()[0].get("msg", exc)).removeprefix("Value error, ")
        raise UsageError(f"--epochs {epochs}: {msg[:1].lower()}{msg[1:]} (a whole number of epochs, from 1 to "
                         "100000 and more than the config's train.warmup_epochs)") from None


def best_config(results_dir: Path, epochs: Optional[int] = None, pick: Optional[str] = None,
                keep_split: bool = False) -> dict[str, Any]:
    """The chosen trial's (see ``chosen_trial``) full resolved config as a train-file mapping, with its origin.

    By default the retraining is on the whole training set: the sweep's ``data.subset`` is dropped and its
    validation split goes back into training (``data.val_fraction: 0``). ``keep_split`` keeps both as the
    trial had them."""
    meta, best = chosen_trial(results_dir, pick)
    cfg = _trial_config(results_dir, meta, best)
    if epochs is not None:
        cfg = with_epochs(cfg, epochs)
    if not keep_split:
        cfg = cfg.with_overrides({"data.subset": None, "data.val_fraction": 0.0})
    doc = cfg.model_dump(mode="json")
    doc["name"] = f"{meta['name']}-best"
    doc["data"] = {k: v for k, v in doc["data"].items() if v is not None}
    doc["train"] = {k: v for k, v in doc["train"].items() if v is not None}
    doc["model"]["full_precision_layers"] = list(doc["model"]["full_precision_layers"])
    doc["tracking"] = {"uri": meta.get("tracking_uri"), "experiment": meta.get("experiment", meta["name"])}
    doc["output"] = f"runs/{doc['name']}"
    doc["origin"] = {"sweep": meta["name"], "results": str(Path(results_dir).resolve()),
                     "trial_id": best["trial_id"], "parent_run_id": meta.get("parent_run_id"),
                     "metric_value": float(best["last"][meta["metric"]])}
    return doc


def write_best_config(results_dir: Path, output: Path, epochs: Optional[int] = None,
                      pick: Optional[str] = None, keep_split: bool = False) -> Path:
    """Raises ``OutputError`` where ``output`` would overwrite a record or the spec (``ternsearch.results.outputs``)."""
    check_output(output, results_dir, REGENERABLE["export"])
    doc = best_config(results_dir, epochs, pick, keep_split)
    header = (f"# Best trial {doc['origin']['trial_id']} of sweep '{doc['origin']['sweep']}' "
              f"({doc['metric']['name']} = {doc['origin']['metric_value']:.4f}).\n"
              f"# {data_line(doc['data'])}\n"
              f"# Retrain it: ternsearch train {output}\n")
    order = ["name", "metric", "data", "model", "train", "tracking", "output", "origin"]
    body = yaml.safe_dump({k: doc[k] for k in order}, sort_keys=False, default_flow_style=False)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, header + body)  # a crash leaves the earlier best.yaml whole, or the new one
    return output


def results_of(source: Path, spec_file: Optional[Path] = None) -> Path:
    """The results directory ``export`` reads: ``source`` itself, or the one the sweep of spec file ``source``
    writes. Given a spec (``source`` or ``spec_file``), the results must have been made by that very file."""
    if source.is_file():
        spec = load_spec(str(source))
        results, spec_file = records_dir(spec.name, resolve_storage(spec, None)), spec_file or source
    else:
        results = source
    if spec_file is not None:
        check_same_spec(results, load_results_meta(results), spec_file,
                        "give the spec that made it, or that spec's own results directory")
    return results


def write_packed(results_dir: Path, output: Path, pick: Optional[str] = None) -> str:
    """The chosen trial's model as a packed 2-bit file (see ``trainables.packed``); a line with the sizes.
    Raises ``OutputError`` where ``output`` would overwrite a record or the spec (``ternsearch.results.outputs``)."""
    check_output(output, results_dir, REGENERABLE["packed"])
    _, best = chosen_trial(results_dir, pick)
    if not best.get("checkpoint"):
        raise ResultsError(f"{results_dir}: no trial has a checkpoint to pack yet")
    return pack_checkpoint(Path(best["checkpoint"]), output, f"{results_dir}: best trial {best['trial_id']}")


def _spec_argument(spec: Optional[str]) -> Optional[Path]:
    """``--spec FILE``: an existing file, or one line saying what it is instead."""
    if spec is None:
        return None
    path = Path(spec)
    if not path.exists():
        raise ResultsError(f"--spec {spec}: no such file (give the spec file that made the sweep)")
    if not path.is_file():
        raise ResultsError(f"--spec {spec}: not a file (give the spec file that made the sweep)")
    return path


def export_command(a) -> int:
    if is_run_dir(Path(a.results)):  # a `ternsearch train` run: --onnx/--packed only (ternsearch.results.export_run)
        return export_run_dir(a, Path(a.results))
    a.output = a.output or "best.yaml"
    results = results_of(Path(a.results), _spec_argument(a.spec))
    specs = [Path(p) for p in (a.results, a.spec) if p and Path(p).is_file()]
    # both outputs before either is written
    check_output(a.output, results, REGENERABLE["export"], specs, arg="--output")
    if a.packed:
        check_output(a.packed, results, REGENERABLE["packed"], specs, arg="--packed")
        if same_file(Path(a.packed), Path(a.output)):
            raise OutputError(f"--packed {a.packed}: refusing to write here: it is also the --output file (give "
                              "another path)")
    check_onnx_output(a, results, specs)  # --onnx, --onnx-int2 (ternsearch.results.deploy)
    out = write_best_config(results, Path(a.output), a.epochs, a.pick, a.keep_split)
    print(out)
    if a.packed:
        print(write_packed(results, Path(a.packed), a.pick))
    if a.onnx:
        print(write_onnx(results, chosen_trial(results, a.pick)[1], Path(a.onnx), a.onnx_int2))
    return 0
