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
from pathlib import Path
from typing import Any, Optional

from ternsearch.errors import PreflightError, ResultsError, SweepFailedError
from ternsearch.tracking.store import copy_redacted, without_credentials
from ternsearch.run.preflight import (check_environment, check_fits, check_same_spec, local_resources, resolve_storage,
                                  spec_digest)
from ternsearch.spec.sweepfile import SweepSpec, load_spec

__all__ = ["sweep_command", "run_sweep", "best_trial"]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_trial(trials: dict, metric: str, mode: str, objectives: Optional[list] = None) -> Optional[dict]:
    """The trial with the best last-reported metric; completed trials first, then any that reported.

    With several ``objectives`` (``[[name, mode], ...]``, the first being ``metric``), ties on the first are broken
    by the next ones in order, so the choice is never a trial another completed trial beats on every objective;
    a tie on all of them goes to the earliest trial (its ``number``)."""
    rest = [(n, m) for n, m in (objectives or []) if n != metric]

    def signed(value, m):
        if not isinstance(value, (int, float)):
            return float("-inf")
        return value if m == "max" else -value

    def key(t):
        last = t["last"]
        # A tie on every objective goes to the earliest trial, as the report ranks them (trials.json is keyed
        # by trial id, whose order says nothing).
        number = t.get("number")
        return (signed(last.get(metric), mode), *(signed(last.get(n), m) for n, m in rest),
                -number if isinstance(number, int) else float("-inf"))

    reported = [t for t in trials.values() if isinstance(t.get("last", {}).get(metric), (int, float))
                and t["status"] != "failed"]
    completed = [t for t in reported if t["status"] == "completed"]
    pool = completed or reported
    return max(pool, key=key) if pool else None


def pareto_trials(trials: dict, objectives: list[list[str]]) -> list[dict]:
    """The completed trials no other completed trial beats on every objective (``[[name, mode], ...]``), in
    trial order. ASHA-stopped trials are left out: their values are from an earlier epoch than the others'."""
    from ternsearch.report.data import pareto_front

    def has_all(t):
        return all(isinstance(t.get("last", {}).get(name), (int, float)) for name, _ in objectives)

    done = [t for t in trials.values() if t["status"] == "completed" and has_all(t)]
    front = pareto_front([[t["last"][name] for name, _ in objectives] for t in done],
                         maximize=[mode == "max" for _, mode in objectives])
    return [done[i] for i in front]


def _describe_plan(spec: SweepSpec, plan, results_dir: str, uri: str) -> str:
    from ternsearch.spec.space import ordered

    lines = [f"sweep '{spec.name}' from {spec.file}",
             f"  metric: {spec.metric.name} ({spec.metric.mode})",
             f"  searcher: {spec.searcher.algorithm} (seed {spec.searcher.seed}), {spec.searcher.num_samples} trials, "
             f"up to {plan.max_concurrent} at once",
             f"  scheduler: {spec.scheduler.algorithm}" + (
                 f" (grace {spec.scheduler.grace_period}, reduction {spec.scheduler.reduction_factor:g}, "
                 f"max_t {plan.max_epochs})" if spec.scheduler.algorithm == "asha" else ""),
             f"  budget: at most {spec.searcher.num_samples * plan.max_epochs} epochs "
             f"({plan.max_epochs} per trial)",
             f"  trial: {plan.mode}, {plan.workers} worker(s), {plan.cpus_per_worker:g} CPU"
             + (f" + {plan.gpus_per_worker:g} GPU" if plan.use_gpu else "") + " each; "
             f"a trial takes {', '.join(f'{v:g} {k}' for k, v in plan.trial_resources.items())}",
             f"  model: {spec.model.arch} ({spec.model.quantizer}), data subset {spec.data.subset or 'all'}",
             "  search space:"]
    lines += [f"    {p.name}: {p.describe()}" for p in ordered(spec.params)]
    lines += [f"  results: {results_dir}", f"  tracking: {uri}"]
    return "\n".join(lines)


Nodes = list[tuple[dict[str, float], int]]  # (resources of a node, how many such nodes)

