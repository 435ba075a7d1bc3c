"""``ternsearch evaluate``'s numbers and files: accuracy, per-class accuracy and the confusion matrix (compute), then
``confusion.csv``, ``per_class.csv`` and ``confusion.html`` (a plotly heatmap, plotly.js inline: it opens offline)
and the table printed (render)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ternsearch.results.atomic import write_atomic

__all__ = ["FILES", "Evaluation", "confusion", "per_class_rows", "table", "write_files"]

FILES = ("confusion.csv", "per_class.csv", "confusion.html")


@dataclass(frozen=True)
class Evaluation:
    """``matrix[t][p]``: records of true class ``t`` predicted as ``p``; ``classes`` their names."""

    matrix: list[list[int]]
    classes: Sequence[str]

    @property
    def records(self) -> int:
        return sum(map(sum, self.matrix))

    @property
    def correct(self) -> int:
        return sum(self.matrix[i][i] for i in range(len(self.classes)))

    @property
    def accuracy(self) -> float:
        return self.correct / self.records if self.records else float("nan")


def confusion(labels, predictions, classes: Sequence[str]) -> Evaluation:
    """The confusion matrix of integer ``labels`` against ``predictions`` (numpy arrays, values in 0..classes-1)."""
    # numpy: only for `ternsearch evaluate`, which has loaded it with the model already
    import numpy as np

    k = len(classes)
    counts = np.bincount(np.asarray(labels) * k + np.asarray(predictions), minlength=k * k).reshape(k, k)
    return Evaluation([[int(v) for v in row] for row in counts], tuple(classes))


def per_class_rows(ev: Evaluation) -> list[dict]:
    """One row a class: its records, those right, accuracy (None for a class without records)."""
    rows = []
    for i, name in enumerate(ev.classes):
        n = sum(ev.matrix[i])
        rows.append({"class": name, "records": n, "correct": ev.matrix[i][i],
                     "accuracy": ev.matrix[i][i] / n if n else None})
    return rows


def table(ev: Evaluation) -> str:
    """The accuracy and the per-class table, as printed."""
    lines = [f"accuracy {ev.accuracy:.4f} ({ev.correct} of {ev.records})", f"{'class':<12} {'records':>8} "
             f"{'correct':>8} {'accuracy':>9}"]
    for row in per_class_rows(ev):
        acc = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "-"
        lines.append(f"{row['class']:<12} {row['records']:>8} {row['correct']:>8} {acc:>9}")
    return "\n".join(lines)


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _html(ev: Evaluation, title: str) -> str:
    # plotly: only for `ternsearch evaluate`'s HTML file
    import plotly.graph_objects as go

    totals = [sum(row) or 1 for row in ev.matrix]
    share = [[v / t for v in row] for row, t in zip(ev.matrix, totals)]
    fig = go.Figure(go.Heatmap(
        z=share, x=list(ev.classes), y=list(ev.classes), text=ev.matrix, texttemplate="%{text}",
        colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "share of<br>true class"},
        hovertemplate="true %{y}, predicted %{x}: %{text} (%{z:.1%} of %{y})<extra></extra>"))
    fig.update_layout(title=f"{title}<br><sub>accuracy {ev.accuracy:.2%} on {ev.records} records</sub>",
                      xaxis={"title": "predicted", "side": "bottom"},
                      yaxis={"title": "true", "autorange": "reversed"}, width=760, height=700)
    return fig.to_html(full_html=True, include_plotlyjs=True)


def write_files(ev: Evaluation, folder: Path, title: str) -> list[Path]:
    """``confusion.csv`` (a row a true class, a column a predicted one), ``per_class.csv`` and ``confusion.html``
    in ``folder``, each replaced whole."""
    folder.mkdir(parents=True, exist_ok=True)
    head = ["true \\ predicted", *ev.classes]
    matrix = _csv([head] + [[name, *row] for name, row in zip(ev.classes, ev.matrix)])
    rows = per_class_rows(ev)
    body = [[r["class"], r["records"], r["correct"], "" if r["accuracy"] is None else f"{r['accuracy']:.6f}"]
            for r in rows]
    per_class = _csv([["class", "records", "correct", "accuracy"], *body,
                      ["all", ev.records, ev.correct, f"{ev.accuracy:.6f}"]])
    paths = [folder / name for name in FILES]
    for path, text in zip(paths, (matrix, per_class, _html(ev, title))):
        write_atomic(path, text)
    return paths
