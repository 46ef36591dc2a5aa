"""Stage 8, report: figures (plotly) and the tables commands print."""
