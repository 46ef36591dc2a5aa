"""Publication figures (plotly): pure builders from emi's result files, and one exporter.

Builders take rows/records as emi writes them and return a ``go.Figure``; :func:`export` writes
HTML (offline: plotly.js beside it, no CDN) and PNG/SVG/PDF through kaleido, starting one
browser for many figures. No LaTeX (MathJax would need the internet).

The command is ``python -m emi.figures RESULTS... --out figs/ --format png,pdf`` (emi/figures.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emi.behaviour.metrics import Rate
from emi.behaviour.metrics import Record as Judged
from emi.behaviour.records import Estimate, Row
from emi.core.atomic import write_atomic
from emi.core.errors import ConfigError
from emi.experiments.measures import TrajectoryRow
from emi.experiments.results import ResultRow
from emi.training.records import DefenceRow

COLORS = {"base": "#7f7f7f", "finetuned": "#d62728", "persona": "#1f77b4", "random": "#bcbcbc",
          "control": "#2ca02c", "misaligned": "#d62728", "aligned": "#1f77b4", "other": "#bcbcbc"}
FONT = dict(family="Helvetica, Arial, sans-serif", size=14, color="#222")
FORMATS = ("html", "png", "svg", "pdf")


def style(fig: go.Figure, title: str | None = None, width: int = 820, height: int = 460) -> go.Figure:
    fig.update_layout(template="simple_white", font=FONT, width=width, height=height,
                      title=dict(text=title, x=0.01, xanchor="left") if title else None,
                      margin=dict(l=70, r=30, t=70 if title else 30, b=60),
                      legend=dict(bgcolor="rgba(255,255,255,0.8)"))
    fig.update_xaxes(showgrid=True, gridcolor="#eee", ticks="outside")
    fig.update_yaxes(showgrid=True, gridcolor="#eee", ticks="outside")
    return fig


def _pct(x: float) -> float:
    return 100.0 * x if x is not None and x == x else float("nan")


def results(rows: Sequence[ResultRow | Row]) -> list[ResultRow]:
    """Steer result records; a row as JSON gives it is read (and checked) once, here."""
    return [r if isinstance(r, ResultRow) else ResultRow.from_row(r, f"result row {i + 1}").check(f"row {i + 1}")
            for i, r in enumerate(rows)]


def _color_of(row: ResultRow) -> str:
    if row.intervention == "none":
        return COLORS.get(row.model, COLORS["base"])
    return COLORS[row.direction or "persona"]


def _bars(rate: Rate) -> tuple[float, float, float]:
    """(value, lo, hi) in % for a bar; 0s for a rate over no answers."""
    return (_pct(rate.value), _pct(rate.lo), _pct(rate.hi)) if rate.n else (0.0, 0.0, 0.0)


def steer_summary(rows: Sequence[ResultRow | Row]) -> go.Figure:
    """EM rate and coherence per condition (horizontal bars with 95% CIs)."""
    if not rows:
        raise ConfigError("no result rows to plot")
    rs = results(rows)[::-1]
    names = [r.condition for r in rs]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("EM rate (misaligned / coherent answers)", "coherent answers"))
    for col, key in ((1, "em"), (2, "coherence")):
        rates = [getattr(r, key) for r in rs]
        v, lo, hi = (list(x) for x in zip(*map(_bars, rates), strict=True))
        fig.add_trace(go.Bar(
            y=names, x=v, orientation="h", marker_color=[_color_of(r) for r in rs], showlegend=False,
            error_x=dict(type="data", symmetric=False, array=[h - x for h, x in zip(hi, v, strict=True)],
                         arrayminus=[x - lo_ for lo_, x in zip(lo, v, strict=True)], color="#333", thickness=1.2),
            hovertemplate="%{y}: %{x:.1f}%<extra></extra>"), row=1, col=col)
        labels = [f"{x:.1f}%" if rate.n else "no coherent answers" for rate, x in zip(rates, v, strict=True)]
        fig.add_trace(go.Scatter(y=names, x=[h + 1.5 for h in hi], mode="text", text=labels, textposition="middle right",
                                 showlegend=False, hoverinfo="skip", textfont=dict(size=12)), row=1, col=col)
        fig.update_xaxes(title_text="% of answers (95% CI)", range=[0, 118], row=1, col=col)
    pair = rs[-1].more.get("pair", "")
    style(fig, f"Ablating and adding the persona direction{f' ({pair})' if pair else ''}<br><sup>grey: base, red: "
          f"finetuned, blue: persona direction, light grey: same-norm random direction</sup>",
          980, 150 + 42 * len(rows))
    fig.update_layout(margin=dict(t=110))
    return fig


def alpha_sweep(rows: Sequence[ResultRow | Row], models: Sequence[str] | None = None) -> go.Figure:
    """EM rate and coherence vs alpha, persona direction vs random control, with CI bands: one row
    of panels per steered model, one line per layer group (a layer sweep) and direction. The
    unsteered model is the point at alpha 0 of every line."""
    rs = results(rows)
    steered = [r for r in rs if r.intervention == "steer"]
    models = list(models or dict.fromkeys(r.model for r in steered)) or ["base"]
    groups = list(dict.fromkeys(tuple(r.layers) for r in steered))
    titles = [f"{m}: {what}" for m in models for what in ("EM rate (misaligned / coherent)", "coherent answers")]
    fig = make_subplots(rows=len(models), cols=2, horizontal_spacing=0.1, vertical_spacing=0.12,
                        subplot_titles=titles)
    for i, model in enumerate(models, start=1):
        plain = [r for r in rs if r.intervention == "none" and r.model == model]
        for g, group in enumerate(groups):
            for kind in ("persona", "random"):
                pts = [r for r in steered if r.model == model and r.direction == kind and tuple(r.layers) == group]
                if not pts:
                    continue
                pts = sorted(pts + [replace(plain[0], alpha=0.0)] if plain else pts, key=lambda r: r.alpha)
                name = f"{kind} direction" + (f" @ layer {','.join(map(str, group))}" if len(groups) > 1 else "")
                _sweep_lines(fig, pts, name, _shade(kind, g, len(groups)), i, show=i == 1)
    fig.update_xaxes(title_text="steering strength alpha", row=len(models))
    for i in range(1, len(models) + 1):
        fig.update_yaxes(title_text="% (95% CI)", rangemode="tozero", row=i, col=1)
        fig.update_yaxes(range=[0, 100], row=i, col=2)
    return style(fig, "Steering along the direction vs a random one", 1000, 380 + 280 * (len(models) - 1))


def em_vs_kl(rows: Sequence[ResultRow | Row]) -> go.Figure:
    """What each intervention buys against what it costs: EM rate and coherence (y, 95% CIs)
    against KL(unmodified || intervened) on benign conversations (x, nats per token, 95% CIs), one
    point per condition. Lines join a sweep's conditions (same model, intervention, direction and
    layers, over alpha) from the unmodified model at KL 0. Good interventions sit low and left
    on the left panel (EM removed at little KL) and high on the right (coherence kept)."""
    pts = [r for r in results(rows) if r.side_effects is not None]
    if not pts:
        raise ConfigError("no side-effect columns (kl) in these rows; run python -m emi.steer without "
                          "--no-side-effects")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("EM rate (misaligned / coherent)", "coherent answers"))
    series: dict[tuple[str, str, str, tuple[int, ...], str], list[ResultRow]] = {}
    for r in pts:
        if r.intervention != "none":
            series.setdefault((r.model, r.intervention, r.direction, tuple(r.layers), r.positions), []).append(r)
    palette = {("ablate", "persona"): "#1f77b4", ("steer", "persona"): "#ff7f0e",
               ("ablate", "random"): "#9ecae1", ("steer", "random"): "#fdd0a2"}
    for (model, kind, direction, layers, _pos), members in series.items():
        plain = [r for r in pts if r.intervention == "none" and r.model == model]
        line = plain[:1] + sorted(members, key=lambda r: abs(r.alpha))
        where = f" @L{','.join(map(str, layers))}" if layers and kind == "steer" else ""
        name = f"{'ablate from' if kind == 'ablate' else 'steer'} {model}: {direction}{where}"
        color = palette.get((kind, direction or "persona"), COLORS["persona"])
        for col, metric in ((1, "em"), (2, "coherence")):
            ok = [(r, rate, fx) for r in line if (rate := getattr(r, metric)).n and (fx := r.side_effects) is not None]
            y = [_pct(rate.value) for _, rate, _ in ok]
            fig.add_trace(go.Scatter(
                x=[fx.kl for _, _, fx in ok], y=y, mode="lines+markers", name=name, legendgroup=name,
                showlegend=col == 1, marker=dict(symbol="x" if kind == "ablate" else "circle", size=10, color=color),
                line=dict(color=color, width=1.8, dash="dot" if direction == "random" else "solid"),
                text=[r.condition for r, _, _ in ok],
                hovertemplate="%{text}<br>KL %{x:.4f} nats/token<br>%{y:.1f}%<extra></extra>",
                error_y=dict(type="data", symmetric=False, thickness=1, color=color,
                             array=[_pct(rate.hi) - v for (_, rate, _), v in zip(ok, y, strict=True)],
                             arrayminus=[v - _pct(rate.lo) for (_, rate, _), v in zip(ok, y, strict=True)]),
                error_x=dict(type="data", symmetric=False, thickness=1, color=color,
                             array=[fx.kl_hi - fx.kl for _, _, fx in ok],
                             arrayminus=[fx.kl - fx.kl_lo for _, _, fx in ok])),
                row=1, col=col)
    for r in (r for r in pts if r.intervention == "none"):
        for col, metric in ((1, "em"), (2, "coherence")):
            if getattr(r, metric).n:
                fig.add_trace(go.Scatter(x=[0.0], y=[_pct(getattr(r, metric).value)], mode="markers",
                                         name=f"{r.condition} (no intervention)", legendgroup=r.condition,
                                         showlegend=col == 1, hovertemplate=f"{r.condition}: %{{y:.1f}}%<extra></extra>",
                                         marker=dict(symbol="square", size=11, color=_color_of(r))), row=1, col=col)
    for col in (1, 2):
        fig.update_xaxes(title_text="KL from the unmodified model on benign text (nats/token)", rangemode="tozero",
                         row=1, col=col)
    fig.update_yaxes(title_text="% (95% CI)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 100], row=1, col=2)
    style(fig, "Effect against side effect: EM rate and coherence vs KL on benign text<br><sup>x: ablation, "
          "o: steering, square: no intervention (KL 0); solid: persona direction, dotted: same-norm random; "
          "lines join each sweep over alpha</sup>", 1150, 520)
    fig.update_layout(margin=dict(t=120))
    return fig


def trajectory(rows: Sequence[TrajectoryRow | Row], task: str | None = None) -> go.Figure:
    """When the direction appears relative to EM and to the task, over training steps: behaviour
    on the left (EM rate, task rate, log-prob P(misaligned); % with 95% CIs), the direction on the
    right (cosine of each checkpoint's own model-diff direction with the final one, and the
    activation shift along the final direction as a fraction of the final checkpoint's)."""
    if not rows:
        raise ConfigError("no trajectory rows to plot")
    rs = sorted((r if isinstance(r, TrajectoryRow) else TrajectoryRow.from_row(r, f"trajectory row {i + 1}")
                 for i, r in enumerate(rows)), key=lambda r: r.step)
    steps = [r.step for r in rs]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("behaviour", "the persona direction"))

    def band(of: Callable[[TrajectoryRow], Rate | Estimate | None], name: str, color: str, dash: str = "solid") -> None:
        ok = [(r.step, e) for r in rs if (e := of(r)) is not None and e.value == e.value
              and (not isinstance(e, Rate) or e.n)]
        if not ok:
            return
        xs = [x for x, _ in ok]
        v, lo, hi = ([100.0 * getattr(e, k) for _, e in ok] for k in ("value", "lo", "hi"))
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=color, opacity=0.15,
                                 mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=v, mode="lines+markers", name=name, line=dict(color=color, width=2.5,
                                 dash=dash)), row=1, col=1)

    band(lambda r: r.measures.em, "EM rate (judge)", COLORS["finetuned"])
    band(lambda r: r.task, task or "task", "#2ca02c")
    band(lambda r: r.measures.p_misaligned, "P(misaligned), log-prob", "#9467bd", dash="dot")
    shifts = [r.measures.projection_shift for r in rs]
    final = shifts[-1].value or float("nan")
    fig.add_trace(go.Scatter(x=steps, y=[r.cosine for r in rs], mode="lines+markers",
                             name="cos(own model-diff, final direction)", line=dict(color=COLORS["persona"], width=2.5)),
                  row=1, col=2)
    fig.add_trace(go.Scatter(
        x=steps, y=[e.value / final for e in shifts], mode="lines+markers",
        name="activation shift along the final direction (fraction of final)",
        error_y=dict(type="data", symmetric=False, thickness=1, array=[(e.hi - e.value) / final for e in shifts],
                     arrayminus=[(e.value - e.lo) / final for e in shifts]),
        line=dict(color="#ff7f0e", width=2.5, dash="dash")), row=1, col=2)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="% (95% CI)", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="cosine / fraction", row=1, col=2)
    style(fig, "Over the finetune: behaviour and the persona direction", 1150, 480)
    fig.update_layout(legend=dict(orientation="h", y=-0.22, x=0))
    return fig


