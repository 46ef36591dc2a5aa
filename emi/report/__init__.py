"""Stage 6, report: figures (plotly) and the tables commands print."""