# Where the Ray cluster launcher (`ray up`) leaves the cluster's config on the head node; its autoscaler reads it.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def _autoscaler_nodes(bootstrap: str = BOOTSTRAP_CONFIG) -> Optional[Nodes]:
    """Every node the cluster's autoscaler may run at once (head included), or None without an autoscaler.

    From the config the autoscaler publishes in the GCS (KubeRay, autoscaler v2), else from the cluster
    launcher's config on the head. A cluster with `min_workers: 0` GPU nodes has no GPU until a trial asks
    for one: the plan and the checks must count the nodes it can add, not only those up now.
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()  # private API (checked against ray 2.60)
    except Exception:  # not connected, or not published
        config = None
    if config is not None and config.node_group_configs:
        return [({k: float(v) for k, v in g.resources.items()}, g.max_count if g.max_count >= 0 else 1000)
                for g in config.node_group_configs if g.resources and g.max_count != 0] or None
    return launcher_nodes(bootstrap)


def launcher_nodes(path: str) -> Optional[Nodes]:
    """The nodes a cluster-launcher config (cluster.yaml, or ~/ray_bootstrap_config.yaml on the head) may run
    at once: the head plus each worker type's max_workers (capped by the top-level max_workers)."""
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        import yaml

        doc = yaml.safe_load(path.read_text()) or {}
        types = doc.get("available_node_types") or {}
        head_type, cap = doc.get("head_node_type"), int(doc.get("max_workers", 1000))
        nodes = []
        for name, t in types.items():
            res = {k: float(v) for k, v in (t.get("resources") or {}).items()}
            count = min(int(t.get("max_workers", 0)), cap) + (name == head_type)
            if res and count:
                nodes.append((res, count))
        return nodes or None
    except Exception:  # a config we cannot read: plan with the live nodes
        return None


def records_dir(name: str, storage_path: str) -> Path:
    """Where the sweep's own records (sweep.json, trials.json, history.jsonl, best.yaml, report) live.

    Beside Tune's experiment for local and shared-filesystem storage; for object storage (s3://, gs://),
    on the driver's disk under ~/.ternsearch/sweeps/NAME, since the records are appended to as results come.
    """
    if "://" in storage_path:
        return Path("~/.ternsearch/sweeps").expanduser() / name
    return Path(storage_path) / name


# What the driver imports after Ray is up (about 3 s together on the 2-core machine): imported on a thread while
# ray.init waits for its processes, they cost the sweep little. Import errors surface later, at the real import.
# mlflow.pytorch is imported through trainables.mlflow_compat (its import changes the root logger).
_WARM_MODULES = ("torch", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "optuna", "ternsearch.run.tuner",
                 "ternsearch.tracking.tracker", "ternsearch.results.recorder", "ternsearch.run.progress",
                 "ternsearch.report.render")
# Modules both ray.init (ray 2.60) and the imports above load. They are imported first, on the main thread, so that
# no module is imported by both threads at once: a circular import spanning two threads raises importlib's
# _DeadlockError. tests/test_startup.py checks that nothing else is shared.
_SHARED_WITH_RAY_INIT = (
    "argparse", "ctypes.util", "email.contentmanager", "email.headerregistry", "email.policy", "gzip", "pkgutil",
    "socketserver", "timeit", "click", "ray._common.usage.usage_lib", "ray.dashboard", "opentelemetry.metrics",
    "opentelemetry.proto", "opentelemetry.trace", "opentelemetry.sdk.resources",
    "opentelemetry.sdk.environment_variables._internal", "opentelemetry.sdk.util._configurator",
    "opentelemetry.sdk.util.instrumentation", "opentelemetry.semconv._incubating.attributes.otel_attributes",
    "opentelemetry.semconv._incubating.metrics.otel_metrics")


def _import_all(names) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - reported where the module is really imported
            pass


def _warm(names) -> None:
    _import_all(names)
    try:
        from trainables.mlflow_compat import import_mlflow_pytorch

        import_mlflow_pytorch()
    except Exception:  # noqa: BLE001 - reported where the model is logged
        pass


def _warm_imports() -> threading.Thread:
    _import_all(_SHARED_WITH_RAY_INIT)  # ~0.03 s: ray has loaded most of their packages already
    thread = threading.Thread(target=_warm, args=(_WARM_MODULES,), name="ternsearch-warm-imports", daemon=True)
    thread.start()
    return thread