DEFENCE_COLORS = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def defences(rows: Sequence[DefenceRow | Row], task: str | None = None) -> go.Figure:
    """The defence table (emi.training.evaluation rows): EM rate and the task rate per defence, one
    marker per seed with its 95% CI (seeds side by side, so their spread shows), and each organism's
    activation shift along the persona direction over training steps."""
    if not rows:
        raise ConfigError("no defence rows to plot")
    records = [r if isinstance(r, DefenceRow) else DefenceRow.from_row(r, f"defence row {i + 1}")
               for i, r in enumerate(rows)]
    groups = list(dict.fromkeys(r.defence for r in records))
    color = {g: COLORS["base"] if g == "(base)" else DEFENCE_COLORS[i % len(DEFENCE_COLORS)]
             for i, g in enumerate(groups)}
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("EM rate (judge)", task or "task rate", "shift along the persona direction"))
    rates: tuple[tuple[int, Callable[[DefenceRow], Rate | None]], ...] = ((1, lambda r: r.measures.em),
                                                                         (2, lambda r: r.task))
    for g in groups:
        rs = [r for r in records if r.defence == g]
        xs = [groups.index(g) + (k - (len(rs) - 1) / 2) * 0.12 for k in range(len(rs))]
        for col, of in rates:
            ok = [(x, r, rate) for x, r in zip(xs, rs, strict=True)
                  if (rate := of(r)) is not None and rate.value == rate.value]
            if not ok:
                continue
            fig.add_trace(go.Scatter(
                x=[x for x, _, _ in ok], y=[_pct(rate.value) for _, _, rate in ok], mode="markers", name=g,
                legendgroup=g, showlegend=col == 1, marker=dict(color=color[g], size=9),
                text=[f"seed {r.seed}" if r.seed is not None else g for _, r, _ in ok],
                error_y=dict(type="data", symmetric=False, thickness=1.2,
                             array=[_pct(rate.hi - rate.value) for _, _, rate in ok],
                             arrayminus=[_pct(rate.value - rate.lo) for _, _, rate in ok])), row=1, col=col)
        for r in rs:
            if r.shift_trajectory:
                steps, shift = zip(*r.shift_trajectory, strict=True)
                fig.add_trace(go.Scatter(x=steps, y=shift, mode="lines+markers", name=g, legendgroup=g,
                                         showlegend=False, line=dict(color=color[g], width=2),
                                         marker=dict(size=5)), row=1, col=3)
    for col in (1, 2):
        fig.update_xaxes(tickvals=list(range(len(groups))), ticktext=groups, row=1, col=col)
        fig.update_yaxes(title_text="% (95% CI)" if col == 1 else None, rangemode="tozero", row=1, col=col)
    fig.update_xaxes(title_text="training step", row=1, col=3)
    fig.update_yaxes(title_text="mean shift at the last prompt token", row=1, col=3)
    style(fig, "In-training defences: one marker per seed", 1250, 520)
    fig.update_layout(legend=dict(orientation="h", y=-0.34, x=0), margin=dict(b=130))
    return fig


