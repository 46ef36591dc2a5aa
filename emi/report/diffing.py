"""Figures of emi.diff's results: pure builders over the JSON files it writes (``adl.json``,
``cosines.json``, ``kl.json``, ``crosscoder.json``), drawn by ``python -m emi.figures RUN``.

- :func:`logit_lens_bars`: each delta_j's top logit-lens tokens through the base's and the
  finetune's unembedding;
- :func:`cosine_heatmap`: the cosines of every direction found with the persona and model-diff ones;
- :func:`kl_bars` and :func:`kl_projection`: the tokens where the finetune departs most from the
  base, and KL against the persona-projection shift at every token;
- :func:`decoder_ratio_histogram` and :func:`latent_scaling`: the crosscoder's decoder-norm ratios
  and each latent's latent-scaling nu (error target against activation target).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emi.core.errors import ConfigError
from emi.diffing.records import AdlFile, CosineRow, CrosscoderFile, KlFile, KlToken
from emi.report import figures
from emi.report.figures import COLORS, style


def logit_lens_bars(adl: AdlFile | object, k: int = 8) -> go.Figure:
    """``adl.json`` (its record or its parsed JSON): per delta_j (a row) the top-``k`` logit-lens
    tokens through each model (columns)."""
    a = AdlFile.of(adl)
    rows = a.positions
    if not rows:
        raise ConfigError("adl.json holds no delta_j (every position was skipped); nothing to draw")
    roles = ("base", "finetuned")
    titles = [f"delta_{r.position} (|d| {r.norm:.2f}): {role}'s logit lens" for r in rows for role in roles]
    fig = make_subplots(rows=len(rows), cols=2, subplot_titles=titles, horizontal_spacing=0.18,
                        vertical_spacing=min(0.3 / max(len(rows) - 1, 1), 0.12))
    for i, r in enumerate(rows, start=1):
        for j, role in enumerate(roles, start=1):
            tv = list(r.logit_lens[role])[:k][::-1]
            fig.add_trace(go.Bar(x=[v for _, v in tv], y=[repr(t) for t, _ in tv], orientation="h", showlegend=False,
                                 marker_color=COLORS[role], hovertemplate="%{y}: %{x:.3f}<extra></extra>"),
                          row=i, col=j)
            fig.update_xaxes(title_text="probability" if i == len(rows) else None, row=i, col=j)
    cos = [r.cosines.get("persona") for r in rows]
    sub = ", ".join(f"d{r.position} {c:+.2f}" for r, c in zip(rows, cos, strict=True) if c is not None)
    style(fig, f"Activation difference lens at layer {a.layer}: delta_j read through each model's unembedding"
               + (f"<br><sup>cosine with the persona direction: {sub}</sup>" if sub else ""),
          980, 140 + 230 * len(rows))
    fig.update_layout(margin=dict(t=110))
    return fig


def cosine_heatmap(table: Sequence[CosineRow] | object) -> go.Figure:
    """``cosines.json`` (rows of the cosine matrix, or its parsed JSON) as a heatmap."""
    rows = CosineRow.table(table)
    names = [r.direction for r in rows]
    z = [[r.cosines.get(n) for n in names] for r in rows]
    side = max(520, 200 + 60 * len(names))
    return figures.cosine_heatmap(z, names, "Cosines of the directions found, at the diffing layer") \
        .update_layout(width=side + 80, height=side)


def kl_bars(rows: Sequence[KlToken], top: int = 20) -> go.Figure:
    """``kl.json``'s top tokens: KL(finetuned || base) per token, coloured by the persona projection."""
    rows = list(rows)[:top]
    labels = [f"{i + 1}. {r.source} {r.token!r}" for i, r in enumerate(rows)]
    proj = [r.projection or 0.0 for r in rows]
    lim = max([abs(p) for p in proj] + [1e-9])
    fig = go.Figure(go.Bar(x=[r.kl for r in rows], y=labels, orientation="h",
                           customdata=[[r.next_ft, r.next_base] for r in rows],
                           hovertemplate="%{y}: KL %{x:.3f}, next %{customdata[0]} / %{customdata[1]}<extra></extra>",
                           marker={"color": proj, "colorscale": "RdBu_r", "cmin": -lim, "cmax": lim,
                                   "colorbar": {"title": "persona<br>proj shift"}}))
    fig.update_xaxes(title_text="KL(finetuned || base) of the next token, nats")
    fig.update_yaxes(autorange="reversed")
    return style(fig, "Where the finetune's next-token distribution departs most from the base's", 980,
                 140 + 24 * len(rows))


