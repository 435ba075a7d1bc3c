"""``ternsearch report``: one self-contained HTML file (plotly.js inline, opens offline) and the trial table as
CSV and Parquet. The numbers come from ``ternsearch.report.data`` / ``report_links``; this module only draws."""

from __future__ import annotations

import html
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from ternsearch.numbers import fmt_number
from ternsearch.results.atomic import replace_with
from ternsearch.results.export import load_results_meta
from ternsearch.results.outputs import REGENERABLE, check_output
from ternsearch.report.data import (PARAM_PREFIX, Results, learning_curves, layer_sparsity, load_results,
                                    optimization_history, parallel_dimensions, print_warning, sparsity_tradeoff,
                                    trial_table)
from ternsearch.report.importance import importances
from ternsearch.tracking.links import RunLinks, mlflow_links

__all__ = ["write_report", "write_tables", "render_report", "report_command", "FIGURES"]

log = logging.getLogger(__name__)

REPORT = "report.html"
TOP_TRIALS = 10
CURVES_EACH = 30  # learning curves drawn one by one; beyond that, the best 30 and the rest as one grey trace
_STATUS = {"completed": "#2563eb", "stopped": "#f59e0b", "failed": "#dc2626", "running": "#6b7280"}
_PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#7c3aed", "#b45309",
            "#0f766e", "#be123c", "#4f46e5"]
_LAYOUT = dict(template="plotly_white", height=430, margin=dict(l=60, r=30, t=70, b=55),
               font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12))