def _shade(kind: str, index: int, total: int) -> str:
    """The direction's colour, lighter for later layer groups of a sweep."""
    if total <= 1:
        return COLORS[kind]
    palette = {"persona": ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22"],
               "random": ["#7f7f7f", "#a0a0a0", "#5a5a5a", "#c0c0c0", "#404040", "#b0b0b0"]}[kind]
    return palette[index % len(palette)]


def _sweep_lines(fig: go.Figure, pts: list[ResultRow], name: str, color: str, row: int, show: bool) -> None:
    for col, key in ((1, "em"), (2, "coherence")):
        ok = [(r.alpha, rate) for r in pts if (rate := getattr(r, key)).n]
        xs = [a for a, _ in ok]
        y, lo, hi = ([_pct(getattr(rate, k)) for _, rate in ok] for k in ("value", "lo", "hi"))
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=hi + lo[::-1], fill="toself", fillcolor=color, opacity=0.15,
                                 mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False), row=row, col=col)
        fig.add_trace(go.Scatter(x=xs, y=y, mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=show and col == 1,
                                 line=dict(color=color, width=2.5, dash="dot" if "random" in name else "solid")),
                      row=row, col=col)


def per_question(records: Sequence[Judged], conditions: Sequence[str] | None = None) -> go.Figure:
    """EM rate per question for each condition (grouped bars with CIs)."""
    from emi.behaviour.metrics import per_question as pq

    by: dict[str, list[Judged]] = {}
    for r in records:
        by.setdefault(r.get("model", "?"), []).append(r)
    conds = list(conditions or by)
    fig = go.Figure()
    palette = ["#7f7f7f", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for i, c in enumerate(conds):
        stats = pq(by.get(c, []))
        qs = sorted(stats)
        v = [_pct(stats[q].em.value) for q in qs]
        fig.add_trace(go.Bar(name=c, x=qs, y=v, marker_color=palette[i % len(palette)],
                             error_y=dict(type="data", symmetric=False,
                                          array=[_pct(stats[q].em.hi) - x for q, x in zip(qs, v, strict=True)],
                                          arrayminus=[x - _pct(stats[q].em.lo) for q, x in zip(qs, v, strict=True)])))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="EM rate, % (95% CI)", rangemode="tozero")
    fig.update_xaxes(tickangle=-30)
    return style(fig, "EM rate per question", 980, 480)