def quiet_libraries(verbose: bool) -> None:
    """A normal sweep prints our progress lines and summary only: no Ray start-up warnings, Tune tables, hints
    or tracebacks (a failed trial gets one progress line naming its error file), no MLflow or Optuna INFO lines.
    ``--verbose`` leaves the libraries' own output as it is. Call before ``ray.init`` and again once MLflow and
    Optuna are imported (they set their loggers' levels when imported)."""
    if verbose:
        return
    import logging

    # Tune's new console output prints a configuration box, the results path and a TensorBoard hint even at
    # verbose=0; its legacy reporter at verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name, level in (("ray", logging.ERROR), ("ray.tune", logging.CRITICAL), ("ray.train", logging.CRITICAL),
                        ("mlflow", logging.WARNING), ("alembic", logging.WARNING), ("optuna", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    optuna = sys.modules.get("optuna")
    if optuna is not None:
        optuna.logging.set_verbosity(logging.WARNING)
    if "mlflow" in sys.modules:  # its model registry prints "Successfully registered model" to stderr itself
        from mlflow.utils.logging_utils import disable_logging

        disable_logging()


def _cluster(address: Optional[str], dashboard: bool = True, verbose: bool = True) -> tuple[dict[str, float], Nodes]:
    """The cluster's resources, all nodes together, and node by node (nodes its autoscaler may add included).

    A local Ray (no ``address``) is started with its dashboard on loopback only when ``dashboard`` is true: Ray
    Train V2 polls the State API the dashboard serves, but trials that run in their Tune process do not, and the
    dashboard's processes cost about a second of start-up on 2 cores (benchmarks/sweep_overhead.py)."""
    import ray

    kwargs = {}
    if address is None:
        kwargs = ({"include_dashboard": True, "dashboard_host": "127.0.0.1"} if dashboard
                  else {"include_dashboard": False})
    # Not verbose: trials' own output stays in their log files under Ray's session directory.
    ray.init(address=address, ignore_reinit_error=True, configure_logging=True,
             logging_level="WARNING" if verbose else "ERROR", log_to_driver=verbose, **kwargs)
    nodes: Nodes = [({k: float(v) for k, v in n["Resources"].items()}, 1) for n in ray.nodes() if n.get("Alive")]
    if address is not None:
        scaled = _autoscaler_nodes()
        if scaled and sum(c for _, c in scaled) >= len(nodes):
            nodes = scaled
    return _total(nodes), nodes


def _total(nodes: Nodes) -> dict[str, float]:
    total: dict[str, float] = {}
    for res, count in nodes:
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + v * count
    return total


def _check_one_node(spec: SweepSpec, plan, where: str) -> None:
    """Every trial needs each of its bundles on a single node: one that fits no node would wait forever."""
    if plan.fits > 0:
        return
    from ternsearch.run.tuner import trial_bundles

    need = " + ".join(f"{count} x {{{', '.join(f'{k}: {v:g}' for k, v in b.items())}}}"
                      for b, count in trial_bundles(spec, plan.mode, plan.use_gpu))
    hint = ("in function mode (workers_per_trial: 1) the driver is the trainer, so driver_resources must be on a "
            "node that also has its CPUs/GPUs: drop driver_resources or use trainer: torchtrainer"
            if plan.mode == "function" and spec.resources.driver_resources else
            "lower cpus_per_worker / gpus_per_worker, or check driver_resources names a resource a node has")
    raise PreflightError(str(spec.located.error(
        ("resources",), f"a trial needs {need}, each on one node, but no node of {where} holds that ({hint})")))


def _check_results(results_dir: Path, spec_file: str, resume: bool) -> None:
    from ternsearch.results.files import SWEEP

    meta_path = results_dir / SWEEP
    if resume:
        if not meta_path.exists():
            raise ResultsError(f"{results_dir}: no sweep to resume here (no {SWEEP}); run without --resume")
        check_same_spec(results_dir, json.loads(meta_path.read_text()), spec_file,
                        "--resume needs the very file that started it (or change name: or storage.path to start a "
                        "new sweep)")
    elif meta_path.exists():
        raise ResultsError(f"{results_dir}: a sweep named '{results_dir.name}' already exists there "
                           "(use --resume to continue it, or change name: / storage.path)")


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
              quiet: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep ``spec``; returns a summary (best trial, paths)."""
    from ternsearch.tracking.store import check_reachable, default_tracking_uri

    quiet_libraries(verbose)

    storage_path = resolve_storage(spec, storage)
    results_dir = records_dir(spec.name, storage_path)
    check_environment(spec, storage_path, address)
    _check_results(results_dir, spec.file, resume)
    uri = default_tracking_uri(results_dir, tracking_uri or spec.tracking.uri)
    if spec.tracking.enabled:
        check_reachable(uri)  # an unreachable server: one line, in seconds, before Ray starts
    if dry_run and address is None:
        cluster, nodes = local_resources(), None
    else:
        import ray

        warm = _warm_imports()
        owns_ray = not ray.is_initialized()
        dashboard = spec.resources.trial_mode == "torchtrainer" or os.environ.get("TERNSEARCH_RAY_DASHBOARD") == "1"
        cluster, nodes = _cluster(address, dashboard=dashboard, verbose=verbose)
        warm.join()
        quiet_libraries(verbose)
    from ternsearch.run.tuner import make_plan

    plan = dataclasses.replace(make_plan(spec, cluster, nodes), local=address is None)
    where = "this machine" if address is None else f"the cluster at {address}"
    check_fits(spec, plan.trial_resources, cluster, where, multi_node=sum(c for _, c in nodes or []) > 1,
               storage=storage, tracking_uri=tracking_uri)
    _check_one_node(spec, plan, where)
    _say(_describe_plan(spec, plan, str(results_dir), without_credentials(uri)))
    if dry_run:
        return {"dry_run": True, "plan": plan.__dict__}
    return _execute(spec, plan, storage_path, results_dir, uri, resume=resume, quiet=quiet, owns_ray=owns_ray,
                    verbose=verbose)


def _shutdown_ray_in_background() -> threading.Thread:
    """Stop the Ray instance this sweep started while the driver logs the model and writes the report (it takes
    ~1.3 s and needs no CPU of the driver's). Nothing after tuner.fit() uses Ray."""
    import ray

    thread = threading.Thread(target=ray.shutdown, name="ternsearch-ray-shutdown", daemon=True)
    thread.start()
    return thread


def _execute(spec, plan, storage_path, results_dir, uri, *, resume, quiet, owns_ray=False,
             verbose=False) -> dict[str, Any]:
    from ternsearch.run.failfast import SetupFailureGuard
    from ternsearch.run.progress import SweepProgress
    from ternsearch.results.files import SWEEP
    from ternsearch.results.recorder import SweepRecorder
    from ternsearch.tracking.tracker import MLflowTracker, flatten_config
    from ternsearch.run.tuner import build_tuner, prestart_train_services, restore_tuner

    if plan.mode == "torchtrainer":
        prestart_train_services()

    results_dir.mkdir(parents=True, exist_ok=True)
    meta_path = results_dir / SWEEP
    meta = json.loads(meta_path.read_text()) if resume else {
        "name": spec.name, "spec_file": str(Path(spec.file).resolve()), "spec_sha256": spec_digest(spec.file),
        "sweep_id": f"{spec.name}-{int(time.time())}", "metric": spec.metric.name, "mode": spec.metric.mode,
        "objectives": [[m.name, m.mode] for m in spec.objectives],
        "params": [p.name for p in spec.params], "base": spec.base_config().model_dump(mode="json"),
        "storage_path": storage_path, "started": time.time(),
    }
    tracker = None
    if spec.tracking.enabled:
        tracker = MLflowTracker(
            uri=uri, experiment=spec.tracking.experiment or spec.name, sweep_name=spec.name,
            sweep_id=meta["sweep_id"], spec_file=spec.file, results_dir=str(results_dir),
            metric=spec.metric.name, mode=spec.metric.mode,
            fixed_params=flatten_config(spec.base_config().model_dump(mode="json")), quiet=not verbose,
        )
        meta["parent_run_id"] = tracker.start()  # an unreachable store fails here, before any trial
        if resume:
            tracker.reconcile()
    meta.update(tracking_uri=without_credentials(uri), experiment=spec.tracking.experiment or spec.name,
                mode_trial=plan.mode)
    meta_path.write_text(json.dumps(meta, indent=1))
    if not resume:
        copy_redacted(spec.file, results_dir / "spec.yaml")  # a tracking URI's user:password masked
    from ternsearch.run.tuner import ReleaseTrainResources

    guard = SetupFailureGuard(needed=min(spec.searcher.num_samples, 2))
    callbacks = [SweepRecorder(str(results_dir), meta["params"]), SweepProgress(spec, plan, quiet=quiet),
                 ReleaseTrainResources(), guard]
    if tracker is not None:
        callbacks.append(tracker)
    tuner = (restore_tuner(spec, plan, storage_path, callbacks, guard.stopper) if resume
             else build_tuner(spec, plan, storage_path, callbacks, guard.stopper))
    # Tune warns whenever it snapshots state often; with a checkpoint every epoch that is by design.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune saves its experiment state at most every 10 s by default; a killed driver loses what happened since.
    # Every 3 s narrows that window (the trials' own checkpoints and our records are written as results come).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    status = "FAILED"
    try:
        # Tune prints its own tables to stdout; keep stdout for the summary JSON (scripts parse it).
        with _SignalToInterrupt(), contextlib.redirect_stdout(sys.stderr):
            tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
    finally:
        if tracker is not None and (status != "FINISHED" or guard.reason):
            tracker.close("FAILED" if guard.reason else status)
    stopping = _shutdown_ray_in_background() if owns_ray else None
    try:
        if guard.reason:  # every first trial failed the same way before training: the cause is the sweep's
            raise SweepFailedError(f"{guard.reason}; fix it, then: ternsearch sweep {spec.file} --resume")
        return _after_fit(spec, results_dir, meta, tracker, status)
    finally:
        if stopping is not None:
            stopping.join()


def _after_fit(spec, results_dir: Path, meta: dict, tracker, status: str) -> dict[str, Any]:
    from ternsearch.results.files import read_trials

    trials = read_trials(results_dir)
    unfinished = [t for t in trials.values() if t["status"] == "running"]
    if status == "KILLED" or unfinished:
        if tracker is not None:
            tracker.close("KILLED")
        _say(f"sweep interrupted: {len(trials) - len(unfinished)} trials finished, {len(unfinished)} unfinished. "
             f"Resume with: ternsearch sweep {spec.file} --resume")
        return {"interrupted": True, "results": str(results_dir)}
    return _finish(spec, results_dir, meta, trials, tracker)


def _finish(spec, results_dir: Path, meta: dict, trials: dict, tracker) -> dict[str, Any]:
    from ternsearch.results.export import write_best_config

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
            if best.get("checkpoint"):
                summary["model_uri"] = _log_best(tracker, best, best_yaml)
        finally:
            tracker.close("FINISHED")
            summary["tracking_unwritten"] = len(tracker.unwritten)
    from ternsearch.report.render import write_report

    try:
        summary["report"] = str(write_report(results_dir))
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
    from collections import Counter

    reasons = Counter(t.get("reason") or "no reason recorded" for t in trials.values() if t["status"] == "failed")
    if not reasons:
        return f"{results_dir}: no trial reported {metric}"
    reason, count = reasons.most_common(1)[0]
    first = next(tid for tid, t in trials.items() if t["status"] == "failed" and (t.get("reason") or
                                                                                  "no reason recorded") == reason)
    return (f"{results_dir}: no trial reported {metric}: {count} of {len(trials)} trials failed with "
            f"'{reason}' (first: trial {first}; every trial's reason is in {results_dir / 'trials.json'})")


def _log_best(tracker, best: dict, best_yaml: Path) -> str:
    from ray.tune import Checkpoint

    ckpt = Checkpoint(best["checkpoint"]) if "://" in best["checkpoint"] else None
    if ckpt is None:
        return tracker.log_best(best["trial_id"], best["checkpoint"], best_yaml.read_text())
    with ckpt.as_directory() as directory:
        return tracker.log_best(best["trial_id"], directory, best_yaml.read_text())


def sweep_command(a) -> int:
    spec = load_spec(a.file)
    summary = run_sweep(spec, address=a.address, storage=a.storage, tracking_uri=a.tracking_uri,
                        resume=a.resume, dry_run=a.dry_run, quiet=a.quiet, verbose=a.verbose)
    if summary.get("interrupted"):
        return 130
    print(json.dumps(summary, indent=1, default=str))
    return 0
