"""MLflow: the store helpers (``store``), the sweep driver's tracker and its write queue (``tracker``,
``writequeue``), models logged and registered (``model``), ``ternsearch train`` runs (``train_runs``) and
``ternsearch ui`` (``ui``)."""