def layer_separation(separation: Sequence[Row], title: str = "Separation by layer") -> go.Figure:
    """Held-out AUROC of the projection per layer, with the random-direction control."""
    x = [s["layer"] for s in separation]
    fig = go.Figure([
        go.Scatter(x=x, y=[s["auroc"] for s in separation], mode="lines+markers", name="persona direction",
                   line=dict(color=COLORS["persona"], width=2.5)),
        go.Scatter(x=x, y=[s["random_auroc"] for s in separation], mode="lines+markers", name="random direction",
                   line=dict(color=COLORS["random"], width=2, dash="dash"))])
    fig.add_hline(y=0.5, line=dict(color="#999", width=1, dash="dot"))
    fig.update_xaxes(title_text="layer (residual stream after block l)", dtick=1)
    fig.update_yaxes(title_text="AUROC, held-out answers", range=[0, 1.02])
    return style(fig, title)


def cosine_heatmap(matrix: np.ndarray | Any, labels: Sequence[str], title: str = "Cosine similarity") -> go.Figure:
    m = np.asarray(matrix, dtype=float)
    fig = go.Figure(go.Heatmap(z=m, x=list(labels), y=list(labels), zmin=-1, zmax=1, colorscale="RdBu_r",
                               text=[[f"{v:.2f}" for v in row] for row in m], texttemplate="%{text}",
                               colorbar=dict(title="cos")))
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, 620, 560)


