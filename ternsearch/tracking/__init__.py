"""MLflow: the store helpers (``store``), our experiments and their UI addresses (``experiments``), the sweep
driver's tracker and its write queue (``tracker``, ``writequeue``), models logged and registered (``model``),
``ternsearch train`` runs (``train_runs``), the trials' runs for the report's links (``links``), ``ternsearch ui``
(``ui``) and bounded socket checks (``net``: can the UI listen, does a cluster's head answer)."""


def __getattr__(name: str):
    """``ternsearch.tracking.MLflowTracker``, the name a sweep's pickled Tune state from before the subpackages
    gives it (see ``ternsearch.run.tuner.FORMER_MODULES``)."""
    if name == "MLflowTracker":
        from ternsearch.tracking.tracker import MLflowTracker  # ray.tune: only when a former sweep's state asks

        return MLflowTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
