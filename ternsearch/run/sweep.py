"""``ternsearch sweep``: check, plan, run (or resume) a search, then export, log and report the best trial."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from ternsearch.errors import RecordError, ResultsError, SweepFailedError
from ternsearch.results.atomic import write_atomic
from ternsearch.results.best import best_trial, pareto_trials
from ternsearch.results.export import write_best_config
from ternsearch.results.files import LOST, SWEEP, TRIALS, read_history, read_json, read_sweep
from ternsearch.results.location import (check_same_spec, check_warm_start, records_dir, resolve_storage,
                                         resume_command, spec_digest, spec_keys)
from ternsearch.results.rebuild import recover_trials
from ternsearch.run.cluster import check_cluster, env_address, start_cluster
from ternsearch.run.preflight import (check_environment, check_fits, check_one_node, check_tracking_store,
                                     local_resources)
from ternsearch.run.replay import check_replay_resume, load_replay
from ternsearch.run.startup import quiet_libraries, warm_imports
from ternsearch.spec import SweepSpec, load_spec
from ternsearch.spec.describe import metric_words
from ternsearch.spec.space import ordered
from ternsearch.tracking.store import copy_redacted, resolve_sweep_uri, without_credentials

__all__ = ["sweep_command", "run_sweep", "check_results"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe_plan(spec: SweepSpec, plan, results_dir: str, uri: str) -> str:
    lines = [f"sweep '{spec.name}' from {spec.file}",
             f"  metric: {metric_words(spec.objectives, spec.located.data.get('metric'))}",
             f"  searcher: {spec.searcher.algorithm} (seed {spec.searcher.seed}), {spec.searcher.num_samples} trials, "
             f"up to {plan.max_concurrent} at once",
             f"  scheduler: {spec.scheduler.algorithm}" + (
                 f" (grace {spec.scheduler.grace_period}, reduction {spec.scheduler.reduction_factor:g}, "
                 f"max_t {plan.max_epochs})" if spec.scheduler.algorithm == "asha" else ""),
             f"  budget: at most {spec.searcher.num_samples * plan.max_epochs} epochs "
             f"({plan.max_epochs} per trial)" + _stopping_words(spec),
             f"  trial: {plan.mode}, {plan.workers} worker(s), {plan.cpus_per_worker:g} CPU"
             + (f" + {plan.gpus_per_worker:g} GPU" if plan.use_gpu else "") + " each; "
             f"a trial takes {', '.join(f'{v:g} {k}' for k, v in plan.trial_resources.items())}",
             f"  model: {spec.model.arch} ({spec.model.quantizer}), data subset {spec.data.subset or 'all'}",
             "  search space:"]
    lines += [f"    {p.name}: {p.describe()}" for p in ordered(spec.params)]
    lines += [f"  results: {results_dir}", f"  tracking: {uri}"]
    return "\n".join(lines)


def _stopping_words(spec: SweepSpec) -> str:
    words = [f"{spec.searcher.time_budget} of wall time"] if spec.searcher.time_budget is not None else []
    modes = {m.name: m.mode for m in spec.objectives}
    words += [f"until a trial has {k} {'>=' if modes[k] == 'max' else '<='} {v:g}"
              for k, v in spec.searcher.stop_at.items()]
    return f", {' or '.join(words)}" if words else ""


def check_results(results_dir: Path, spec_file: str, resume: bool) -> None:
    """Before Ray starts: ``--resume`` needs the sweep this very file started, a new sweep an unused name."""
    meta_path = results_dir / SWEEP
    if resume:
        if not meta_path.exists():
            raise ResultsError(f"{results_dir}: no sweep to resume here (no {SWEEP}); run without --resume")
        check_same_spec(results_dir, read_sweep(results_dir), spec_file,
                        "--resume needs the file that started it (or change name: or storage.path to start a new "
                        "sweep)")
        check_records(results_dir)
    elif meta_path.exists():
        raise ResultsError(f"{results_dir}: a sweep named '{results_dir.name}' already exists there "
                           "(use --resume to continue it, or change name: / storage.path)")


def check_records(results_dir: Path) -> None:
    """Before Ray starts, for ``--resume``: the records the resumed sweep goes on from. A torn trials.json is
    rebuilt from history.jsonl and Tune's state (one warning line here; the recorder rewrites it once Tune has
    restored), history.jsonl's torn or corrupt lines are skipped (one warning line); a trials.json with nothing to
    rebuild it from and a torn trials_lost.json are one line and exit 1. Nothing is written here."""
    _, rebuilt = recover_trials(results_dir)
    if rebuilt:
        _say(f"warning: {rebuilt}; the resumed sweep rewrites {TRIALS}")
    read_history(results_dir, strict=False, warn=_say)
    try:
        read_json(results_dir / LOST, "a lost-trials record", {})
    except RecordError as exc:
        raise exc.with_hint("move it away to resume (it lists the trials an earlier driver lost)") from None


class _SignalToInterrupt:
    """SIGTERM stops the sweep like SIGINT does: Tune saves its state and the user is told how to resume."""

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old)


def run_sweep(spec: SweepSpec, *, address: Optional[str] = None, storage: Optional[str] = None,
              tracking_uri: Optional[str] = None, resume: bool = False, dry_run: bool = False,
              quiet: bool = False, verbose: bool = False, replay: Optional[str] = None) -> dict[str, Any]:
    """Run (or resume) the sweep ``spec``; returns a summary (best trial, paths). With ``replay`` (a table's path),
    every trial replays the table's nearest recorded trial instead of training (``ternsearch.run.replay``)."""
    quiet_libraries(verbose)
    shown = None
    if address is None:  # ray.init would join $RAY_ADDRESS by itself: check it and plan for it as for --address
        address, shown = env_address()

    storage_path = resolve_storage(spec, storage)
    results_dir = records_dir(spec.name, storage_path)
    table = load_replay(spec, replay) if replay else None
    # os.path.isfile, not Path.is_file: False for a name too long (the storage check then says what is wrong)
    former = read_sweep(results_dir) if resume and os.path.isfile(results_dir / SWEEP) else None
    if former:  # before the data check: a replayed sweep reads no data
        check_replay_resume(results_dir, former, replay)
    check_environment(spec, storage_path, address, storage, inputs=table is None)
    check_results(results_dir, spec.file, resume)
    if not resume:
        check_warm_start(spec)
    # An unreachable server: one line, in seconds, before Ray starts (the only probe of the sweep).
    uri = resolve_sweep_uri(results_dir, tracking_uri, spec.tracking.uri, former, probe=spec.tracking.enabled)
    check_tracking_store(uri, (lambda d: f"--tracking-uri {tracking_uri}: {d}") if tracking_uri else
                         (lambda d: str(spec.located.error(("tracking", "uri"), d))))
    if dry_run and address is None:
        cluster, nodes = local_resources(), None
    else:
        if address is not None:
            check_cluster(address, shown=shown)  # seconds, not ray.init's minutes, for a cluster that is not there
        # Ray takes seconds to import: the checks above run without it, and so does a local dry run
        import ray

        warm = warm_imports()
        owns_ray = not ray.is_initialized()
        dashboard = spec.resources.trial_mode == "torchtrainer" or os.environ.get("TERNSEARCH_RAY_DASHBOARD") == "1"
        cluster, nodes = start_cluster(address, dashboard=dashboard, verbose=verbose)
        warm.join()
        quiet_libraries(verbose)
    # Ray Tune: not on the path of the checks above
    from ternsearch.run.tuner import make_plan

    plan = dataclasses.replace(make_plan(spec, cluster, nodes), local=address is None)
    where = "this machine" if address is None else f"the cluster at {address}"
    check_fits(spec, plan.trial_resources, cluster, where, multi_node=sum(c for _, c in nodes or []) > 1,
               storage=storage, tracking_uri=uri)
    check_one_node(spec, plan, where)
    _say(_describe_plan(spec, plan, str(results_dir), without_credentials(uri)) + (
        f"\n  replay: {replay} ({len(table.curves)} recorded trials x {table.epochs} epochs; no training)"
        if table else ""))
    if dry_run:
        return {"dry_run": True, "plan": plan.__dict__}
    return _execute(spec, plan, storage_path, results_dir, uri, resume=resume, quiet=quiet, owns_ray=owns_ray,
                    verbose=verbose, replay=(replay, table) if table else None)


def _shutdown_ray_in_background() -> threading.Thread:
    """Stop the Ray instance this sweep started while the driver logs the model and writes the report (it takes
    ~1.3 s and needs no CPU of the driver's). Nothing after tuner.fit() uses Ray."""
    import ray  # loaded by now: the sweep has run; a local import keeps this module's import light

    thread = threading.Thread(target=ray.shutdown, name="ternsearch-ray-shutdown", daemon=True)
    thread.start()
    return thread


def _execute(spec, plan, storage_path, results_dir, uri, *, resume, quiet, owns_ray=False,
             verbose=False, replay=None) -> dict[str, Any]:
    # Ray Tune, like the modules below: imported after Ray is up (the warm-up thread has them ready)
    from ternsearch.run.stopping import SweepStops
    from ternsearch.run.tuner import prestart_train_services

    if plan.mode == "torchtrainer":
        prestart_train_services()
    meta, tracker = _open_records(spec, plan, storage_path, results_dir, uri, resume=resume, verbose=verbose,
                                  replay=replay[0] if replay else None)
    stops = SweepStops(spec)
    tuner, guard = _tuner(spec, plan, storage_path, results_dir, meta, tracker, stops, resume=resume, quiet=quiet,
                          replay=replay[1] if replay else None)
    status = _fit(tuner, tracker, guard, stops)
    stopping = _shutdown_ray_in_background() if owns_ray else None
    try:
        if guard.reason:  # every first trial failed the same way before training: the cause is the sweep's
            raise SweepFailedError(f"{guard.reason}; fix it, then: ternsearch sweep {spec.file} --resume")
        return _after_fit(spec, results_dir, meta, tracker, status, stops)
    finally:
        if stopping is not None:
            stopping.join()


def _open_records(spec, plan, storage_path, results_dir: Path, uri: str, *, resume: bool, verbose: bool,
                  replay: Optional[str] = None):
    """``(sweep.json's contents, the MLflow tracker or None)``: sweep.json written (or updated on resume) and the
    spec copied beside it; the tracker's parent run started, so an unreachable store fails before any trial."""
    from ternsearch.tracking.tracker import MLflowTracker, flatten_config  # MLflow and Ray Tune

    results_dir.mkdir(parents=True, exist_ok=True)
    meta_path = results_dir / SWEEP
    meta = read_sweep(results_dir) if resume else {
        "name": spec.name, "spec_file": str(Path(spec.file).resolve()), "spec_sha256": spec_digest(spec.file),
        "sweep_id": f"{spec.name}-{int(time.time())}", "metric": spec.metric.name, "mode": spec.metric.mode,
        "objectives": [[m.name, m.mode] for m in spec.objectives],
        "params": [p.name for p in spec.params], "base": spec.base_config().model_dump(mode="json"),
        "storage_path": storage_path, "started": time.time(),
        **({"replay": str(Path(replay).resolve())} if replay else {}),
    }
    tracker = None
    if spec.tracking.enabled:
        tracker = MLflowTracker(
            uri=uri, experiment=spec.tracking.experiment or spec.name, sweep_name=spec.name,
            sweep_id=meta["sweep_id"], spec_file=spec.file, results_dir=str(results_dir),
            metric=spec.metric.name, mode=spec.metric.mode,
            fixed_params=flatten_config(spec.base_config().model_dump(mode="json")), quiet=not verbose,
        )
        meta["parent_run_id"] = tracker.start(probe=False)  # probed before Ray; a store down since fails here
        if resume:
            tracker.reconcile()
    # On --resume the spec may have grown (num_samples) or changed its stopping rules: the records follow it.
    meta.update(tracking_uri=without_credentials(uri), experiment=spec.tracking.experiment or spec.name,
                mode_trial=plan.mode, spec_sha256=spec_digest(spec.file), spec_keys=spec_keys(spec),
                num_samples=spec.searcher.num_samples)
    write_atomic(meta_path, json.dumps(meta, indent=1))
    copy_redacted(spec.file, results_dir / "spec.yaml")  # a tracking URI's user:password masked
    return meta, tracker


def _tuner(spec, plan, storage_path, results_dir: Path, meta: dict, tracker, stops, *, resume: bool, quiet: bool,
           replay=None):
    """``(the Tuner, new or restored, with the sweep's callbacks, its setup-failure guard)``."""
    from ternsearch.results.recorder import SweepRecorder  # Ray Tune, as all four
    from ternsearch.run.failfast import SetupFailureGuard  # Ray Tune
    from ternsearch.run.progress import SweepProgress  # Ray Tune
    from ternsearch.run.tuner import ReleaseTrainResources, build_tuner, restore_tuner  # Ray Tune

    guard = SetupFailureGuard(needed=min(spec.searcher.num_samples, 2))
    callbacks = [SweepRecorder(str(results_dir), meta["params"]), SweepProgress(spec, plan, quiet=quiet),
                 ReleaseTrainResources(), guard]
    if tracker is not None:
        callbacks.append(tracker)
    stop = stops.stopper(guard.stopper)
    tuner = (restore_tuner(spec, plan, storage_path, callbacks, stop, target=stops.target, replay=replay) if resume
             else build_tuner(spec, plan, storage_path, callbacks, stop, sweep_id=meta["sweep_id"],
                              target=stops.target, replay=replay))
    # Tune warns whenever it snapshots state often; with a checkpoint every epoch that is by design.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves its experiment state at most every 10 s by default; a killed driver loses what happened since.
    # Every 3 s narrows that window (the trials' own checkpoints and our records are written as results come).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    return tuner, guard


def _fit(tuner, tracker, guard, stops) -> str:
    """Run the trials (within the time budget, if any): ``FINISHED``, ``KILLED`` (interrupted, SIGTERM included) or
    ``FAILED``; the tracker's parent run is closed here unless the sweep finished (its best model is logged under
    it then)."""
    status = "FAILED"
    try:
        # Tune prints its own tables to stdout; keep stdout for the summary JSON (scripts parse it).
        with _SignalToInterrupt(), contextlib.redirect_stdout(sys.stderr), stops.budget:
            tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
    finally:
        if tracker is not None and (status != "FINISHED" or guard.reason):
            tracker.close("FAILED" if guard.reason else status)
    return status


def _after_fit(spec, results_dir: Path, meta: dict, tracker, status: str, stops=None) -> dict[str, Any]:
    trials, rebuilt = recover_trials(results_dir)  # rewritten by the recorder unless no callback ran
    if rebuilt:
        write_atomic(results_dir / TRIALS, json.dumps(trials, indent=1, sort_keys=True, default=str))
    _reconcile_study(spec, results_dir, meta, trials)
    unfinished = [t for t in trials.values() if t["status"] == "running"]
    # A stop that came while no trial was running ends Tune as if it had finished: count the trials as well.
    unstarted = max(0, spec.searcher.num_samples - len(trials))
    if stops is not None and stops.target is not None and stops.target.reached and status != "KILLED":
        _say(f"sweep ended: {stops.reason}")
        if stops.target.relabel(trials):
            write_atomic(results_dir / TRIALS, json.dumps(trials, indent=1, sort_keys=True, default=str))
        return {**_finish(spec, results_dir, meta, trials, tracker), "ended": stops.reason}
    if status == "KILLED" or unfinished or unstarted:
        if tracker is not None:
            tracker.close("KILLED")
        if stops is not None and stops.budget.spent and status != "KILLED":
            _say(f"sweep stopped: {stops.reason}: {len(trials) - len(unfinished)} trials finished, {len(unfinished)} "
                 f"unfinished, {unstarted} not started. Continue with: {resume_command(spec, meta)} "
                 "(each run gets the time budget)")
            return {"ended": stops.reason, "results": str(results_dir), "trials": len(trials),
                    "unfinished": len(unfinished), "not_started": unstarted}
        _say(f"sweep interrupted: {len(trials) - len(unfinished)} trials finished, {len(unfinished)} unfinished"
             + (f", {unstarted} not started" if unstarted else "")
             + f". Resume with: {resume_command(spec, meta)}")
        return {"interrupted": True, "results": str(results_dir)}
    return {**_finish(spec, results_dir, meta, trials, tracker), "ended": f"all {len(trials)} trials ran"}


def _reconcile_study(spec, results_dir: Path, meta: dict, trials: dict) -> None:
    """The study on disk agrees with trials.json: trials a killed driver left RUNNING there get their state."""
    if not meta.get("sweep_id"):
        return
    # Optuna and Ray Tune, loaded by now: the sweep has run
    from ternsearch.run.searcher import reconcile_study

    try:
        reconcile_study(results_dir, meta["sweep_id"], trials, [m.name for m in spec.objectives])
    except Exception as exc:  # noqa: BLE001 - the trials ran and are recorded; the study is a view of them
        _say(f"warning: the Optuna study in {results_dir} could not be brought up to date "
             f"({type(exc).__name__}: {exc}); trials.json is complete")


def _finish(spec, results_dir: Path, meta: dict, trials: dict, tracker) -> dict[str, Any]:
    best = best_trial(trials, spec.metric.name, spec.metric.mode, [[m.name, m.mode] for m in spec.objectives])
    summary: dict[str, Any] = {"results": str(results_dir), "tracking_uri": meta.get("tracking_uri"),
                               "trials": len(trials),
                               "statuses": {s: sum(t["status"] == s for t in trials.values())
                                            for s in ("completed", "stopped", "failed")}}
    if best is None:
        if tracker is not None:
            tracker.close("FAILED")
        raise SweepFailedError(_no_result_line(results_dir, spec.metric.name, trials))
    best_yaml = write_best_config(results_dir, results_dir / "best.yaml")
    summary.update(best_trial=best["trial_id"], best_value=best["last"][spec.metric.name],
                   best_config=best["config"], exported=str(best_yaml))
    front = []
    if spec.multi_objective:
        front = pareto_trials(trials, [[m.name, m.mode] for m in spec.objectives])
        summary["pareto"] = [{"trial_id": t["trial_id"], **{m.name: t["last"][m.name] for m in spec.objectives}}
                             for t in front]
    if tracker is not None:
        try:
            if best.get("checkpoint") and not meta.get("replay"):  # a replayed trial's checkpoint holds no model
                summary["model_uri"] = _log_best(tracker, best, best_yaml)
        finally:
            tracker.close("FINISHED")
            summary["tracking_unwritten"] = len(tracker.unwritten)
    # pandas and plotly: only once a sweep has finished
    from ternsearch.report.render import write_report

    try:
        summary["report"] = str(write_report(results_dir, warn=None))  # --resume has warned of torn lines
    except Exception as exc:  # a report bug must not fail a finished sweep; `ternsearch report` can redo it
        _say(f"warning: the report could not be written ({type(exc).__name__}: {exc}); "
             f"retry with: ternsearch report {results_dir}")
    _say(f"best trial {best['trial_id']}: {spec.metric.name} = {summary['best_value']:.4f}")
    for k, v in sorted(best["config"].items()):
        _say(f"  {k}: {v}")
    if front:
        _say(f"Pareto front ({', '.join(f'{m.mode} {m.name}' for m in spec.objectives)}): " + "; ".join(
            f"{t['trial_id']} " + " ".join(f"{t['last'][m.name]:.4f}" for m in spec.objectives) for t in front)
             + f"\n  pick one: ternsearch export {results_dir} --pick {spec.objectives[1].name}[:TOLERANCE]")
    _say(f"results: {results_dir}\nMLflow: {meta.get('tracking_uri')} (open it: ternsearch ui {results_dir})\n"
         f"best config: {best_yaml} (retrain: ternsearch train {best_yaml})")
    return summary


def _no_result_line(results_dir: Path, metric: str, trials: dict) -> str:
    """One line for a sweep none of whose trials gave a result: the most common reason, and where to look."""
    reasons = Counter(t.get("reason") or "no reason recorded" for t in trials.values() if t["status"] == "failed")
    if not reasons:
        return f"{results_dir}: no trial reported {metric}"
    reason, count = reasons.most_common(1)[0]
    first = next(tid for tid, t in trials.items() if t["status"] == "failed" and (t.get("reason") or
                                                                                  "no reason recorded") == reason)
    return (f"{results_dir}: no trial reported {metric}: {count} of {len(trials)} trials failed with "
            f"'{reason}' (first: trial {first}; every trial's reason is in {results_dir / 'trials.json'})")


def _log_best(tracker, best: dict, best_yaml: Path) -> str:
    from ray.tune import Checkpoint  # loaded by now: the sweep has run; keeps this module's import light

    ckpt = Checkpoint(best["checkpoint"]) if "://" in best["checkpoint"] else None
    if ckpt is None:
        return tracker.log_best(best["trial_id"], best["checkpoint"], best_yaml.read_text())
    with ckpt.as_directory() as directory:
        return tracker.log_best(best["trial_id"], directory, best_yaml.read_text())


def sweep_command(a) -> int:
    spec = load_spec(a.file)
    summary = run_sweep(spec, address=a.address, storage=a.storage, tracking_uri=a.tracking_uri,
                        resume=a.resume, dry_run=a.dry_run, quiet=a.quiet, verbose=a.verbose,
                        replay=getattr(a, "replay", None))
    if summary.get("interrupted"):
        return 130
    print(json.dumps(summary, indent=1, default=str))
    return 0