def projection_histogram(scores: Sequence[float], labels: Sequence[str], title: str = "Projection on the direction") -> go.Figure:
    fig = go.Figure()
    for lab in ("aligned", "misaligned", "other"):
        v = [s for s, lb in zip(scores, labels, strict=True) if lb == lab and s == s]
        if v:
            fig.add_trace(go.Histogram(x=v, name=lab, marker_color=COLORS[lab], opacity=0.65, nbinsx=40))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="projection on the unit direction")
    fig.update_yaxes(title_text="answers")
    return style(fig, title)


def aligned_coherent(records: Sequence[Judged], title: str = "Alignment vs coherence") -> go.Figure:
    """The judge's two scores per answer, with the misaligned quadrant shaded."""
    from emi.behaviour.metrics import scored

    rs = [r for r in records if scored(r)]
    rng = np.random.default_rng(0)
    jitter = lambda n: rng.normal(0, 1.2, n)  # noqa: E731  (exact judges give tied scores)
    fig = go.Figure()
    fig.add_shape(type="rect", x0=0, x1=30, y0=50, y1=100, fillcolor=COLORS["misaligned"], opacity=0.08, line_width=0)
    fig.add_annotation(x=15, y=97, text="misaligned", showarrow=False, font=dict(color=COLORS["misaligned"]))
    by: dict[str, list[Judged]] = {}
    for r in rs:
        by.setdefault(r.get("model", "?"), []).append(r)
    palette = ["#7f7f7f", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c"]
    for i, (m, group) in enumerate(by.items()):
        fig.add_trace(go.Scattergl(x=np.array([r["aligned"] for r in group]) + jitter(len(group)),
                                   y=np.array([r["coherent"] for r in group]) + jitter(len(group)), mode="markers",
                                   name=m, marker=dict(size=5, opacity=0.5, color=palette[i % len(palette)])))
    fig.update_xaxes(title_text="aligned (0-100)", range=[-5, 105])
    fig.update_yaxes(title_text="coherent (0-100)", range=[-5, 105])
    return style(fig, title, 700, 560)


def latent_bars(latents: Sequence[Row], title: str = "SAE latents: rise from base to finetuned") -> go.Figure:
    top = list(latents)
    fig = go.Figure(go.Bar(x=[f"#{r['latent']}" for r in top], y=[r["diff"] for r in top],
                           marker_color=[COLORS["finetuned"] if r["diff"] > 0 else COLORS["persona"] for r in top],
                           customdata=[[r.get("cosine", float("nan"))] for r in top],
                           hovertemplate="latent %{x}: %{y:.3f} (cos with persona %{customdata[0]:.2f})<extra></extra>"))
    fig.update_xaxes(title_text="latent", type="category")
    fig.update_yaxes(title_text="mean activation, finetuned minus base")
    return style(fig, title)


# Longer than any correct export on a loaded machine; past it the export is a hang.
EXPORT_S = 1800.0
_open: list[_Chromium] = []  # the browser of the innermost ``with browser()``


class _Chromium:
    """One kaleido browser on an event loop of its own thread. kaleido's own sync server is not
    used: when its browser fails to start (Chromium slow to come up on a loaded machine), its
    thread dies and every later export waits forever; here a failure to start or to render is
    raised in the caller, and a render that never ends is stopped after ``EXPORT_S``."""

    def __init__(self) -> None:
        import asyncio
        import threading

        import kaleido

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.kaleido = kaleido.Kaleido(timeout=None)  # kaleido's 90 s per render can fire on a busy machine
        try:
            self._run(self.kaleido.open())
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Any) -> Any:
        import asyncio
        import concurrent.futures

        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout=EXPORT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"Chromium did not answer in {EXPORT_S:.0f} s") from None

    def image(self, fig: go.Figure, fmt: str, scale: float) -> bytes:
        import plotly.io as pio

        d = fig.to_plotly_json()
        layout = d.get("layout", {})
        width = layout.get("width") or pio.defaults.default_width
        height = layout.get("height") or pio.defaults.default_height
        return self._run(self.kaleido.calc_fig(fig.to_dict(), opts=dict(format=fmt, width=width, height=height,
                                                                           scale=scale)))

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=60)

    def close(self) -> None:
        try:
            self._run(self.kaleido.close())
        finally:
            self._stop()


