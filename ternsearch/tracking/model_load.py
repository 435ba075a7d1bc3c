"""A model back from MLflow by its URI (``runs:/RUN_ID/model``, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``),
for ``ternsearch evaluate``. The model is MLflow's PyTorch flavour, a pickled module (``ternsearch.tracking.model``
logs it so): loading it runs code from the store, so load only from a store you trust."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from trainables.mlflow_compat import import_mlflow_pytorch  # imports mlflow.pytorch only when called

from ternsearch.errors import TrackingError
from ternsearch.tracking.store import default_tracking_uri, one_line, sqlite_path, sqlite_uri, using_tracking_uri

__all__ = ["MLFLOW_SCHEMES", "is_model_uri", "load_model_uri", "store_uri"]

MLFLOW_SCHEMES = ("runs:/", "models:/")


def is_model_uri(text: str) -> bool:
    return text.startswith(MLFLOW_SCHEMES)


def store_uri(given: Optional[str]) -> str:
    """The tracking store to read a model URI from: ``given`` (a URI, or a sweep's results directory holding
    ``mlflow.db``), else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``. A SQLite file must exist (MLflow would
    make an empty one).

    Raises:
        TrackingError: the SQLite file is not there (one line naming it).
    """
    if given and Path(given).expanduser().is_dir() and (Path(given).expanduser() / "mlflow.db").is_file():
        return sqlite_uri(Path(given).expanduser().resolve() / "mlflow.db")
    uri = default_tracking_uri(Path.cwd(), given)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"--tracking-uri {given or uri}: no MLflow store at {db} (give --tracking-uri URI, or a "
                            "sweep's results directory holding mlflow.db)")
    return uri


def load_model_uri(model_uri: str, tracking_uri: str):
    """The torch module logged at ``model_uri`` in the store ``tracking_uri``, on CPU in eval mode.

    Raises:
        TrackingError: MLflow cannot find or load it (one line naming the URI).
    """
    mlflow_pytorch = import_mlflow_pytorch()
    try:
        with using_tracking_uri(tracking_uri):
            model = mlflow_pytorch.load_model(model_uri, map_location="cpu")
    except Exception as exc:  # MlflowException (no such run, model or version), OSError, pickle errors
        raise TrackingError(f"{model_uri}: MLflow cannot load it from {tracking_uri} ({one_line(exc, 200)})") from None
    return model.eval()
