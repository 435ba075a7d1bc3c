"""``ternsearch report``: compute (``data``: the trial table, curves, Pareto front; ``importance``), then render
(``render``: plotly figures in one offline HTML file, the table as CSV and Parquet)."""
