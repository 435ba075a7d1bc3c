"""MLflow: the store helpers (``store``), the sweep driver's tracker and its write queue (``tracker``,
``writequeue``), models logged and registered (``model``), ``ternsearch train`` runs (``train_runs``), the trials'
runs for the report's links (``links``) and ``ternsearch ui`` (``ui``)."""