def _fmt(v: Any, digits: int = 4) -> str:
    """A table cell: blank where a trial has no value (None, NaN, pandas' NA), else the number or word."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    return fmt_number(v, digits)


def _empty(title: str, message: str):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    fig = go.Figure()
    fig.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#6b7280"))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), **_LAYOUT)
    return fig


# ------------------------------------------------------------------------------------------------------ figures
def fig_history(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn
    from plotly.subplots import make_subplots  # plotly: only when a figure is drawn

    metric, h = results.metric, optimization_history(table, results.metric, results.maximize)
    title = f"Optimization history: best {metric} so far ({'max' if results.maximize else 'min'})"
    if h.empty:
        return _empty(title, f"no finished trial has reported {metric} yet")
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("by trial number", "by wall time"))
    for status, g in h.groupby("status", sort=False):
        for col, x in ((1, g["number"]), (2, g["minutes"])):
            fig.add_trace(go.Scatter(x=x, y=g["value"], mode="markers", name=f"{status} trial", text=g["trial"],
                                     marker=dict(color=_STATUS.get(status), size=9), legendgroup=status,
                                     showlegend=col == 1, hovertemplate="%{text}: %{y:.4g}<extra></extra>"),
                          row=1, col=col)
    by_time = h.sort_values("minutes")
    for col, x, y in ((1, h["number"], h["best_by_number"]), (2, by_time["minutes"], by_time["best_by_time"])):
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color="#111827", width=2, shape="hv"),
                                 name="best so far", legendgroup="best", showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="minutes since the sweep started", row=1, col=2)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    fig.update_layout(title=title, **_LAYOUT)
    return fig


def fig_parallel(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    data = parallel_dimensions(results, table)
    title = f"Searched parameters of finished trials, coloured by final {results.metric}"
    if not data["color"]:
        return _empty(title, f"no finished trial has reported {results.metric} yet")
    line = dict(color=data["color"], colorscale="Viridis", showscale=True, reversescale=not results.maximize,
                colorbar=dict(title=dict(text=results.metric)))
    fig = go.Figure(go.Parcoords(line=line, dimensions=data["dimensions"], labelangle=0))
    fig.update_layout(title=title, **{**_LAYOUT, "margin": dict(l=70, r=70, t=100, b=40)})
    return fig


def fig_importance(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    imp = importances(results, table)
    title = f"Parameter importance for {results.metric}: {imp.method} (Optuna), {imp.n_trials} finished trials"
    notes = "; ".join(f"{k}: {v}" for k, v in imp.excluded.items())
    if not imp.values:
        return _empty(title, imp.message + (f" (not assessed: {notes})" if notes else ""))
    names = list(imp.values)[::-1]
    fig = go.Figure(go.Bar(x=[imp.values[k] for k in names], y=names, orientation="h", marker_color="#2563eb",
                           text=[f"{imp.values[k]:.2f}" for k in names], textposition="auto",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    if notes:
        fig.add_annotation(text=html.escape("not assessed: " + notes), showarrow=False, x=0, y=-0.18,
                           xref="paper", yref="paper", xanchor="left", font=dict(size=11, color="#6b7280"))
    fig.update_layout(title=title, xaxis=dict(title="importance (sums to 1)", range=[0, 1]), **_LAYOUT)
    return fig


def curves_drawn(curves: list, maximize: bool, each: int) -> tuple[list, list]:
    """The curves drawn one by one (all of them, or at most ``each``: the best by their best value), and the
    rest, drawn together as one grey trace: with a trace and a legend entry each, 1,000 trials are unreadable."""
    if len(curves) <= each:
        return curves, []
    key = (lambda c: -max(c.values)) if maximize else (lambda c: min(c.values))
    best = {c.trial_id for c in sorted(curves, key=key)[:each]}
    return [c for c in curves if c.trial_id in best], [c for c in curves if c.trial_id not in best]


def fig_curves(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    metric, curves = results.metric, learning_curves(results)
    title = f"Learning curves: {metric} per epoch (dashed: stopped by ASHA, dotted: failed; x marks the cut)"
    drawn = [c for c in curves if c.epochs]
    if not drawn:
        return _empty(title, "no trial has finished an epoch yet")
    fig = go.Figure()
    each, rest = curves_drawn(drawn, results.maximize, CURVES_EACH)
    if rest:
        title = (f"Learning curves: {metric} per epoch, the {len(each)} best trials of {len(drawn)} in colour "
                 f"(dashed: stopped by ASHA, dotted: failed), the other {len(rest)} in grey")
        xs, ys = [], []
        for c in rest:  # one trace, the trials separated by gaps
            xs += [*c.epochs, None]
            ys += [*c.values, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{len(rest)} other trials", hoverinfo="skip",
                                 line=dict(color="rgba(107,114,128,0.25)", width=1)))
    dash = {"stopped": "dash", "failed": "dot"}
    for i, c in enumerate(each):
        color = _PALETTE[i % len(_PALETTE)]
        name = c.label + ("" if c.status == "completed" else f" {c.status}" + (f" @{c.cut_epoch}" if c.cut_epoch
                                                                                 else ""))
        fig.add_trace(go.Scatter(x=list(c.epochs), y=list(c.values), mode="lines+markers", name=name,
                                 legendgroup=c.trial_id, line=dict(color=color, dash=dash.get(c.status, "solid")),
                                 marker=dict(size=5), hovertemplate=f"{c.label} epoch %{{x}}: %{{y:.4g}}"
                                 f"{' (' + html.escape(c.reason) + ')' if c.reason else ''}<extra></extra>"))
        if c.cut_epoch is not None:
            cut = [(e, v) for e, v in zip(c.epochs, c.values) if e <= c.cut_epoch][-1:]
            fig.add_trace(go.Scatter(x=[e for e, _ in cut], y=[v for _, v in cut], mode="markers",
                                     legendgroup=c.trial_id, showlegend=False, hoverinfo="skip",
                                     marker=dict(symbol="x", size=12, color=color, line=dict(width=1))))
    _lost_note(fig, curves)
    last = max(max(c.epochs) for c in drawn)
    fig.update_layout(title=title, xaxis=dict(title="epoch", dtick=1 if last <= 20 else None),
                      yaxis=dict(title=metric), **_LAYOUT)
    return fig


def _lost_note(fig, curves: list) -> None:
    lost = [f"{c.label} ({c.reason or c.status})" for c in curves if not c.epochs and c.status == "failed"]
    if len(lost) > 10:
        lost = lost[:10] + [f"and {len(lost) - 10} more"]
    if lost:
        fig.add_annotation(text=html.escape("failed before a valid epoch: " + ", ".join(lost)), showarrow=False,
                           x=0, y=-0.2, xref="paper", yref="paper", xanchor="left", font=dict(size=11,
                                                                                                color="#dc2626"))


def fig_sparsity(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    metric, s = results.metric, sparsity_tradeoff(table, results.metric, results.maximize)
    title = f"Final {metric} vs ternary sparsity (fraction of zero weights); Pareto front of completed trials"
    if s.empty:
        return _empty(title, "no finished trial has reported ternary sparsity yet")
    fig = go.Figure()
    for status, g in s.groupby("status", sort=False):
        fig.add_trace(go.Scatter(x=g["ternary_zero_frac"], y=g["value"], mode="markers", name=f"{status} trial",
                                 text=g["trial"], marker=dict(color=_STATUS.get(status), size=9),
                                 hovertemplate="%{text}: zeros %{x:.3f}, " + metric + " %{y:.4g}<extra></extra>"))
    front = s[s["on_front"]].sort_values("ternary_zero_frac")
    fig.add_trace(go.Scatter(x=front["ternary_zero_frac"], y=front["value"], mode="lines+markers",
                             name="Pareto front", text=front["trial"], line=dict(color="#111827", width=1.5),
                             marker=dict(symbol="star", size=15, color="rgba(0,0,0,0)",
                                         line=dict(color="#111827", width=1.5)),
                             hovertemplate="front: %{text}<extra></extra>"))
    fig.update_layout(title=title, xaxis=dict(title="ternary_zero_frac (final epoch)"), yaxis=dict(title=metric),
                      **_LAYOUT)
    return fig


def fig_layers(results: Results, table: pd.DataFrame):
    import plotly.graph_objects as go  # plotly: only when a figure is drawn

    best = table[table["rank"] == 1]
    title = "Per-layer ternary weights of the best trial"
    if best.empty:
        return _empty(title, "no finished trial yet")
    row = best.iloc[0]
    title += f" ({row['trial']}, {results.metric} = {_fmt(row[f'final_{results.metric}'])})"
    layers = layer_sparsity(results, row["trial_id"])
    if layers.empty:
        return _empty(title, "the trial logged no per-layer statistics")
    fig = go.Figure()
    for col, name, color in (("neg_frac", "-1", "#ef4444"), ("zero_frac", "0", "#9ca3af"),
                             ("pos_frac", "+1", "#3b82f6")):
        fig.add_trace(go.Bar(x=layers["layer"], y=layers[col], name=name, marker_color=color,
                             customdata=layers["scale"], hovertemplate="%{x}: " + name +
                             " %{y:.3f} (scale %{customdata:.3g})<extra></extra>"))
    fig.update_layout(title=title, barmode="stack", xaxis=dict(title="ternary layer"),
                      yaxis=dict(title="fraction of weights", range=[0, 1]), **_LAYOUT)
    return fig


# (div id, section title, what the figure shows, builder)
FIGURES: list[tuple[str, str, str, Callable]] = [
    ("fig-history", "Optimization history", "Each finished trial's final metric and the best so far, against "
     "the trial number and against wall time.", fig_history),
    ("fig-parallel", "Parallel coordinates", "One line per finished trial through its searched values "
     "(categories as codes, log-scale parameters as log10; n/a: a condition switched the parameter off).",
     fig_parallel),
    ("fig-importance", "Parameter importance", "How much of the variation of the final metric each parameter "
     "explains (Optuna, over completed and ASHA-stopped trials).", fig_importance),
    ("fig-curves", "Learning curves", "Every trial's metric per epoch; ASHA-stopped trials end at their rung.",
     fig_curves),
    ("fig-sparsity", "Accuracy vs sparsity", "Completed trials no other completed trial beats on both the metric "
     "and the share of zero weights form the Pareto front (stopped trials are shown at the epoch they reached).",
     fig_sparsity),
    ("fig-layers", "Per-layer sparsity", "Fractions of -1, 0 and +1 weights in each ternary layer of the best "
     "trial at its last epoch.", fig_layers),
]


# ------------------------------------------------------------------------------------------------------ HTML
_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:
16px 24px;color:#111827}h1{margin:.2em 0}h2{margin:1.4em 0 .2em;font-size:1.2em}p.note{color:#4b5563;margin:
.2em 0 .6em}table{border-collapse:collapse;font-size:13px;width:100%}th,td{border-bottom:1px solid #e5e7eb;
padding:4px 6px;text-align:left;white-space:nowrap}th{background:#f9fafb}td.num{text-align:right;
font-variant-numeric:tabular-nums}code{background:#f3f4f6;padding:1px 4px;border-radius:3px}.figure{border:1px
solid #e5e7eb;border-radius:6px;padding:4px}.error{color:#dc2626}.s-completed{color:#2563eb}.s-stopped{color:
#b45309}.s-failed{color:#dc2626}.wide{overflow-x:auto}span.id{color:#6b7280;font-size:11px}"""


