"""The learning-curve table for replayed sweeps (``ternsearch sweep FILE --replay TABLE``): one CSV row per
(trial, epoch) of the complete trials of one or more recorded sweeps.

Columns: ``trial_id``, the sweep's searched parameters (named as the spec's ``search:`` keys; a conditional
parameter a trial did not use is an empty cell), ``epoch``, ``val_acc``, ``val_loss``, ``train_loss``,
``epoch_seconds``. Only complete trials are kept: status ``completed`` in trials.json and every epoch 1..N of
the sweep's ``train.epochs`` in history.jsonl (read as the sweep's own readers do: one row per epoch, so an
epoch a restarted trial reported again counts once). Several RESULTS (e.g. more random-search seeds of the same
spec) are concatenated; they must search the same parameters for the same number of epochs. A source may also be
a table this command wrote before (a ``.csv``): its rows are kept as they are, so a recording can be extended by a
later one whose results directory is all that is at hand.

    python benchmarks/replay_table.py ~/ternsearch-results/curves-cpu -o benchmarks/data/curves-cpu.csv
    python benchmarks/replay_table.py benchmarks/data/curves-cpu.csv /tmp/curves2/curves-cpu-2 \
        -o benchmarks/data/curves-cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ternsearch.errors import TernsearchError
from ternsearch.results.files import read_history, read_sweep, read_trials

METRICS = ("val_acc", "val_loss", "train_loss", "epoch_seconds")


def _epochs(meta: dict, where: Path) -> int:
    epochs = (meta.get("base") or {}).get("train", {}).get("epochs")
    if "epochs" in meta.get("params", []) or not isinstance(epochs, int):
        sys.exit(f"{where}: the table needs one fixed train.epochs (this sweep searches or lacks it)")
    return epochs


def complete_curves(results: Path) -> tuple[list[str], int, dict[str, tuple[dict, list[dict]]]]:
    """``(searched parameter names, epochs, {trial_id: (config, rows of epochs 1..N)})`` of one sweep's complete
    trials, in the order the trials started."""
    meta = read_sweep(results)
    params, epochs = list(meta["params"]), _epochs(meta, results)
    trials = read_trials(results)
    by_trial: dict[str, dict[int, dict]] = {}
    for row in read_history(results, strict=False):
        by_trial.setdefault(row.get("trial_id"), {})[int(row["epoch"])] = row
    curves = {}
    for tid, entry in sorted(trials.items(), key=lambda kv: kv[1].get("number", 0)):
        rows = by_trial.get(tid, {})
        if entry.get("status") != "completed" or any(e not in rows for e in range(1, epochs + 1)):
            continue
        if any(not isinstance(rows[e].get(m), (int, float)) for e in rows for m in METRICS):
            continue
        curves[tid] = (entry["config"], [rows[e] for e in range(1, epochs + 1)])
    return params, epochs, curves


def table_curves(table: Path) -> tuple[list[str], int, dict[str, tuple[dict, list[dict]]]]:
    """``complete_curves`` of a table written by ``write_table``, its cells as the strings it holds."""
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        if header[:1] != ["trial_id"] or "epoch" not in header:
            sys.exit(f"{table}: not a replay table (no trial_id and epoch columns)")
        params = header[1:header.index("epoch")]
        curves: dict[str, tuple[dict, list[dict]]] = {}
        for row in reader:
            curves.setdefault(row["trial_id"], ({p: row[p] or None for p in params}, []))[1].append(row)
    epochs = {len(rows) for _, rows in curves.values()}
    if len(epochs) != 1:
        sys.exit(f"{table}: its trials have {sorted(epochs)} epochs; a table holds one number")
    return params, epochs.pop(), curves


def write_table(sources: list[Path], output: Path) -> tuple[int, int, float]:
    """Write the table of ``sources`` (results directories or earlier tables) to ``output``; returns (trials,
    rows, the sum of the epochs' ``epoch_seconds``). ``output`` may be one of the sources: they are all read
    before it is written."""
    columns, epochs, seen, out_rows, seconds = None, None, set(), [], 0.0
    for results in sources:
        params, n, curves = table_curves(results) if results.suffix == ".csv" else complete_curves(results)
        if columns is None:
            columns, epochs = params, n
        elif (params, n) != (columns, epochs):
            sys.exit(f"{results}: searches {params} for {n} epochs, unlike {sources[0]} ({columns}, {epochs} "
                     "epochs): a table holds one space")
        for tid, (config, rows) in curves.items():
            if tid in seen:
                sys.exit(f"{results}: trial id {tid} is already in the table (the same results twice?)")
            seen.add(tid)
            for row in rows:
                seconds += float(row["epoch_seconds"])
                out_rows.append([tid, *("" if config.get(p) is None else config[p] for p in columns),
                                 row["epoch"], *(row[m] for m in METRICS)])
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["trial_id", *(columns or []), "epoch", *METRICS])
        writer.writerows(out_rows)
    return len(seen), len(out_rows), seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path,
                    help="results directories of recorded sweeps, or tables written before (.csv)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the CSV to write")
    a = ap.parse_args()
    try:
        trials, rows, seconds = write_table(a.results, a.output)
    except TernsearchError as exc:
        sys.exit(str(exc))
    print(f"{a.output}: {trials} complete trials, {rows} rows; their epochs took {seconds / 60:.1f} min of "
          "training in all (the epoch_seconds column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
