"""Figures of emi.diff's results (pure builders over its JSON files): the cosine table of every
direction found as a heatmap, and the KL ranking as bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cosine_heatmap(table: Sequence[dict[str, Any]]) -> Any:
    """``cosines.json`` (rows of the cosine matrix) as a heatmap."""
    import plotly.graph_objects as go

    names = [r["direction"] for r in table]
    z = [[r[n] for n in names] for r in table]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", text=z,
                               texttemplate="%{text:.2f}"))
    fig.update_layout(title="cosines of the directions found, at the diffing layer", yaxis_autorange="reversed")
    return fig


def kl_bars(rows: Sequence[dict[str, Any]], top: int = 20) -> Any:
    """``kl.json``'s top tokens: KL(finetuned || base) per token, coloured by the persona projection."""
    import plotly.graph_objects as go

    rows = list(rows)[:top]
    labels = [f"{i + 1}. {r['source']} {r['token']!r}" for i, r in enumerate(rows)]
    proj = [r.get("projection") or 0.0 for r in rows]
    fig = go.Figure(go.Bar(x=[r["kl"] for r in rows], y=labels, orientation="h",
                           marker={"color": proj, "colorscale": "RdBu_r", "colorbar": {"title": "persona proj"}}))
    fig.update_layout(title="where the finetune's next-token distribution departs most from the base's",
                      xaxis_title="KL(finetuned || base), nats", yaxis_autorange="reversed")
    return fig