def _summary(results: Results, table: pd.DataFrame) -> str:
    m = results.meta
    counts = table["status"].value_counts().to_dict()
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(m["started"])) if m.get("started") else "?"
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("completed", "stopped", "failed", "running")
                      if counts.get(s) or s != "running")
    best = table[table["rank"] == 1]
    best_txt = ""
    if not best.empty:
        b = best.iloc[0]
        cfg = ", ".join(f"{p.name}={_fmt(b[PARAM_PREFIX + p.name])}" for p in results.params
                        if _fmt(b[PARAM_PREFIX + p.name]))
        best_txt = (f"<p>Best: <b>{b['trial']}</b> ({html.escape(str(b['trial_id']))}) with {results.metric} = "
                    f"<b>{_fmt(b[f'final_{results.metric}'])}</b>: {html.escape(cfg)}</p>")
    return (f"<h1>Sweep {html.escape(str(m.get('name')))}</h1><p>{len(table)} trials ({parts}); metric "
            f"<code>{html.escape(results.metric)}</code> ({html.escape(m.get('mode', 'max'))}); started "
            f"{started}; results <code>{html.escape(str(results.path.resolve()))}</code></p>{best_txt}")


def _run_cell(links: RunLinks, trial_id: str) -> str:
    run_id = links.runs.get(trial_id)
    if not run_id:
        return ""
    url = links.url(run_id)
    short = html.escape(run_id[:12])
    return f'<a href="{html.escape(url)}" title="{html.escape(run_id)}">{short}</a>' if url else \
        f'<code title="{html.escape(run_id)}">{short}</code>'