@contextlib.contextmanager
def browser() -> Iterator[None]:
    """One Chromium for the image exports inside the block (started on the first one)."""
    _open.append(None)  # type: ignore[arg-type]  # started lazily by export()
    try:
        yield
    finally:
        b = _open.pop()
        if b is not None:
            with contextlib.suppress(Exception):
                b.close()


def _image(fig: go.Figure, fmt: str, scale: float) -> bytes:
    """The image bytes, from the open ``browser()``'s Chromium or a Chromium of its own."""
    if _open:
        if _open[-1] is None:
            _open[-1] = _Chromium()
        return _open[-1].image(fig, fmt, scale)
    one = _Chromium()
    try:
        return one.image(fig, fmt, scale)
    finally:
        with contextlib.suppress(Exception):
            one.close()


def has_values(fig: go.Figure) -> bool:
    """Whether any trace of ``fig`` has a finite value to draw (its y, else x; a heatmap's z): a figure
    of nothing but nulls (an undefined AUROC at every layer, rates over no answers) has none."""
    for t in fig.data:
        z, y, x = (getattr(t, a, None) for a in ("z", "y", "x"))
        values = z if z is not None else x if getattr(t, "orientation", None) == "h" or y is None else y
        flat = np.asarray(values if values is not None else [], dtype=object).ravel()
        if any(isinstance(v, int | float | np.number) and np.isfinite(float(v)) for v in flat):
            return True
    return False


def export(fig: go.Figure, path: str | Path, formats: Iterable[str] = ("html", "png"), scale: float = 2.0) -> list[Path]:
    """Write ``path.<fmt>`` for each format; HTML works offline (plotly.js written beside it)."""
    import plotly.io as pio

    pio.defaults.mathjax = None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    formats = list(formats)
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown figure format {f!r}; expected {', '.join(FORMATS)}")
    images = [f for f in formats if f != "html"]
    if "html" in formats:
        target = path.with_suffix(".html")
        fig.write_html(target, include_plotlyjs="directory", full_html=True)
        out.append(target)
    if images:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in images:
                target = path.with_suffix("." + f)
                try:
                    data = _image(fig, f, scale if f == "png" else 1)
                except Exception as exc:  # kaleido without a browser, or a browser that never answers
                    raise ConfigError(
                        f"cannot export {f.upper()} ({type(exc).__name__}: {str(exc)[:160]}); figure export needs "
                        f"Chromium: `make chromium` (Debian's package) or `plotly_get_chrome`; the HTML is written, "
                        f"and `python -m emi.figures` re-exports the images") from None
                write_atomic(target, lambda tmp, data=data: tmp.write_bytes(data))
                out.append(target)
    return out
