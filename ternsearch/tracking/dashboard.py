"""``ternsearch dashboard``: optuna-dashboard (an optional extra: ``pip install 'ternsearch[dashboard]'``) on a
sweep's own Optuna study, ``RESULTS/optuna.db``, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys
from pathlib import Path

from ternsearch.errors import ResultsError, UsageError
from ternsearch.results.export import load_results_meta
from ternsearch.results.files import STUDY
from ternsearch.tracking.ui import LOOPBACK, listen_port

__all__ = ["dashboard_command"]


def dashboard_command(a) -> int:
    results = Path(a.results)
    meta = load_results_meta(results)
    db = results / STUDY
    if not db.is_file():
        raise ResultsError(f"{results}: no Optuna study there ({STUDY}; a sweep started before ternsearch kept its "
                           "study on disk has it only in Tune's state)")
    try:
        # optuna-dashboard (and bottle): an optional extra, imported by this command only
        from optuna_dashboard import run_server
    except ImportError:
        raise UsageError("ternsearch dashboard needs optuna-dashboard: pip install 'ternsearch[dashboard]' (or pip "
                         "install optuna-dashboard)") from None
    port = listen_port(a.host, a.port)
    if a.host not in (LOOPBACK, "localhost", "::1"):
        print(f"warning: optuna-dashboard will listen on {a.host}: anyone who can reach this machine can read the "
              "study and change its notes (no login)", file=sys.stderr)
    shown = LOOPBACK if a.host in ("0.0.0.0", "localhost") else a.host
    print(f"optuna-dashboard for sweep '{meta.get('name')}' (study '{meta.get('sweep_id')}'): "
          f"http://{shown}:{port}/dashboard/  (Ctrl-C stops it)", flush=True)
    try:
        run_server(f"sqlite:///{db.resolve()}", host=a.host, port=port)
    except KeyboardInterrupt:
        pass
    return 0