def _table_html(results: Results, table: pd.DataFrame, links: RunLinks) -> str:
    metric = results.metric
    top = table[table["rank"].notna()].sort_values("rank").head(TOP_TRIALS)
    heads = ["rank", "trial", "status", f"final {metric}", f"best {metric} (epoch)", "epochs", "zeros"]
    heads += [p.name for p in results.params] + ["wall s", "node", "MLflow run"]
    rows = []
    for _, r in top.iterrows():
        status = html.escape(r["status"] + (f": {r['reason']}" if r["reason"] else ""))
        cells = [f'<td class="num">{r["rank"]}</td>',
                 f"<td>{r['trial']} <span class='id'>{html.escape(str(r['trial_id']))}</span></td>",
                 f'<td class="s-{html.escape(r["status"])}">{status}</td>',
                 f'<td class="num">{_fmt(r[f"final_{metric}"])}</td>',
                 f'<td class="num">{_fmt(r[f"best_{metric}"])} ({_fmt(r["best_epoch"])})</td>',
                 f'<td class="num">{_fmt(r["epochs"])}</td>', f'<td class="num">{_fmt(r["ternary_zero_frac"], 3)}</td>']
        cells += [f"<td>{html.escape(_fmt(r[PARAM_PREFIX + p.name]))}</td>" for p in results.params]
        cells += [f'<td class="num">{_fmt(r["wall_seconds"], 3)}</td>', f"<td>{html.escape(_fmt(r['hostname']))}</td>",
                  f"<td>{_run_cell(links, r['trial_id'])}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    failed = table[table["status"] == "failed"]
    failed_txt = "" if failed.empty else "<p class='note'>Failed: " + html.escape(", ".join(
        f"{r['trial']} ({r['reason']})" for _, r in failed.iterrows())) + "</p>"
    if links.command:
        where = (f"<p class='note'>MLflow runs: start the UI with <code>{html.escape(links.command)}</code>, "
                 "then the run links open there.</p>")
    elif links.base:
        where = f"<p class='note'>MLflow: <a href='{html.escape(links.base)}'>{html.escape(links.base)}</a></p>"
    else:
        where = f"<p class='note'>MLflow runs: {html.escape(links.error or 'no links for this store')}</p>"
    return (f"<h2>Top trials</h2><p class='note'>Ranked as the sweep picks its best (completed trials first, then "
            f"by final {html.escape(metric)}); every trial is in <code>trials.csv</code> / "
            f"<code>trials.parquet</code>.</p>{where}<div class='wide'><table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>" + "".join(rows) + "</table></div>"
            + failed_txt)


def render_report(results: Results, table: pd.DataFrame, links: Optional[RunLinks] = None) -> str:
    """The report as one HTML document (plotly.js inline: it opens offline)."""
    links = links or RunLinks()
    body = [_summary(results, table)]
    first = True
    for div_id, heading, note, build in FIGURES:
        try:
            fig = build(results, table)
            snippet = fig.to_html(full_html=False, include_plotlyjs=True if first else False, div_id=div_id,
                                  config={"displaylogo": False, "responsive": True})
            first = False
        except Exception as exc:  # noqa: BLE001 - one figure must not cost the whole report at a sweep's end
            log.warning("report: %s failed: %s: %s", heading, type(exc).__name__, exc)
            snippet = f"<p class='error'>could not draw this figure: {html.escape(type(exc).__name__)}: " \
                      f"{html.escape(str(exc))}</p>"
        body.append(f"<h2>{heading}</h2><p class='note'>{note}</p><div class='figure'>{snippet}</div>")
    body.append(_table_html(results, table, links))
    title = html.escape(f"ternsearch report: {results.meta.get('name')}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


# ------------------------------------------------------------------------------------------------------ files
def _parquet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing value types (a choice of numbers and words) as text: Parquet columns have one type."""
    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1:
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                        else str(v))
    return out


def write_tables(table: pd.DataFrame, directory: Path) -> tuple[Path, Path]:
    """``trials.csv`` and ``trials.parquet`` in ``directory``."""
    csv, parquet = Path(directory) / "trials.csv", Path(directory) / "trials.parquet"
    replace_with(csv, lambda p: table.to_csv(p, index=False))
    replace_with(parquet, lambda p: _parquet_safe(table).to_parquet(p, index=False))
    return csv, parquet


def write_report(results_dir: str | Path, output: Optional[str | Path] = None,
                 warn: Optional[Callable[[str], None]] = print_warning) -> Path:
    """Write the HTML report (default ``<results>/report.html``) and ``<results>/trials.{csv,parquet}``;
    returns the report's path. ``warn`` is told of a torn last line of history.jsonl (skipped).

    Raises:
        ResultsError: ``results_dir`` is not a sweep's results directory.
        OutputError: an output would overwrite a record or the spec (``ternsearch.results.outputs``); nothing written.
    """
    results = load_results(results_dir, warn)
    out = Path(output) if output else results.path / REPORT
    check_output(out, results.path, REGENERABLE["report"])
    for name in ("trials.csv", "trials.parquet"):
        check_output(results.path / name, results.path, REGENERABLE["tables"])
    table = trial_table(results)
    write_tables(table, results.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_report(results, table, mlflow_links(results))
    replace_with(out, lambda p: p.write_text(text, encoding="utf-8"))
    return out


def report_command(a) -> int:
    meta = load_results_meta(Path(a.results))
    if a.output:  # named as the user's argument; the default, reports/NAME.html, is checked as write_report's own
        check_output(a.output, a.results, REGENERABLE["report"], arg="--output")
    output = Path(a.output) if a.output else Path("reports") / f"{meta['name']}.html"
    print(write_report(a.results, output))
    return 0