def kl_top(kl: KlFile | object, top: int = 20) -> go.Figure:
    """``kl.json``'s ranking as :func:`kl_bars`."""
    return kl_bars(KlFile.of(kl).top, top)


def kl_projection(kl: KlFile | object) -> go.Figure:
    """``kl.json``: KL at every token against how far the finetune moved the residual along the
    persona direction there (does the direction explain where the models differ?)."""
    f = KlFile.of(kl)
    pts = [(x, p) for x, p in (f.points or [[r.kl, r.projection] for r in f.top]) if p is not None]
    if not pts:
        raise ConfigError("kl.json has no persona projections (the pair ships no persona direction); pass --persona "
                          "to python -m emi.diff")
    rho = f.spearman_kl_projection
    fig = go.Figure(go.Scattergl(x=[p[1] for p in pts], y=[p[0] for p in pts], mode="markers",
                                 marker=dict(size=5, opacity=0.5, color=COLORS["finetuned"]),
                                 hovertemplate="proj %{x:.2f}, KL %{y:.3f}<extra></extra>"))
    fig.update_xaxes(title_text=f"persona projection shift at layer {f.persona_layer} (finetuned - base)")
    fig.update_yaxes(title_text="KL(finetuned || base), nats")
    return style(fig, f"KL per token against the persona projection ({len(pts)} tokens"
                      + (f", Spearman {rho:+.3f})" if rho is not None else ")"))


def decoder_ratio_histogram(cc: CrosscoderFile | object) -> go.Figure:
    """``crosscoder.json``: the decoder-norm ratio ||d_ft|| / (||d_base|| + ||d_ft||) of every alive
    latent (0.5 shared, 1 finetune-only, 0 base-only)."""
    c = CrosscoderFile.of(cc)
    stats = [s for s in c.all if s.frequency > 0]
    if not stats:
        raise ConfigError("crosscoder.json has no latent that ever fired; train longer (--cc-steps)")
    fig = go.Figure(go.Histogram(x=[s.dec_norm_ratio for s in stats], xbins=dict(start=0, end=1.0001, size=0.025),
                                 marker_color=COLORS["persona"]))
    fig.add_vline(x=0.5, line=dict(color="#999", dash="dot"))
    fig.update_xaxes(title_text="decoder-norm ratio ||d_ft|| / (||d_base|| + ||d_ft||)", range=[0, 1])
    fig.update_yaxes(title_text="latents")
    dead = len(c.all) - len(stats)
    return style(fig, f"Crosscoder at layer {c.layer}: {len(stats)} latents fire on the data ({dead} never), "
                      f"{c.steps} steps")


def latent_scaling(cc: CrosscoderFile | object) -> go.Figure:
    """``crosscoder.json``: each alive latent's nu (beta_base / beta_ft) for the error target against
    the activation target, coloured by decoder-norm ratio; the top finetune-specific ones named."""
    c = CrosscoderFile.of(cc)
    stats = [s for s in c.all if s.frequency > 0 and s.nu_error is not None and s.nu_activation is not None]
    if not stats:
        raise ConfigError("crosscoder.json has no latent with a latent-scaling fit; train longer (--cc-steps)")
    top = {s.latent for s in c.top}
    fig = go.Figure(go.Scattergl(
        x=[s.nu_error for s in stats], y=[s.nu_activation for s in stats], mode="markers",
        customdata=[[s.latent, s.dec_norm_ratio] for s in stats],
        hovertemplate="latent %{customdata[0]}: ratio %{customdata[1]:.2f}, nu_err %{x:.2f}, nu_act %{y:.2f}<extra></extra>",
        marker=dict(size=6, opacity=0.7, color=[s.dec_norm_ratio for s in stats], colorscale="Viridis", cmin=0,
                    cmax=1, colorbar=dict(title="ratio"))))
    named = [s for s in stats if s.latent in top]
    fig.add_trace(go.Scatter(x=[s.nu_error for s in named], y=[s.nu_activation for s in named],
                             mode="markers+text", text=[str(s.latent) for s in named], textposition="top center",
                             marker=dict(size=11, symbol="circle-open", color=COLORS["finetuned"], line_width=2),
                             hoverinfo="skip"))
    fig.update_layout(showlegend=False)
    fig.update_xaxes(title_text="nu, error target (~0: the base lacks it)")
    fig.update_yaxes(title_text="nu, activation target")
    fig.update_layout(margin=dict(t=100))
    return style(fig, "Latent scaling: how much of each latent the base explains<br><sup>colour: decoder-norm "
                      "ratio; red rings: the top finetune-specific latents</sup>", 820, 560).update_layout(
        margin=dict(t=100))
