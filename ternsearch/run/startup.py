"""What keeps a sweep's start short and quiet: the driver's heavy imports made on a thread while ``ray.init``
waits for its processes, and the libraries' own output turned down (tests/test_startup.py checks both)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import warnings

from trainables.mlflow_compat import import_mlflow_pytorch

__all__ = ["WARM_MODULES", "SHARED_WITH_RAY_INIT", "import_all", "warm", "warm_imports", "quiet_libraries"]

# What the driver imports after Ray is up (about 3 s together on the 2-core machine): imported on a thread while
# ray.init waits for its processes, they cost the sweep little. Import errors surface later, at the real import.
# mlflow.pytorch is imported through trainables.mlflow_compat (its import changes the root logger).
WARM_MODULES = ("torch", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "optuna", "ternsearch.run.tuner",
                "ternsearch.tracking.tracker", "ternsearch.results.recorder", "ternsearch.run.progress",
                "ternsearch.report.render")
# Modules both ray.init (ray 2.60) and the imports above load. They are imported first, on the main thread, so that
# no module is imported by both threads at once: a circular import spanning two threads raises importlib's
# _DeadlockError. tests/test_startup.py checks that nothing else is shared.
SHARED_WITH_RAY_INIT = (
    "argparse", "ctypes.util", "email.contentmanager", "email.headerregistry", "email.policy", "gzip", "pkgutil",
    "socketserver", "timeit", "click", "ray._common.usage.usage_lib", "ray.dashboard", "opentelemetry.metrics",
    "opentelemetry.proto", "opentelemetry.trace", "opentelemetry.sdk.resources",
    "opentelemetry.sdk.environment_variables._internal", "opentelemetry.sdk.util._configurator",
    "opentelemetry.sdk.util.instrumentation", "opentelemetry.semconv._incubating.attributes.otel_attributes",
    "opentelemetry.semconv._incubating.metrics.otel_metrics")


def import_all(names) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - reported where the module is really imported
            pass


def warm(names) -> None:
    import_all(names)
    try:
        import_mlflow_pytorch()
    except Exception:  # noqa: BLE001 - reported where the model is logged
        pass


def warm_imports() -> threading.Thread:
    import_all(SHARED_WITH_RAY_INIT)  # ~0.03 s: ray has loaded most of their packages already
    thread = threading.Thread(target=warm, args=(WARM_MODULES,), name="ternsearch-warm-imports", daemon=True)
    thread.start()
    return thread


def quiet_libraries(verbose: bool) -> None:
    """A normal sweep prints our progress lines and summary only: no Ray start-up warnings, Tune tables, hints
    or tracebacks (a failed trial gets one progress line naming its error file), no MLflow or Optuna INFO lines.
    ``--verbose`` leaves the libraries' own output as it is. Call before ``ray.init`` and again once MLflow and
    Optuna are imported (they set their loggers' levels when imported)."""
    if verbose:
        return
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
    # Tune's OptunaSearch warns when the define-by-run space took over a second: ours only draws values, and what
    # it times is Optuna's own sampling (TPE's grows with the study) or a busy machine, nothing the user can fix.
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
    if "mlflow" in sys.modules:  # its model registry prints "Successfully registered model" to stderr itself
        from mlflow.utils.logging_utils import disable_logging

        disable_logging()
